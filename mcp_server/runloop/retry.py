"""The one retry policy: which failures are retried, and how long to wait before the next try.

Only requests that cannot act twice are retried: reads (GET), long-polls, and writes sent with
an idempotency key (`x-request-id`, or `command_id` for `execute`). Deciding *whether* a request
may be retried is the client's job (`RunloopClient._request`); this module decides *when*.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, honouring `Retry-After` up to `max_retry_after`.

    `max_attempts` counts the first try: 1 means never retry.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after the `failures`-th consecutive failure (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** max(0, failures - 1))
        # "Equal jitter": at least half the exponential step, so retries spread without collapsing to 0.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

