"""The resource URIs: templates, builders, and the feed each URI follows when subscribed.

One place knows the URI shapes, so the templates the server advertises, the links tools hand
out and the subscription routing can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

from mcp.shared.uri_template import UriTemplate

AXON_EVENTS = "axon://{axon_id}/events{?after_sequence,before_sequence,limit}"
AXON_EVENT = "axon://{axon_id}/events/{sequence}"
DEVBOX = "devbox://{devbox_id}"
EXECUTION_OUTPUT = "devbox://{devbox_id}/executions/{execution_id}/{stream}{?offset,limit}"
# `{devbox_id}/{session}` is the terminal tools' session id: the URI is `terminal://` and the id.
TERMINAL = "terminal://{devbox_id}/{session}"

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")

_AXON_EVENTS = UriTemplate.parse(AXON_EVENTS)
_AXON_EVENT = UriTemplate.parse(AXON_EVENT)
_DEVBOX = UriTemplate.parse(DEVBOX)
_EXECUTION_OUTPUT = UriTemplate.parse(EXECUTION_OUTPUT)
_TERMINAL = UriTemplate.parse(TERMINAL)


@dataclass(frozen=True)
class AxonFeed:
    """New events of one axon."""

    axon_id: str


@dataclass(frozen=True)
class DevboxFeed:
    """Status changes of one devbox."""

    devbox_id: str


@dataclass(frozen=True)
class OutputFeed:
    """Growth of one output stream of one execution."""

    devbox_id: str
    execution_id: str
    stream: Stream


@dataclass(frozen=True)
class TerminalFeed:
    """Changes of one terminal session's screen."""

    session_id: str  # devbox_id/name


def _uri_segment(value: str) -> str:
    return quote(value, safe="")


def _query(**params: int | str | None) -> str:
    given = {k: str(v) for k, v in params.items() if v is not None}
    return f"?{urlencode(given)}" if given else ""


def axon_events_uri(
    axon_id: str, *, after_sequence: int | None = None, before_sequence: int | None = None, limit: int | None = None
) -> str:
    query = _query(after_sequence=after_sequence, before_sequence=before_sequence, limit=limit)
    return f"axon://{_uri_segment(axon_id)}/events{query}"


def axon_event_uri(axon_id: str, sequence: int) -> str:
    return f"axon://{_uri_segment(axon_id)}/events/{sequence}"


def devbox_uri(devbox_id: str) -> str:
    return f"devbox://{_uri_segment(devbox_id)}"


def output_uri(
    devbox_id: str, execution_id: str, stream: Stream, *, offset: int | None = None, limit: int | None = None
) -> str:
    query = _query(offset=offset or None, limit=limit)
    return f"devbox://{_uri_segment(devbox_id)}/executions/{_uri_segment(execution_id)}/{stream}{query}"


def terminal_uri(session_id: str) -> str:
    devbox_id, _, name = session_id.partition("/")
    return f"terminal://{_uri_segment(devbox_id)}/{_uri_segment(name)}"


def feed_of(uri: str) -> AxonFeed | DevboxFeed | OutputFeed | TerminalFeed | None:
    """The upstream a subscription to `uri` follows; None for URIs that never change here."""
    try:
        match = _AXON_EVENTS.match(uri)
        if match is not None:
            return AxonFeed(str(match["axon_id"]))
        match = _DEVBOX.match(uri)
        if match is not None:
            return DevboxFeed(str(match["devbox_id"]))
        match = _EXECUTION_OUTPUT.match(uri)
        if match is not None and match["stream"] in STREAMS:
            return OutputFeed(str(match["devbox_id"]), str(match["execution_id"]), match["stream"])  # type: ignore[arg-type]
        match = _TERMINAL.match(uri)
        if match is not None:
            return TerminalFeed(f"{match['devbox_id']}/{match['session']}")
    except ValueError:
        return None
    return None


def is_ours(uri: str) -> bool:
    """Whether `uri` has the shape of one of the resource templates."""
    try:
        return any(t.match(uri) is not None for t in (_AXON_EVENTS, _AXON_EVENT, _DEVBOX, _EXECUTION_OUTPUT, _TERMINAL))
    except ValueError:
        return False
