"""Idle lifecycle: suspend or shut down a devbox nobody has used for `after_idle.idle_time_seconds`.

The policy is `launch_parameters.after_idle` or `launch_parameters.lifecycle.after_idle` (the API
allows both, and then they must be equal). A running devbox is *idle* while no command runs in
it and nothing uses it: starting a command, reading or writing a file, `keep_alive` and resuming
all count as use, and the idle time counts from the end of the last command. Looking at a devbox
(get, list, `wait_for_status`, logs, usage) does not count: a dashboard or a client waiting for
the devbox to suspend must not keep it alive. Neither do processes a finished command left
running in the background (`server &`), nor the entrypoint: only what goes through the API.

When the time is up the devbox is suspended (resumable, files kept) or shut down with
`shutdown_reason: idle`, and its logs say why. A policy replaces `keep_alive_time_seconds`, as the
API documents ("If after_idle is set, Devbox will ignore keep_alive_time_seconds").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

IdleAction = Literal["shutdown", "suspend"]


@dataclass(frozen=True)
class IdlePolicy:
    seconds: int
    action: IdleAction


def idle_policy(launch_parameters: Mapping[str, Any]) -> IdlePolicy | None:
    """The devbox's idle policy, from validated launch parameters (None: it never idles out)."""
    lifecycle = launch_parameters.get("lifecycle") or {}
    config = launch_parameters.get("after_idle") or lifecycle.get("after_idle")
    if not config:
        return None
    return IdlePolicy(int(config["idle_time_seconds"]), config["on_idle"])


class IdleTimers:
    """One timer per running devbox that has an idle policy.

    `busy(devbox_id)` says whether a command is running in it; `act(devbox_id, policy)` suspends
    or shuts it down. Each timer sleeps until the idle deadline, then looks again: use meanwhile
    (`touch`) moved the deadline, so it sleeps until the new one; a command still running counts
    as use. Nothing polls faster than the idle time itself.
    """

    def __init__(
        self,
        busy: Callable[[str], bool],
        act: Callable[[str, IdlePolicy], Awaitable[None]],
    ) -> None:
        self._busy = busy
        self._act = act
        self._last_use: dict[str, float] = {}  # monotonic time of the last use, per armed devbox
        self._timers: dict[str, asyncio.Task[None]] = {}

    def arm(self, devbox_id: str, policy: IdlePolicy | None) -> None:
        """The devbox is running (again): start counting from now."""
        if policy is None:
            return
        self._last_use[devbox_id] = time.monotonic()
        if devbox_id not in self._timers:
            self._timers[devbox_id] = asyncio.ensure_future(self._run(devbox_id, policy))

    def disarm(self, devbox_id: str) -> None:
        """The devbox stopped running; its timer ends (unless it is the one stopping it)."""
        self._last_use.pop(devbox_id, None)
        timer = self._timers.pop(devbox_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def touch(self, devbox_id: str) -> None:
        """The devbox was used now."""
        if devbox_id in self._last_use:
            self._last_use[devbox_id] = time.monotonic()

    def close(self) -> None:
        for devbox_id in list(self._timers):
            self.disarm(devbox_id)

    async def _run(self, devbox_id: str, policy: IdlePolicy) -> None:
        while (last := self._last_use.get(devbox_id)) is not None:
            if self._busy(devbox_id):
                self.touch(devbox_id)
                last = self._last_use[devbox_id]
            remaining = last + policy.seconds - time.monotonic()
            if remaining <= 0:
                self._timers.pop(devbox_id, None)
                self._last_use.pop(devbox_id, None)
                await self._act(devbox_id, policy)
                return
            await asyncio.sleep(remaining)
