"""A person opens a devbox's web app in a browser: headless Chromium loads the tunnel URL, renders
the page, and the page's WebSocket echoes through the tunnel. The screenshot of the rendered page
is kept as the test's output (its path is printed; `test-output/` of the checkout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.chromium import Browser, chromium_path
from support.tunnels import start_app, tunnel_url

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"

# Resolves once the page's WebSocket has answered (or failed): what the page shows then.
RENDERED = """new Promise((resolve) => {
  const look = () => {
    const text = document.getElementById("ws").textContent;
    if (text.startsWith("websocket echo") || text === "websocket error") {
      resolve({title: document.title, heading: document.getElementById("title").textContent, ws: text,
               width: document.getElementById("title").getBoundingClientRect().width});
    } else { setTimeout(look, 20); }
  };
  look();
})"""


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (.ci/ensure-system-packages installs it)")
@pytest.mark.parametrize("form", ["host", "path"])
def test_chromium_renders_a_devbox_web_app_and_its_websocket_echoes(sdk, tmp_path: Path, form: str) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    browser = None
    try:
        start_app(sdk, view.id)
        tunnel = sdk.devboxes.enable_tunnel(view.id)
        url = tunnel_url(tunnel, 8000) + "/"
        if form == "path":
            origin = url.split("//", 1)[1].split("/", 1)[0].split(".", 1)[1]  # localhost:<proxy port>
            url = f"http://{origin}/tunnel/8000-{tunnel.tunnel_key}/"
        browser = Browser(tmp_path / "profile")
        browser.open(url)
        page = browser.evaluate(RENDERED)
        assert page["title"] == "devbox web app" and page["heading"] == "Hello from the devbox"
        assert page["width"] > 0  # laid out, not just parsed
        assert page["ws"] == "websocket echo: ping through the tunnel"
        shot = browser.screenshot(tmp_path / f"tunnel-browser-{form}.png")
        assert shot.read_bytes().startswith(b"\x89PNG")
        OUTPUT.mkdir(exist_ok=True)
        kept = shutil.copy(shot, OUTPUT / shot.name)
        print(f"screenshot of {url}: {kept}")
    finally:
        if browser is not None:
            browser.close()
        sdk.devboxes.shutdown(view.id)
