"""Wall-clock time as the API reports it: whole milliseconds since the Unix epoch."""

import time


def now_ms() -> int:
    # Integer nanoseconds, so no float rounding puts a timestamp a millisecond off.
    return time.time_ns() // 1_000_000
