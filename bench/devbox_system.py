"""Benchmarks of a devbox's own system (root backend), printed as medians and ratios of one run.

    sudo .venv/bin/python -m bench.devbox_system [--runs 3] [--rebuild-image]

- the devbox image: its one-time build (the time recorded when it was built, or a fresh build
  into a temporary directory with --rebuild-image: minutes);
- `sudo apt-get install -y jq` in a fresh devbox (over the execute API) against the same install
  by the host's apt-get. The host's run happens in a private mount namespace whose /usr, /etc and
  /var are overlays, so the host is not changed; both download the packages (empty caches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.local.idmap import host_range  # noqa: E402
from mcp_server.local.image import IMAGE_DIR_ENV, ImageStore, default_images_dir  # noqa: E402
from mcp_server.local.server import start_in_thread  # noqa: E402

PACKAGES = ("jq", "libjq1", "libonig5")

# The host's apt-get with everything it writes on throwaway overlays ($1: a scratch directory).
_HOST_APT = r"""
set -e
for d in usr etc var; do
  mkdir -p "$1/$d/upper" "$1/$d/work"
  mount -t overlay bench -o "lowerdir=/$d,upperdir=$1/$d/upper,workdir=$1/$d/work" "/$d"
done
mkdir -p "$1/archives/partial"
shift
start=$(date +%s%N)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dir::Cache::archives="$ARCHIVES" "$@" >/dev/null
echo $(( $(date +%s%N) - start ))
"""


def host_apt_seconds(scratch: Path) -> float:
    """One `apt-get install` of jq by the host's apt (a reinstall when the host has it), host unchanged."""
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", "jq"], capture_output=True, text=True)
    reinstall = ["--reinstall", *PACKAGES] if "install ok installed" in installed.stdout else ["jq"]
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", _HOST_APT, "host-apt", str(scratch), *reinstall],
        capture_output=True, text=True, env={**os.environ, "ARCHIVES": str(scratch / "archives")}, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"the host's apt-get failed: {result.stderr.strip()[-500:]}")
    return int(result.stdout.split()[-1]) / 1e9


def devbox_apt_seconds(client: httpx.Client) -> float:
    devbox = client.post("/v1/devboxes/create_and_await_running", json={}).json()["id"]
    try:
        started = time.perf_counter()
        view = client.post(
            f"/v1/devboxes/{devbox}/execute_sync",
            json={"command": "sudo apt-get install -y -qq jq >/dev/null"},
            timeout=600,
        ).json()
        elapsed = time.perf_counter() - started
        if view.get("exit_status") != 0:
            raise SystemExit(f"apt-get install in the devbox failed: {view.get('stderr', '')[-500:]}")
        return elapsed
    finally:
        client.post(f"/v1/devboxes/{devbox}/shutdown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rebuild-image", action="store_true", help="time a fresh image build (minutes)")
    args = parser.parse_args(argv)
    ids = host_range(default_images_dir())
    if ids is None:
        print("devbox system benchmarks need root (devboxes have a system of their own on a root backend)")
        return 0
    image = ImageStore(default_images_dir(), ids).current()
    if image is None:
        raise SystemExit("no devbox image yet: run `devbox-mcp image --build` (or `make install`) first")
    print("devbox system benchmarks (medians)")
    if args.rebuild_image:
        with tempfile.TemporaryDirectory(prefix="devbox-bench-image-", dir="/var/tmp") as tmp:
            os.environ[IMAGE_DIR_ENV] = tmp
            started = time.perf_counter()
            ImageStore(Path(tmp), ids).build(lambda line: None)
            print(f"  image build (mmdebstrap, fresh)              {time.perf_counter() - started:8.1f} s")
            del os.environ[IMAGE_DIR_ENV]
    else:
        print(f"  image build (once per machine, when built)   {image.info.get('build_seconds')!s:>8} s  (--rebuild-image to time one now)")
    with tempfile.TemporaryDirectory(prefix="devbox-bench-") as tmp:
        root = Path(tmp)
        backend = start_in_thread(root / "backend")
        try:
            with httpx.Client(
                base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"}, timeout=60
            ) as client:
                host = [host_apt_seconds(root / f"host{i}") for i in range(args.runs)]
                inside = [devbox_apt_seconds(client) for _ in range(args.runs)]
        finally:
            backend.stop()
    base, med = statistics.median(host), statistics.median(inside)
    print(f"  `apt-get install -y jq` by the host's apt     {base:8.2f} s  (baseline, {args.runs} runs)")
    print(f"  `sudo apt-get install -y jq` in a new devbox  {med:8.2f} s  ({med / base:4.1f}x the host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
