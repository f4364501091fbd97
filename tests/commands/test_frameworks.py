"""What reaches the model through the agent frameworks people wire us into: pydantic-ai (2 and 1.x),
openai-agents (default and `use_structured_content=True`), langchain-mcp-adapters with ChatOpenAI
(a persistent session and the quick-start `get_tools()` wiring) and the TypeScript SDK client.

Each framework runs in its own pinned environment (.ci/framework-clients) and starts `devbox-mcp`
as a stdio subprocess with a fresh data directory and no Runloop key; a scripted model plays the
same plan of tool calls (tests/frameworks/plan.json) and the runner records each result exactly as
the framework hands it to the model. These tests read those records: no network, no real model.
"""

from __future__ import annotations

import re

import pytest
from frameworks.harness import FRAMEWORKS, Framework, Record, run

_records: dict[str, Record] = {}


def record_of(framework: Framework, tmp_path_factory: pytest.TempPathFactory) -> Record:
    """One run per framework, shared by the tests below."""
    if not framework.installed:
        pytest.skip(f"{framework.id} is not installed: run .ci/framework-clients (make install does)")
    if framework.id not in _records:
        _records[framework.id] = run(framework, tmp_path_factory.mktemp(framework.id))
    return _records[framework.id]


@pytest.fixture(params=FRAMEWORKS, ids=lambda f: f.id)
def seen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Record:
    return record_of(request.param, tmp_path_factory)


@pytest.fixture(params=[f for f in FRAMEWORKS if f.slow], ids=lambda f: f.id)
def seen_slow(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Record:
    """The frameworks whose client times out before a `sleep 7` ends (their runs include it)."""
    return record_of(request.param, tmp_path_factory)


def result_of(seen: Record, label: str) -> str:
    call = seen.call(label)
    assert call["seen"] is not None, f"{label}: the model never got its result: {seen.problem()}"
    assert not call["error"], f"{label} reached the model as an error: {call['seen'][:500]}"
    return call["seen"]


def test_the_model_sees_stdout_stderr_and_exit_status(seen: Record) -> None:
    text = result_of(seen, "execute")
    for line in ("out-line1", "out-line2", "out-line3", "err-marker-7"):
        assert line in text, f"{line!r} did not reach the model: {text[:800]}"
    # "exit 3" in the text, or exit_status 3 in JSON (possibly escaped inside a JSON string).
    assert re.search(r'exit(_status)?["\\]*\s*[:=]?\s*3\b', text), text[:800]


def test_the_model_sees_the_tail_of_a_big_output(seen: Record) -> None:
    text = result_of(seen, "execute_big")
    assert "199999" in text and "200000" in text, text[-800:]


def test_the_model_sees_file_text(seen: Record) -> None:
    assert "file-text-marker-42" in result_of(seen, "read_file")


def test_the_model_sees_sql_rows(seen: Record) -> None:
    text = result_of(seen, "sql_query")
    assert "sql-row-marker-9" in text and "fw.test" in text, text[:800]


def test_the_run_plays_the_whole_plan(seen: Record) -> None:
    """No crash in the framework (e.g. a request builder refusing a content block) and no step the
    model could not take for want of an id or offset it was never shown."""
    assert seen.error is None and seen.stopped is None, seen.problem()


def test_a_command_longer_than_the_client_timeout_hands_off(seen_slow: Record) -> None:
    """openai-agents gives up on a call after 5 s (client_session_timeout_seconds): `sleep 7` must
    come back as a hand-off (still running, continue with stream_logs), and stream_logs must
    then bring the output, each call inside the client's timeout."""
    seen = seen_slow
    text = result_of(seen, "execute_slow")
    assert "running" in text and "slow-done-marker" not in text, text[:800]
    follow_ups = [c for c in seen.calls if c["label"] == "stream_logs"]
    assert follow_ups and not any(c["error"] for c in follow_ups), seen.problem()
    assert "slow-done-marker" in follow_ups[-1]["seen"], follow_ups[-1]["seen"][:800]

