"""The output-shaping function and the bounded output buffer."""

from __future__ import annotations

from mcp_server.shaping import OutputBuffer, clean, shape, stream_hint, truncate_utf8


def test_ansi_colours_cursor_moves_and_osc_titles_are_stripped() -> None:
    text = "\x1b[31mred\x1b[0m \x1b[2K\x1b[1Gline \x1b]0;title\x07done\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"
    assert clean(text) == "red line donelink"


def test_carriage_return_progress_bar_collapses_to_its_final_state() -> None:
    bar = "".join(f"\rdownloading {p}%" for p in range(0, 101, 10)) + "\nnext line\r\n"
    assert clean(bar) == "downloading 100%\nnext line\n"


def test_output_within_budget_is_returned_whole_and_cleaned() -> None:
    out = shape("\x1b[1mbold\x1b[0m\nplain\n", 100)
    assert out.text == "bold\nplain\n"
    assert not out.truncated and out.omitted_bytes == 0


def test_big_output_keeps_head_and_tail_within_budget_with_exact_marker() -> None:
    lines = [f"line {i:05d}\n" for i in range(10_000)]
    text = "".join(lines)
    out = shape(text, 4096, base_offset=1000, label="stdout", hint=stream_hint("stdout_offset"))
    assert len(out.text.encode()) <= 4096
    assert out.text.startswith("line 00000\n")
    assert out.text.endswith("line 09999\n")
    assert out.truncated
    # The omitted range is exact raw offsets: head + omitted + tail == whole stream.
    raw = text.encode()
    head_end = out.omitted_start - 1000
    tail_start = out.omitted_end - 1000
    assert tail_start - head_end == out.omitted_bytes
    assert out.text.startswith(raw[:head_end].decode())
    assert out.text.endswith(raw[tail_start:].decode())
    assert f"{out.omitted_bytes} bytes of stdout omitted" in out.text
    assert f"stream_logs stdout_offset={out.omitted_start}" in out.text
    # Cuts fall on line boundaries.
    assert raw[head_end - 1 : head_end] == b"\n"
    assert raw[tail_start - 1 : tail_start] == b"\n"


def test_one_huge_line_is_cut_on_character_boundaries() -> None:
    text = "é" * 50_000  # 2 bytes each, no newline
    out = shape(text, 2000)
    assert len(out.text.encode()) <= 2000
    assert "\ufffd" not in out.text
    assert out.omitted_bytes == 100_000 - (out.omitted_start + (100_000 - out.omitted_end))


def test_budget_is_configurable() -> None:
    text = "x\n" * 10_000
    assert len(shape(text, 1024).text.encode()) <= 1024
    assert len(shape(text, 16 * 1024).text.encode()) <= 16 * 1024
    assert not shape(text, 64 * 1024).truncated


def test_output_buffer_keeps_bounded_memory_and_matches_whole_stream_shaping() -> None:
    lines = [f"{i}\n" for i in range(200_000)]
    buf = OutputBuffer(keep=4096)
    for line in lines:
        buf.add(line)
    whole = "".join(lines)
    assert buf.total == len(whole.encode())
    assert len(buf.text().encode()) <= 2 * 4096
    got = buf.shaped(4096, label="stdout")
    assert len(got.text.encode()) <= 4096
    assert got.total_bytes == len(whole.encode())
    raw = whole.encode()
    # The tail shown is the true tail of the stream, and the marker's offsets are exact.
    tail = got.text.split("…]\n", 1)[1]
    assert raw.endswith(tail.encode())
    assert got.omitted_end == len(raw) - len(tail.encode())
    head = got.text.split("[…", 1)[0]
    assert raw.startswith(head.encode())
    assert got.omitted_start == len(head.encode())
    assert got.omitted_bytes == got.omitted_end - got.omitted_start


def test_output_buffer_with_small_output_is_exact() -> None:
    buf = OutputBuffer(keep=4096)
    buf.add("héllo ")
    buf.add("wörld\n")
    assert buf.text() == "héllo wörld\n"
    assert buf.shaped(4096).text == "héllo wörld\n"


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("aé€😀", 5) == "😀"
    assert truncate_utf8("aé€😀", 3, keep="head") == "aé"
    assert truncate_utf8("short", 100) == "short"
