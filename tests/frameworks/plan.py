"""The scripted model every Python framework runner plays: a fixed plan of tool calls (plan.json)
whose arguments are filled in from what the model was shown, as a real model would have to.

Runs inside each framework's own venv, so it imports nothing but the standard library. A runner
asks `next_call(seen)` with the model-facing text of the previous tool result, and records each
result with `record`; `dump` writes what the model saw, call by call, as JSON for the test.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAN = json.loads((Path(__file__).with_name("plan.json")).read_text())


@dataclass
class Call:
    label: str
    tool: str
    args: dict[str, Any]
    seen: str | None = None  # the result as text, exactly as the framework handed it to its model
    wire: Any = None  # the same as it goes into the model API request (a string or content parts)
    error: bool = False  # the framework presented the result to the model as an error


@dataclass
class Plan:
    slow: bool = False
    calls: list[Call] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    index: int = -1
    repeats: int = 0
    stopped: str | None = None  # why the plan ended early (a value it needed was never shown)

    @property
    def steps(self) -> list[dict[str, Any]]:
        return PLAN["steps"] + (PLAN["slow_steps"] if self.slow else [])

    def record(self, wire: Any, *, error: bool = False) -> None:
        """The previous call's result as the model got it: keep it and capture ids from it."""
        call = self.calls[-1]
        seen = wire if isinstance(wire, str) else json.dumps(wire, ensure_ascii=False)
        call.seen, call.wire, call.error = seen, wire, error
        for name, pattern in self.steps[self.index].get("capture", {}).items():
            # Searched with JSON's escaped quotes undone: ids and offsets may sit in a JSON string.
            if match := re.search(pattern, seen.replace('\\"', '"')):
                value = match.group(match.lastindex or 0)
                self.values[name] = int(value) if value.isdigit() else value

    def next_call(self) -> Call | None:
        """The next tool call of the plan, or None when the plan is done."""
        step = self.steps[self.index] if self.index >= 0 else None
        if step and step.get("until") and self.repeats < step["repeat"] and not self._seen(step["until"]):
            self.repeats += 1
        else:
            self.index += 1
            self.repeats = 1
            while self.index < len(self.steps) and (until := self.steps[self.index].get("until")) and self._seen(until):
                self.index += 1
            if self.index >= len(self.steps):
                return None
            step = self.steps[self.index]
        missing = sorted(set(re.findall(r"\{(\w+)\}", json.dumps(step["args"]))) - set(self.values))
        if missing:
            # A real model could not go on either: the value was not in anything it was shown.
            self.stopped = f"{step['label']}: no {', '.join(missing)} in what the model saw"
            return None
        call = Call(step["label"], step["tool"], self._fill(step["args"]))
        self.calls.append(call)
        return call

    def _seen(self, text: str) -> bool:
        return any(text in (c.seen or "") for c in self.calls)

    def _fill(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, str) and (m := re.fullmatch(r"\{(\w+)\}", value)):
            return self.values.get(m.group(1), value)
        return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the devbox-mcp executable")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True, help="where to write what the model saw (JSON)")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--slow", action="store_true", help="also run a command longer than the client's timeout")
    return parser.parse_args()


def server_args(args: argparse.Namespace) -> list[str]:
    return ["serve", "--data-dir", args.data_dir]


def dump(args: argparse.Namespace, plan: Plan, client: dict[str, Any], error: BaseException | None = None) -> None:
    """Write the record; a runner that failed still writes what it saw, with the traceback."""
    Path(args.out).write_text(
        json.dumps(
            {
                "client": client,
                "calls": [c.__dict__ for c in plan.calls],
                "stopped": plan.stopped,
                "error": "".join(traceback.format_exception(error)) if error else None,
            },
            indent=1,
        )
    )


def run_main(main: Any) -> None:
    """Run a runner's async main(args, plan) and always write its record."""
    import asyncio

    args = parse_args()
    plan = Plan(slow=args.slow)
    client: dict[str, Any] = {}
    try:
        asyncio.run(main(args, plan, client))
    except BaseException as exc:  # noqa: BLE001 - reported in the record, the test shows it
        dump(args, plan, client, exc)
        sys.exit(1)
    dump(args, plan, client)
