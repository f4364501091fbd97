"""What each agent CLI hands its model, as figures: `sudo .venv/bin/python tests/clients/report.py [shapes]`.

Without arguments: runs Claude Code and Codex over the devbox plan (as tests/commands/test_agent_clis.py
does) and prints, per tool call, the bytes of the result the CLI put into the next model request
and which expected items reached the model. With `shapes`: runs them against shapes_server.py and
prints, per result shape (text, structured content, resource link, error, embedded resource,
image), exactly what the model was handed, to see which parts each CLI keeps.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.fake_model import PLAN, SHAPES_PLAN, wire_bytes  # noqa: E402
from clients.harness import EXPECTATIONS, Run, netns_unavailable, run_claude_code, run_codex  # noqa: E402

RUNNERS = {"Claude Code": run_claude_code, "Codex": run_codex}
SHAPES_SERVER = [sys.executable, str(Path(__file__).with_name("shapes_server.py"))]


def devbox_report(name: str, run: Run) -> None:
    print(f"\n{name} (exit {run.returncode})")
    print(f"  {'step':<4} {'tool':<16} {'bytes':>6}")
    for step, planned in enumerate(PLAN):
        result = run.results.get(step)
        size = wire_bytes(result) if result is not None else "-"
        print(f"  {step:<4} {planned.tool:<16} {size:>6}")
    for expectation in EXPECTATIONS:
        print(
            f"  {expectation.name:<16} {'reached the model' if not expectation.missing(run) else 'MISSING'}"
        )


def shapes_report(name: str, run: Run) -> None:
    print(f"\n{name} (exit {run.returncode})")
    for step, planned in enumerate(SHAPES_PLAN):
        result = run.results.get(step)
        shown = result.get("content", result.get("output")) if isinstance(result, dict) else result
        text = json.dumps(shown, ensure_ascii=False)
        if len(text) > 400:
            text = text[:400] + f"... ({len(text)} chars)"
        error = " is_error" if isinstance(result, dict) and result.get("is_error") else ""
        print(f"  {planned.tool:<27}{error} -> {text}")


def main(argv: list[str]) -> int:
    reason = netns_unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    shapes = argv[:1] == ["shapes"]
    for name, runner in RUNNERS.items():
        with tempfile.TemporaryDirectory(prefix="agent-cli-report-") as tmp:
            if shapes:
                shapes_report(name, runner(Path(tmp), plan="shapes", server=SHAPES_SERVER))
            else:
                devbox_report(name, runner(Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
