"""Helpers shared by the axon tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def poll_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Wait (bounded) for a state another thread reaches and that has no event of its own to wait on."""
    pause = threading.Event()
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True
