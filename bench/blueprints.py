"""Blueprint builds against the same work done in a devbox, printed as medians and ratios of one run.

    sudo .venv/bin/python -m bench.blueprints [--runs 3]

- baseline: `sudo apt-get install -y jq` in a new devbox over the execute API (the command only),
  and the whole path an agent takes without a blueprint (create a devbox, then install);
- a blueprint build of `FROM devbox-mcp` + `RUN apt-get install -y jq` (create to build_complete:
  a build devbox, the step, the capture);
- what the build buys: a devbox created from that blueprint (create to running, jq already there).

Package installs use the machine's configured apt mirrors, as devboxes do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.local.idmap import host_range  # noqa: E402
from mcp_server.local.image import default_images_dir  # noqa: E402
from mcp_server.local.server import start_in_thread  # noqa: E402

DOCKERFILE = "FROM devbox-mcp\nRUN apt-get install -y -qq jq >/dev/null\n"


def in_devbox(client: httpx.Client) -> tuple[float, float]:
    """(the install command alone, create + install) in a new devbox."""
    started = time.perf_counter()
    devbox = client.post("/v1/devboxes/create_and_await_running", json={}).json()["id"]
    try:
        command_started = time.perf_counter()
        view = client.post(
            f"/v1/devboxes/{devbox}/execute_sync", json={"command": "sudo apt-get install -y -qq jq >/dev/null"}, timeout=600
        ).json()
        done = time.perf_counter()
        if view.get("exit_status") != 0:
            raise SystemExit(f"apt-get install in the devbox failed: {view.get('stderr', '')[-500:]}")
        return done - command_started, done - started
    finally:
        client.post(f"/v1/devboxes/{devbox}/shutdown")


def build(client: httpx.Client, name: str) -> tuple[str, float]:
    started = time.perf_counter()
    blueprint = client.post("/v1/blueprints", json={"name": name, "dockerfile": DOCKERFILE}).json()["id"]
    while (view := client.get(f"/v1/blueprints/{blueprint}").json())["status"] not in ("build_complete", "failed"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if view["status"] != "build_complete":
        logs = client.get(f"/v1/blueprints/{blueprint}/logs").json()["logs"]
        raise SystemExit("the build failed: " + " | ".join(line["message"] for line in logs[-5:]))
    return blueprint, elapsed


def from_blueprint(client: httpx.Client, blueprint: str) -> float:
    started = time.perf_counter()
    devbox = client.post("/v1/devboxes/create_and_await_running", json={"blueprint_id": blueprint}).json()
    elapsed = time.perf_counter() - started
    try:
        if devbox.get("status") != "running":
            raise SystemExit(f"a devbox from the blueprint did not start: {devbox}")
        jq = client.post(f"/v1/devboxes/{devbox['id']}/execute_sync", json={"command": "jq --version"}).json()
        if jq.get("exit_status") != 0:
            raise SystemExit("jq is not in the devbox from the blueprint")
        return elapsed
    finally:
        client.post(f"/v1/devboxes/{devbox['id']}/shutdown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if host_range(default_images_dir()) is None:
        print("blueprint benchmarks need root (blueprints are captures of a devbox's own system)")
        return 0
    with tempfile.TemporaryDirectory(prefix="devbox-bench-blueprints-") as tmp:
        backend = start_in_thread(Path(tmp) / "backend")
        try:
            with httpx.Client(
                base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"}, timeout=60
            ) as client:
                command, whole, builds, starts = [], [], [], []
                for run in range(args.runs):
                    alone, total = in_devbox(client)
                    command.append(alone)
                    whole.append(total)
                    blueprint, seconds = build(client, f"bench-jq-{run}")
                    builds.append(seconds)
                    starts.append(from_blueprint(client, blueprint))
        finally:
            backend.stop()
    base = statistics.median(command)
    print(f"blueprint benchmarks (medians of {args.runs} runs)")
    print(f"  `sudo apt-get install -y jq` in a devbox          {base:7.2f} s  (baseline)")
    print(f"  create a devbox, then that install                {statistics.median(whole):7.2f} s  "
          f"({statistics.median(whole) / base:4.2f}x)")  # fmt: skip
    print(f"  blueprint build of `RUN apt-get install -y jq`    {statistics.median(builds):7.2f} s  "
          f"({statistics.median(builds) / base:4.2f}x)")  # fmt: skip
    print(f"  create a devbox from that blueprint (jq ready)    {statistics.median(starts):7.2f} s  "
          f"({statistics.median(starts) / base:4.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
