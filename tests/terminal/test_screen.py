"""The virtual screen on its own: what pyte lacks that the terminal tools rely on."""

from __future__ import annotations

from mcp_server.terminal.keys import key_bytes
from mcp_server.terminal.screen import VirtualScreen


def test_lines_that_scroll_off_are_kept_within_the_bound_and_say_what_was_dropped() -> None:
    screen = VirtualScreen(20, 3, scrollback_bytes=64)
    for i in range(100):
        screen.feed(b"line %d\r\n" % i)
    scrolled = screen.take_scrolled()
    assert scrolled.total == sum(len(f"line {i}\n") for i in range(98))  # 100 lines, 2 still on the screen
    shaped = scrolled.shaped(200)
    assert shaped.text.startswith("line 0\n") and "line 97" in shaped.text and "omitted" in shaped.text
    assert screen.take_scrolled().total == 0  # taken: the next call starts afresh


def test_the_alternate_screen_brings_the_shell_screen_back() -> None:
    screen = VirtualScreen(20, 4)
    screen.feed(b"$ less f\r\n")
    screen.feed(b"\x1b[?1049h\x1b[H\x1b[2Jpage one\x1b[4;1H:")
    assert screen.alternate and screen.text().startswith("page one")
    screen.feed(b"\x1b[?1049l")
    assert not screen.alternate and screen.text() == "$ less f\n"


def test_new_text_is_what_follows_the_mark_and_a_prompt_keeps_its_space() -> None:
    screen = VirtualScreen(20, 4)
    screen.feed(b">>> ")
    assert screen.text() == ">>> "  # the cursor's row keeps its blanks up to the cursor
    mark = screen.mark()
    screen.feed(b"x = 1\r\n>>> ")
    assert screen.region_text(mark) == "x = 1\n>>> \n\n"  # to the bottom row


def test_private_sequences_pyte_cannot_take_do_not_stop_the_screen() -> None:
    screen = VirtualScreen(20, 2)
    screen.feed(b"\x1b[>4;2mvim\x1b[>4;m ok")
    assert screen.text() == "vim ok"


def test_queries_are_answered_as_a_terminal_answers_them() -> None:
    screen = VirtualScreen(20, 4)
    screen.feed(b"ab\x1b[6n")
    assert screen.take_replies() == b"\x1b[1;3R"  # the cursor position, 1-based


def test_a_smaller_screen_keeps_the_rows_around_the_cursor() -> None:
    screen = VirtualScreen(20, 8)
    screen.feed(b"a\r\nb\r\nc\r\nkept\r\n")
    screen.resize(20, 4)
    assert screen.text() == "b\nc\nkept\n" and screen.cursor == (3, 0)


def test_arrow_keys_follow_the_programs_cursor_key_mode() -> None:
    screen = VirtualScreen(20, 2)
    assert key_bytes("Up", app_cursor_keys=screen.app_cursor_keys) == b"\x1b[A"
    screen.feed(b"\x1b[?1h")  # what vim and less ask for
    assert key_bytes("Up", app_cursor_keys=screen.app_cursor_keys) == b"\x1bOA"
    assert key_bytes("ctrl-c") == b"\x03" and key_bytes("F12") == b"\x1b[24~"
