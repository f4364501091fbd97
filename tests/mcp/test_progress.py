"""Coalescing output into progress notifications."""

from __future__ import annotations

import anyio
import pytest

from mcp_server.progress import output_progress

pytestmark = pytest.mark.anyio


async def test_messages_carry_all_output_in_order_and_progress_counts_bytes() -> None:
    sent: list[tuple[float, str]] = []

    async def report(progress: float, message: str) -> None:
        sent.append((progress, message))

    chunks = [f"line {i}\n" for i in range(50)]
    async with output_progress(report, interval=0.05) as progress:
        for chunk in chunks:
            progress.feed(chunk)
            await anyio.lowlevel.checkpoint()
    assert "".join(m for _, m in sent) == "".join(chunks)
    values = [p for p, _ in sent]
    assert values == sorted(values)
    assert values[-1] == len("".join(chunks).encode())


async def test_a_burst_is_coalesced_to_at_most_one_message_per_interval() -> None:
    times: list[float] = []

    async def report(value: float, message: str) -> None:
        # The sender's own send time: a clock read here could lag it by a GIL switch (~5 ms)
        # when other threads run, and make a correct gap look short.
        times.append(progress._last_sent)

    async with output_progress(report, interval=0.1) as progress:
        deadline = anyio.current_time() + 0.5
        while anyio.current_time() < deadline:
            progress.feed("x")
            await anyio.sleep(0.001)
    gaps = [b - a for a, b in zip(times, times[1:-1], strict=False)]  # the final flush may come early
    assert len(times) <= 8
    assert all(gap >= 0.099 for gap in gaps)  # timers may fire a clock tick early


async def test_the_first_chunk_after_a_quiet_period_is_sent_at_once() -> None:
    got = anyio.Event()

    async def report(progress: float, message: str) -> None:
        got.set()

    async with output_progress(report, interval=10) as progress:
        progress.feed("hello\n")
        with anyio.fail_after(2):  # far less than the 10 s interval
            await got.wait()


async def test_each_message_is_at_most_the_byte_limit_and_ansi_free() -> None:
    sent: list[str] = []

    async def report(progress: float, message: str) -> None:
        sent.append(message)

    async with output_progress(report, interval=10, max_bytes=1024) as progress:
        progress.feed("\x1b[32m" + "é" * 5000 + "\x1b[0m END")
    assert sent
    for message in sent:
        assert len(message.encode()) <= 1024
        assert "\x1b" not in message
    assert sent[-1].endswith("END")


async def test_output_fed_just_before_the_end_is_flushed() -> None:
    sent: list[str] = []

    async def report(progress: float, message: str) -> None:
        sent.append(message)

    async with output_progress(report, interval=10) as progress:
        progress.feed("first\n")
        await anyio.sleep(0.01)
        progress.feed("last words\n")
    assert "".join(sent) == "first\nlast words\n"
