"""Claude Code and Codex, the CLIs users run, drive devbox-mcp: what reaches their model.

Each CLI (pinned, installed by `make install`) runs headless in a loopback-only network namespace
against a scripted model (tests/clients/fake_model.py) that plays a fixed plan of tool calls:
create a devbox, run `echo line1..3; echo err1 >&2; exit 3`, run `seq 1 200000`, write and read
a file, create an axon, publish, query it with SQL, shut the devbox down. The CLI starts our
server from the entry `devbox-mcp install` wrote. We read, from the model requests the CLI made,
what it handed the model after each call: output, exit status and file text must be there.
"""

from __future__ import annotations

import pytest
from clients.fake_model import DONE_TEXT, PLAN
from clients.harness import (
    EXPECTATIONS,
    Expectation,
    Run,
    failed_calls,
    final_text,
    netns_unavailable,
    run_claude_code,
    run_codex,
)

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))

RUNNERS = {"claude-code": run_claude_code, "codex": run_codex}


@pytest.fixture(scope="module", params=list(RUNNERS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One CLI run over the whole plan, shared by the checks below."""
    return RUNNERS[request.param](tmp_path_factory.mktemp(request.param))


def test_cli_runs_every_call_of_the_plan(run: Run) -> None:
    assert run.returncode == 0, f"{run.cli} exited {run.returncode}:\n{run.stderr[-3000:]}"
    assert failed_calls(run) == {}, f"{run.cli}: calls that failed (step: what the model was told)"
    assert sorted(run.results) == list(range(len(PLAN)))
    assert final_text(run) == DONE_TEXT


@pytest.mark.parametrize("expectation", EXPECTATIONS, ids=[e.name for e in EXPECTATIONS])
def test_model_receives(run: Run, expectation: Expectation) -> None:
    missing = expectation.missing(run)
    assert not missing, (
        f"{expectation.name} did not reach the model (no match for {missing}).\n"
        + run.explain(expectation.step)
    )
