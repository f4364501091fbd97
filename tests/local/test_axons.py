"""Axons over the official SDK: registry, publish, history, live subscription, and bad input."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from runloop_api_client import APIStatusError, BadRequestError, NotFoundError, Runloop
from support.axons import poll_until

from mcp_server.local import sse
from mcp_server.local.server import RunningBackend, start_in_thread


def _headers(backend: RunningBackend) -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.api_key}"}


def _publish(sdk: Runloop, axon_id: str, i: int, **kw: object):
    return sdk.axons.publish(
        axon_id, event_type=f"type{i % 3}", origin="USER_EVENT", payload=json.dumps({"i": i}), source="test", **kw
    )


@pytest.fixture
def axon(sdk: Runloop):
    return sdk.axons.create(name=f"t-{uuid.uuid4().hex[:8]}")


# ---- registry ------------------------------------------------------------------------------


def test_create_get_update_list_delete(sdk: Runloop) -> None:
    prefix = f"reg-{uuid.uuid4().hex[:6]}"
    created = sdk.axons.create(name=f"{prefix}-a", metadata={"team": "x"})
    assert created.id.startswith("axn_") and created.metadata == {"team": "x"} and created.deleted_at_ms is None
    assert sdk.axons.retrieve(created.id).name == f"{prefix}-a"

    assert sdk.axons.update(created.id, metadata={"team": "y"}).metadata == {"team": "y"}
    assert sdk.axons.update(created.id, metadata={}).metadata == {}

    others = [sdk.axons.create(name=f"{prefix}-{i}") for i in range(4)]
    # The SDK's paginator follows `starting_after` (an axon id) across pages of 2.
    listed = [a.id for a in sdk.axons.list(name=prefix, limit=2)]
    assert sorted(listed) == sorted([created.id] + [o.id for o in others])
    assert len(listed) == len(set(listed)) == 5
    assert [a.id for a in sdk.axons.list(id=others[0].id)] == [others[0].id]
    assert [a.id for a in sdk.axons.list(search=f"{prefix}-2")] == [others[2].id]

    sdk.axons.delete(created.id)
    deleted = sdk.axons.retrieve(created.id)
    assert deleted.deleted_at_ms is not None
    assert created.id in [a.id for a in sdk.axons.list(name=prefix)]
    with pytest.raises(NotFoundError, match="deleted"):
        _publish(sdk, created.id, 1)
    with pytest.raises(NotFoundError):
        sdk.axons.events.list(created.id)


def test_metadata_filter(backend: RunningBackend, sdk: Runloop) -> None:
    tag = uuid.uuid4().hex
    a = sdk.axons.create(metadata={"tag": tag, "kind": "a"})
    b = sdk.axons.create(metadata={"tag": tag, "kind": "b"})
    r = httpx.get(f"{backend.base_url}/v1/axons", params={"metadata[tag]": tag}, headers=_headers(backend))
    assert {x["id"] for x in r.json()["axons"]} == {a.id, b.id}
    r = httpx.get(
        f"{backend.base_url}/v1/axons", params={"metadata[tag]": tag, "metadata[kind]": "b"}, headers=_headers(backend)
    )
    assert [x["id"] for x in r.json()["axons"]] == [b.id]


# ---- publish and history -------------------------------------------------------------------


def test_publish_then_list_events_newest_first(sdk: Runloop, axon) -> None:
    results = [_publish(sdk, axon.id, i) for i in range(7)]
    assert [r.sequence for r in results] == list(range(1, 8))
    assert all(a.timestamp_ms <= b.timestamp_ms for a, b in zip(results, results[1:], strict=False))

    page = sdk.axons.events.list(axon.id, limit=3)
    assert [e.sequence for e in page.events] == [7, 6, 5] and page.has_more and page.total_count == 7
    assert json.loads(page.events[0].payload) == {"i": 6} and page.events[0].axon_id == axon.id
    assert page.events[0].origin == "USER_EVENT" and page.events[0].source == "test"
    seen = [e.sequence for e in page.events]
    while page.has_more:  # the SDK hands `starting_after` back as the last sequence, a string
        page = sdk.axons.events.list(axon.id, limit=3, starting_after=str(page.events[-1].sequence))
        seen += [e.sequence for e in page.events]
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert sdk.axons.events.list(axon.id, limit=1).total_count == 7


def test_publish_retried_with_same_request_id_is_stored_once(backend: RunningBackend, sdk: Runloop, axon) -> None:
    first = _publish(sdk, axon.id, 1, idempotency_key="same-key")
    again = _publish(sdk, axon.id, 1, idempotency_key="same-key")
    assert (again.sequence, again.timestamp_ms) == (first.sequence, first.timestamp_ms)

    # Concurrent duplicates (a retry racing the original) also collapse into one event.
    body = {"event_type": "t", "origin": "AGENT_EVENT", "payload": "{}", "source": "s"}
    url = f"{backend.base_url}/v1/axons/{axon.id}/publish"
    results: list[int] = []

    def send() -> None:
        r = httpx.post(url, json=body, headers={**_headers(backend), "x-request-id": "racing"})
        results.append(r.json()["sequence"])

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert sdk.axons.events.list(axon.id).total_count == 2


class _LoseFirstResponse:
    """A TCP proxy that forwards the first request but drops its response, then proxies normally."""

    def __init__(self, target: str) -> None:
        url = httpx.URL(target)
        self._target = (url.host, url.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self._target)
        if not self.dropped.is_set():
            request = b""
            while b"\r\n\r\n" not in request:
                request += client.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length")
            while len(body) < length:
                body += client.recv(65536)
            upstream.sendall(head + b"\r\n\r\n" + body)
            upstream.recv(65536)  # the backend answered (so it acted); the client never hears it
            self.dropped.set()
            client.close()
            upstream.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def test_sdk_retry_after_lost_response_stores_once(backend: RunningBackend, sdk: Runloop, axon) -> None:
    proxy = _LoseFirstResponse(backend.base_url)
    try:
        client = Runloop(bearer_token=backend.api_key, base_url=proxy.url, max_retries=3)
        result = _publish(client, axon.id, 42)
        client.close()
    finally:
        proxy.close()
    assert proxy.dropped.is_set()
    events = sdk.axons.events.list(axon.id).events
    assert [(e.sequence, json.loads(e.payload)) for e in events] == [(result.sequence, {"i": 42})]


def test_concurrent_publishers_get_a_gapless_sequence(backend: RunningBackend, sdk: Runloop, axon) -> None:
    per_client, clients = 40, 8
    acked: list[tuple[int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def publisher(c: int) -> None:
        with httpx.Client(base_url=backend.base_url, headers=_headers(backend)) as http:
            for i in range(per_client):
                payload = json.dumps({"c": c, "i": i})
                r = http.post(
                    f"/v1/axons/{axon.id}/publish",
                    json={"event_type": "t", "origin": "EXTERNAL_EVENT", "payload": payload, "source": f"c{c}"},
                )
                with lock:
                    if r.status_code != 200:
                        failures.append(r.text)
                        return
                    acked.append((r.json()["sequence"], payload))

    threads = [threading.Thread(target=publisher, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = per_client * clients
    assert failures == []
    assert sorted(seq for seq, _ in acked) == list(range(1, total + 1))
    stored = sdk.axons.sql.query(axon.id, sql="SELECT sequence, payload FROM rl_axon_events ORDER BY sequence")
    assert [tuple(row) for row in stored.rows] == sorted(acked)


# ---- subscribe -----------------------------------------------------------------------------


def test_subscribe_replays_from_start_then_streams_live(sdk: Runloop, axon) -> None:
    for i in range(3):
        _publish(sdk, axon.id, i)
    stream = sdk.axons.subscribe_sse(axon.id)
    events = iter(stream)
    assert [next(events).sequence for _ in range(3)] == [1, 2, 3]
    _publish(sdk, axon.id, 3)
    _publish(sdk, axon.id, 4)
    live = [next(events), next(events)]
    stream.close()
    assert [e.sequence for e in live] == [4, 5] and json.loads(live[1].payload) == {"i": 4}


def test_subscribe_after_sequence(sdk: Runloop, axon) -> None:
    for i in range(5):
        _publish(sdk, axon.id, i)
    stream = sdk.axons.subscribe_sse(axon.id, after_sequence=3)
    events = iter(stream)
    assert [next(events).sequence, next(events).sequence] == [4, 5]
    stream.close()


def test_subscriber_reconnecting_mid_stream_misses_and_repeats_nothing(sdk: Runloop, axon) -> None:
    total = 300
    publisher = threading.Thread(target=lambda: [_publish(sdk, axon.id, i) for i in range(total)])
    publisher.start()
    received: list[int] = []
    last = 0
    while last < total:
        stream = sdk.axons.subscribe_sse(axon.id, after_sequence=last)
        for n, event in enumerate(stream):
            received.append(event.sequence)
            last = event.sequence
            if n == 37 or last == total:  # drop the connection mid-stream, then resume
                break
        stream.close()
    publisher.join()
    assert received == list(range(1, total + 1))


def test_slow_subscriber_does_not_hold_back_publishers_or_others(backend: RunningBackend, sdk: Runloop, axon) -> None:
    # A subscriber that never reads: its socket buffers fill up and stay full.
    stalled = socket.create_connection((httpx.URL(backend.base_url).host, httpx.URL(backend.base_url).port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        f"GET /v1/axons/{axon.id}/subscribe/sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {backend.api_key}\r\n\r\n".encode()
    )
    try:
        reader = sdk.axons.subscribe_sse(axon.id)
        events = iter(reader)
        payload = "x" * 8192
        total = 600  # ~5 MB: far more than the stalled subscriber's socket buffers hold
        with httpx.Client(base_url=backend.base_url, headers=_headers(backend)) as http:
            for _ in range(total):
                r = http.post(
                    f"/v1/axons/{axon.id}/publish",
                    json={"event_type": "big", "origin": "USER_EVENT", "payload": payload, "source": "s"},
                )
                assert r.status_code == 200
        assert [next(events).sequence for _ in range(total)] == list(range(1, total + 1))
        reader.close()
    finally:
        stalled.close()


def test_keepalives_while_idle(backend: RunningBackend, axon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    url = f"{backend.base_url}/v1/axons/{axon.id}/subscribe/sse"
    with httpx.stream("GET", url, headers=_headers(backend), timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        first = next(r.iter_lines())
    assert first.startswith(":")


@pytest.fixture
def idle_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningBackend]:
    monkeypatch.setenv("DEVBOX_AXON_SSE_IDLE_SECONDS", "0.3")
    running = start_in_thread(tmp_path)
    yield running
    running.stop()


def test_idle_subscription_ends_with_408_and_resumes(idle_backend: RunningBackend) -> None:
    client = Runloop(bearer_token=idle_backend.api_key, base_url=idle_backend.base_url, max_retries=0)
    axon = client.axons.create()
    _publish(client, axon.id, 0)
    stream = client.axons.subscribe_sse(axon.id)
    received = []
    with pytest.raises(APIStatusError) as caught:
        for event in stream:
            received.append(event.sequence)
    assert caught.value.status_code == 408 and "after_sequence=1" in str(caught.value)
    assert received == [1]
    _publish(client, axon.id, 1)
    again = iter(client.axons.subscribe_sse(axon.id, after_sequence=received[-1]))
    assert next(again).sequence == 2
    client.close()


def _writer_running(axon_id: str) -> bool:
    return any(t.name == f"axon-writer-{axon_id}" for t in threading.enumerate())


def test_idle_axons_are_closed_and_reopen_transparently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVBOX_AXON_IDLE_CLOSE_SECONDS", "0.2")
    running = start_in_thread(tmp_path)
    client = Runloop(bearer_token=running.api_key, base_url=running.base_url, max_retries=0)
    try:
        axon = client.axons.create()
        _publish(client, axon.id, 0)
        # A subscriber keeps the log open however long it idles.
        stream = client.axons.subscribe_sse(axon.id)
        events = iter(stream)
        assert next(events).sequence == 1
        threading.Event().wait(0.6)
        assert _writer_running(axon.id)
        stream.close()
        assert poll_until(lambda: not _writer_running(axon.id)), "the idle axon's writer thread was not closed"
        assert _publish(client, axon.id, 1).sequence == 2
        assert _writer_running(axon.id)
        assert [e.sequence for e in client.axons.events.list(axon.id).events] == [2, 1]
    finally:
        client.close()
        running.stop()


def test_subscribers_are_told_when_the_axon_is_deleted(sdk: Runloop, axon) -> None:
    _publish(sdk, axon.id, 0)
    stream = sdk.axons.subscribe_sse(axon.id)
    events = iter(stream)
    assert next(events).sequence == 1
    sdk.axons.delete(axon.id)
    with pytest.raises(NotFoundError, match="deleted"):
        next(events)


# ---- bad input -----------------------------------------------------------------------------


def test_system_event_is_refused(sdk: Runloop, axon) -> None:
    with pytest.raises(BadRequestError, match="SYSTEM_EVENT") as caught:
        sdk.axons.publish(axon.id, event_type="t", origin="SYSTEM_EVENT", payload="{}", source="s")  # type: ignore[arg-type]
    assert "USER_EVENT" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"event_type": "t", "origin": "USER_EVENT", "payload": {"a": 1}, "source": "s"}, 400, "JSON-encode"),
        ({"event_type": "t", "origin": "USER_EVENT", "payload": 5, "source": "s"}, 400, "JSON-encode"),
        ({"event_type": "t", "origin": "MARTIAN", "payload": "{}", "source": "s"}, 400, "EXTERNAL_EVENT"),
        ({"event_type": 3, "origin": "USER_EVENT", "payload": "{}", "source": "s"}, 400, "event_type must be a string"),
        ({"origin": "USER_EVENT", "payload": "{}", "source": "s"}, 400, "event_type"),
        ({"event_type": "t", "origin": "USER_EVENT", "payload": "x" * (1024 * 1024 + 1), "source": "s"}, 413, "limit"),
    ],
)
def test_bad_publish_bodies(backend: RunningBackend, axon, body: dict, status: int, fragment: str) -> None:
    r = httpx.post(f"{backend.base_url}/v1/axons/{axon.id}/publish", json=body, headers=_headers(backend))
    assert r.status_code == status and fragment in r.json()["message"]


def test_lone_surrogate_payload_is_400_and_harms_no_one(backend: RunningBackend, sdk: Runloop, axon) -> None:
    raw = b'{"event_type": "t", "origin": "USER_EVENT", "payload": "\\ud800", "source": "s"}'
    r = httpx.post(
        f"{backend.base_url}/v1/axons/{axon.id}/publish",
        content=raw,
        headers={**_headers(backend), "content-type": "application/json"},
    )
    assert r.status_code == 400 and "surrogate" in r.json()["message"]
    assert _publish(sdk, axon.id, 1).sequence == 1
    r = httpx.post(
        f"{backend.base_url}/v1/axons",
        content=b'{"name": "ok", "metadata": {"k": "\\udc00"}}',
        headers={**_headers(backend), "content-type": "application/json"},
    )
    assert r.status_code == 400 and "surrogate" in r.json()["message"]
    r = httpx.post(
        f"{backend.base_url}/v1/axons",
        content=b'{"name": "\\udc00"}',
        headers={**_headers(backend), "content-type": "application/json"},
    )
    assert r.status_code == 400 and "surrogate" in r.json()["message"]


def test_malformed_json_is_400(backend: RunningBackend, axon) -> None:
    for path in ("publish", "sql/query", "sql/batch"):
        r = httpx.post(
            f"{backend.base_url}/v1/axons/{axon.id}/{path}",
            content=b'{"event_type": ',
            headers={**_headers(backend), "content-type": "application/json"},
        )
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"]


def test_unknown_axon_is_404_everywhere(backend: RunningBackend, sdk: Runloop) -> None:
    missing = "axn_doesnotexist"
    with pytest.raises(NotFoundError, match="not found"):
        sdk.axons.retrieve(missing)
    with pytest.raises(NotFoundError):
        _publish(sdk, missing, 0)
    with pytest.raises(NotFoundError):
        sdk.axons.events.list(missing)
    with pytest.raises(NotFoundError):
        sdk.axons.sql.query(missing, sql="select 1")
    with pytest.raises(NotFoundError):
        sdk.axons.update(missing, metadata={})
    with pytest.raises(NotFoundError):
        sdk.axons.delete(missing)
    r = httpx.get(f"{backend.base_url}/v1/axons/{missing}/subscribe/sse", headers=_headers(backend))
    assert r.status_code == 404


def test_bad_event_paging_parameters(backend: RunningBackend, axon) -> None:
    url = f"{backend.base_url}/v1/axons/{axon.id}/events"
    r = httpx.get(url, params={"starting_after": "evt_x"}, headers=_headers(backend))
    assert r.status_code == 400 and "sequence" in r.json()["message"]
    r = httpx.get(url, params={"limit": 0}, headers=_headers(backend))
    assert r.status_code == 400
