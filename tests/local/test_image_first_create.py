"""A backend whose images directory is empty builds the devbox image at the first create.

The real build (mmdebstrap from the host's apt sources, about 100 s), once per test run, into a
directory of this test's (`DEVBOX_MCP_IMAGE_DIR`): the machine's shared image is never touched.
Marked `image_build` so a developer can leave it out (`-m 'not image_build'`); CI runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from runloop_api_client import Runloop
from runloop_api_client.lib.polling import PollingConfig
from support.backend_process import backend_process

from mcp_server.local.image import IMAGE_DIR_ENV, default_images_dir


@pytest.mark.image_build
@pytest.mark.timeout(1200)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mmdebstrap"), reason="the image is built by a root backend with mmdebstrap")
def test_the_first_create_builds_the_image_and_says_so(tmp_path: Path) -> None:
    images = Path(tempfile.mkdtemp(prefix=f"image-build-{os.getpid()}-", dir="/var/tmp"))  # 900 MB, removed at the end
    try:
        with backend_process(tmp_path / "data", tmp_path / "backend.log", env={IMAGE_DIR_ENV: str(images)}) as backend:
            assert "is not built yet: the first devbox builds it" in backend.log
            sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
            devbox = sdk.devboxes.create()
            assert devbox.status == "provisioning"
            view = sdk.devboxes.await_running(
                devbox.id, polling_config=PollingConfig(interval_seconds=1, max_attempts=2000, timeout_seconds=1100)
            )
            assert view.status == "running"
            with backend.client() as http:
                logs = [e.get("message", "") for e in http.get(f"/v1/devboxes/{devbox.id}/logs").json()["logs"]]
            assert any("building the devbox image" in m for m in logs), logs
            built = [p for p in images.iterdir() if (p / "image.json").is_file()]
            assert len(built) == 1 and any(f"devbox image {built[0].name} ready" in m for m in logs), logs
            # The build's progress went to the backend's log as it happened (mmdebstrap's own lines).
            assert "devbox image: I: " in backend.log and f"devbox image {built[0].name} built in" in backend.log
            info = json.loads((built[0] / "image.json").read_text())
            assert info["files"] > 1000 and info["codename"]
            result = sdk.devboxes.execute_and_await_completion(devbox.id, command="sudo -n id -u; . /etc/os-release; echo $VERSION_CODENAME")
            assert result.exit_status == 0 and (result.stdout or "").split() == ["0", info["codename"]], result
            sdk.devboxes.shutdown(devbox.id)
        assert default_images_dir() != images  # the machine's own image directory was never involved
    finally:
        shutil.rmtree(images, ignore_errors=True)
