"""Durability: kill -9 the backend during a publishing burst; every acknowledged event survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from support.backend_process import free_port

API_KEY = "durability-test-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def _backend(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    proc = subprocess.Popen(
        [str(REPO / ".venv/bin/devbox-mcp"), "local-api", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "DEVBOX_LOCAL_API_KEY": API_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "backend exited during start-up"
            assert time.monotonic() < deadline, "backend did not start within 30 s"
            threading.Event().wait(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_kill_9_mid_burst_loses_no_acknowledged_event(tmp_path: Path) -> None:
    acked: dict[int, tuple[str, str]] = {}  # sequence -> (payload, request id)
    lock = threading.Lock()
    enough = threading.Event()
    failures: list[str] = []

    with _backend(tmp_path) as (proc, base):
        axon_id = httpx.post(f"{base}/v1/axons", json={"name": "durable"}, headers=HEADERS).json()["id"]

        def publisher(c: int) -> None:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=10) as http:
                for i in range(100_000):
                    payload = json.dumps({"c": c, "i": i})
                    request_id = str(uuid.uuid4())
                    try:
                        r = http.post(
                            f"/v1/axons/{axon_id}/publish",
                            json={"event_type": "burst", "origin": "EXTERNAL_EVENT", "payload": payload, "source": f"c{c}"},
                            headers={"x-request-id": request_id},
                        )
                    except httpx.TransportError:
                        return  # the backend is gone
                    with lock:
                        if r.status_code != 200:
                            failures.append(r.text)
                            return
                        acked[r.json()["sequence"]] = (payload, request_id)
                        if len(acked) >= 400:
                            enough.set()

        threads = [threading.Thread(target=publisher, args=(c,)) for c in range(6)]
        for t in threads:
            t.start()
        assert enough.wait(60), "the burst did not reach 400 acknowledged events"
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: publishers are still sending
        for t in threads:
            t.join(30)
        proc.wait()

    assert failures == []
    assert len(acked) >= 400
    with _backend(tmp_path) as (_, base), httpx.Client(base_url=base, headers=HEADERS) as http:
        assert http.get(f"/v1/axons/{axon_id}").json()["name"] == "durable"
        rows = http.post(
            f"/v1/axons/{axon_id}/sql/query",
            json={"sql": "SELECT sequence, payload FROM rl_axon_events ORDER BY sequence"},
        ).json()["rows"]
        stored = {seq: payload for seq, payload in rows}
        # No gap, no repeat: sequences are exactly 1..N ...
        assert sorted(stored) == list(range(1, len(rows) + 1))
        # ... and every acknowledged event is there, under the sequence it was acknowledged with.
        assert all(stored.get(seq) == payload for seq, (payload, _) in acked.items())

        # Retrying an acknowledged publish after the restart returns its original sequence.
        seq, (payload, request_id) = next(iter(acked.items()))
        retried = http.post(
            f"/v1/axons/{axon_id}/publish",
            json={"event_type": "burst", "origin": "EXTERNAL_EVENT", "payload": payload, "source": "retry"},
            headers={"x-request-id": request_id},
        ).json()
        assert retried["sequence"] == seq

        # New events continue the sequence.
        fresh = http.post(
            f"/v1/axons/{axon_id}/publish",
            json={"event_type": "after", "origin": "USER_EVENT", "payload": "{}", "source": "s"},
        ).json()
        assert fresh["sequence"] == len(rows) + 1
        assert http.get(f"/v1/axons/{axon_id}/events", params={"limit": 1}).json()["total_count"] == len(rows) + 1
