"""`devbox-mcp demo` (what `make demo` runs) completes end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).with_name("devbox-mcp"))


def test_demo_runs_every_step() -> None:
    done = subprocess.run([EXE, "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    for expected in (
        "embedded backend",
        ": running",
        "build OK",  # streamed live as progress, then in the result
        "exit 0",
        "Serving HTTP",
        "hello from the devbox",
        "note 5: all good",
        "area of a circle of radius 2: 12.57",  # the REPL kept radius and area across three sends
        "terminal closed",
        '"status": "served"',
        "refused",
        '"status": "shutdown"',
        "demo complete",
    ):
        assert expected in out, expected
    assert out.count("│ [") >= 5  # each build step arrived as its own progress line
    # The second devbox-mcp process reached the web server the first one started.
    assert out.count("hello from the devbox") == 2
