"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, as a person's browser.

The protocol runs over `--remote-debugging-pipe` (commands on the browser's fd 3, answers on fd
4, each message JSON ended by a NUL), so no debugging port is opened and nothing but the
standard library is needed. The browser gets a fresh profile, and a proxy that does not exist
for every host but loopback and `*.localhost`: whatever it might try to reach beyond this
machine fails here instead of leaving it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check", "--no-pings",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=localhost;*.localhost;127.0.0.1",
    "--window-size=900,600",
]  # fmt: skip


def chromium_path() -> str | None:
    return shutil.which("chromium")


class Browser:
    """One headless Chromium with one page; `close` ends it."""

    def __init__(self, profile: Path) -> None:
        exe = chromium_path()
        assert exe is not None, "chromium is not installed (.ci/ensure-system-packages installs it)"
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Above 4, so that making fds 3 and 4 cannot overwrite one of them.
        for fd in (to_browser_r, from_browser_w):
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            to_browser_r, from_browser_w = (high, from_browser_w) if fd == to_browser_r else (to_browser_r, high)
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", exe, *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[str] = []  # the names of the events received so far
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict[str, Any] | None = None, *, page: bool = False, seconds: float = 60) -> Any:
        """Send a command (to the page's session when `page`) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + seconds
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            if "method" in reply:
                self.events.append(reply["method"])

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, remaining))
            assert ready, f"chromium: no {waiting_for} in time"
            chunk = os.read(self._from_browser, 1 << 20)
            assert chunk, "chromium exited"
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def open(self, url: str, seconds: float = 60) -> None:
        """Navigate the page to `url` and return once it has loaded (its load event)."""
        self.call("Page.enable", page=True)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, page=True)
        deadline = time.monotonic() + seconds
        while "Page.loadEventFired" not in self.events:
            event = self._receive(deadline, "Page.loadEventFired")
            if "method" in event:
                self.events.append(event["method"])

    def evaluate(self, expression: str, seconds: float = 60) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
            page=True, seconds=seconds,
        )  # fmt: skip
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, page=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close", seconds=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
