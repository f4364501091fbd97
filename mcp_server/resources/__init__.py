"""MCP resources: axon event history, devbox views, execution output, with live subscriptions.

`register_resources(mcp, client, settings, terminals)` adds the templates, the paginated `resources/list`,
and subscriptions in both protocol eras to a server, and returns the handle to what it
installed. The server keeps the handle in each run's `AppState`, where tools use
`output_links` (links to full output when a result was cut, for clients that can use them: see
`links`) and `list_changed` (after creating a devbox or an axon); `complete` answers
completions of the templates' arguments.

Which client: reads use the client of the server run they arrive on (the lifespan's `client`,
as the tools do). Subscription followers are shared by every connection and outlive any one of
them, so they use `client` itself when it is a ready `RunloopClient`, or else one made from the
factory while at least one follower runs (and closed when the last one stops).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ResourceLink,
)

from ..runloop import NotFound, RunloopClient, RunloopError
from ..settings import Settings
from ..subscriptions import HubStats, SubscriptionHub
from ..terminal.sessions import Terminals
from . import reading
from .feeds import KINDS, make_follow
from .links import ResourceReaders
from .listing import list_page, remember_execution, template_completions
from .uris import (
    AXON_EVENT,
    AXON_EVENTS,
    DEVBOX,
    EXECUTION_OUTPUT,
    STREAMS,
    TERMINAL,
    Stream,
    TerminalFeed,
    feed_of,
    is_ours,
    output_uri,
    terminal_uri,
)

__all__ = ["ResourcesHandle", "register_resources"]

ClientProvider = RunloopClient | Callable[[], RunloopClient]
CompleteTemplate = Callable[[Any, CompleteRequestParams], Awaitable[CompleteResult | None]]


class SharedClient:
    """The followers' client: the given one, or one made on demand and closed when unused."""

    def __init__(self, provider: ClientProvider) -> None:
        self._provider = provider
        self._client: RunloopClient | None = None
        self._users = 0

    @property
    def open(self) -> bool:
        return self._client is not None

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[RunloopClient]:
        if isinstance(self._provider, RunloopClient):
            yield self._provider
            return
        if self._client is None:
            self._client = self._provider()
        client = self._client
        self._users += 1
        try:
            yield client
        finally:
            self._users -= 1
            if self._users == 0 and self._client is client:
                self._client = None
                with anyio.CancelScope(shield=True):
                    await client.aclose()


class ResourcesHandle:
    """What `register_resources` installed on one server: its hub, its followers' client, its
    settings, which clients have read a resource (who gets resource links), and the completions
    of the templates' arguments."""

    def __init__(
        self, hub: SubscriptionHub, shared: SharedClient, settings: Settings, readers: ResourceReaders,
        complete: CompleteTemplate,
    ) -> None:
        self.hub = hub
        self.shared = shared
        self.settings = settings
        self.readers = readers
        self.complete = complete

    def stats(self) -> HubStats:
        return self.hub.stats()

    async def list_changed(self) -> None:
        """Tell every client that `resources/list` changed (call after creating a devbox or an axon)."""
        await self.hub.resources_list_changed()

    def output_links(
        self, session: Any, devbox_id: str, execution_id: str, streams: Iterable[Stream] = STREAMS
    ) -> list[ResourceLink]:
        """Links to the full output of `streams` of an execution, for a result that had to cut them,
        if the requesting client (`session`) can use them (`Settings.resource_links`, see `links`).

        Also remembers the execution, so completions can suggest its id (the API cannot list them).
        """
        remember_execution(devbox_id, execution_id)
        if not self.readers.wants_links(session, self.settings.resource_links):
            return []
        return [
            ResourceLink(
                type="resource_link",
                uri=output_uri(devbox_id, execution_id, stream),
                name=f"{stream}-{execution_id}",
                title=f"Full {stream} of execution {execution_id}",
                description=f"The whole {stream}; add ?offset=N&limit=M to read a byte range.",
                mime_type="text/plain",
            )
            for stream in streams
        ]


def register_resources(
    mcp: MCPServer, client: ClientProvider, settings: Settings, terminals: Terminals
) -> ResourcesHandle:
    """Add the resources, `resources/list` pagination and subscriptions to `mcp`. The handle also
    completes the templates' arguments: routing `completion/complete` is the server builder's.
    `terminals` are the terminal sessions the terminal tools follow (their screens are resources)."""
    shared = SharedClient(client)

    @asynccontextmanager
    async def client_for(ctx: Any) -> AsyncIterator[RunloopClient]:
        """The client of the request's server run if it has one (as tools use), else the shared one."""
        request_context = getattr(ctx, "request_context", ctx)
        own = getattr(getattr(request_context, "lifespan_context", None), "client", None)
        if isinstance(own, RunloopClient):
            yield own
        else:
            async with shared.lease() as leased:
                yield leased

    @mcp.resource(
        AXON_EVENTS,
        name="axon-events",
        title="Axon event history",
        mime_type="application/json",
        description=(
            "An axon's events as JSON, newest first (limit ≤ 1000, default 100; before_sequence pages "
            "back), or with after_sequence the newer events oldest first. next_page is the next page's "
            "URI. Payloads are decoded when they are JSON. Subscribe to hear of new events."
        ),
    )
    async def axon_events(
        axon_id: str,
        ctx: Context,
        after_sequence: str | None = None,
        before_sequence: str | None = None,
        limit: str | None = None,
    ) -> str:
        async with client_for(ctx) as c:
            return await reading.read_history(c, axon_id, after_sequence, before_sequence, limit)

    @mcp.resource(
        AXON_EVENT, name="axon-event", title="Axon event", mime_type="application/json",
        description="One event of an axon by sequence, payload decoded when it is JSON.",
    )
    async def axon_event(axon_id: str, sequence: str, ctx: Context) -> str:
        async with client_for(ctx) as c:
            return await reading.read_event(c, axon_id, sequence)

    @mcp.resource(
        DEVBOX, name="devbox", title="Devbox", mime_type="application/json",
        description="A devbox's current view: status, launch parameters, state transitions. "
        "Subscribe to hear of status changes.",
    )
    async def devbox(devbox_id: str, ctx: Context) -> str:
        async with client_for(ctx) as c:
            return await reading.read_devbox(c, devbox_id)

    @mcp.resource(
        EXECUTION_OUTPUT, name="execution-output", title="Execution output", mime_type="text/plain",
        description=(
            "A command's stdout or stderr from byte offset (default 0) for limit bytes (default: to the "
            "end), shaped like tool results: ANSI stripped, head and tail kept with a marker giving the "
            "omitted byte range. Subscribe for updates while it grows and one when it completes."
        ),
    )
    async def execution_output(
        devbox_id: str, execution_id: str, stream: str, ctx: Context, offset: str | None = None, limit: str | None = None
    ) -> str:
        async with client_for(ctx) as c:
            return await reading.read_output(
                c, devbox_id, execution_id, stream, offset, limit, budget=settings.output_budget
            )

    @mcp.resource(
        TERMINAL, name="terminal", title="Terminal screen", mime_type="text/plain",
        description="The screen of a terminal session the terminal tools opened, as text. "
        "Subscribe to hear when it changes.",
    )
    async def terminal(devbox_id: str, session: str) -> str:
        found = terminals.find(f"{devbox_id}/{session}")
        if found is None:
            raise _not_found(terminal_uri(f"{devbox_id}/{session}"), _NO_TERMINAL)
        await found.drawn(1.0)
        return found.screen.text()

    async def check(ctx: Any, uri: str) -> None:
        """Refuse a subscription to something that does not exist, as a read would."""
        feed = feed_of(uri)
        if feed is None:
            if not is_ours(uri) and uri not in {r.uri for r in await mcp.list_resources()}:
                raise _not_found(uri)
            return  # a single event: it exists or not, but never changes
        if isinstance(feed, TerminalFeed):
            if terminals.find(feed.session_id) is None:
                raise _not_found(uri, _NO_TERMINAL)
            return
        async with client_for(ctx) as c:
            try:
                await KINDS[type(feed)].check(c, feed)
            except NotFound as exc:
                # The API's message names what is missing and says what to do (executions, for
                # one, are not in resources/list).
                raise _not_found(uri, exc.message or None) from None
            except RunloopError as exc:
                raise _resource_error(uri, f"subscribing failed: {exc}") from None

    hub = SubscriptionHub(_bus_of(mcp), feed_of, make_follow(shared.lease, terminals), check)
    low = mcp._lowlevel_server
    hub.install(low)

    async def list_resources(ctx: Any, params: PaginatedRequestParams | None) -> Any:
        async with client_for(ctx) as c:
            return await list_page(mcp, c, params.cursor if params else None)

    low.add_request_handler("resources/list", PaginatedRequestParams, list_resources)
    readers = ResourceReaders()
    read = low.get_request_handler("resources/read")
    if read is not None:

        async def read_resource(ctx: Any, params: ReadResourceRequestParams) -> Any:
            done = await read.handler(ctx, params)
            readers.remember(ctx.session)  # this client follows resources: links will help it
            return done

        low.add_request_handler("resources/read", ReadResourceRequestParams, read_resource)
    return ResourcesHandle(hub, shared, settings, readers, template_completions(client_for))


_NO_TERMINAL = "this server has no such terminal open; open_terminal opens one, terminal_read reattaches one"


def _bus_of(mcp: MCPServer) -> Any:
    # The bus `ctx.notify_*` publishes to and `subscriptions/listen` reads from. MCPServer builds
    # it when none is passed and keeps it here; using the same one keeps every publisher and
    # every listener on one channel.
    return mcp._subscriptions


def _not_found(uri: str, why: str | None = None) -> MCPError:
    message = f"resource {uri} not found: {why}" if why else (
        f"resource {uri} not found; list resources (resources/list) to see what exists"
    )
    return MCPError(INVALID_PARAMS, message, data={"uri": uri})


def _resource_error(uri: str, message: str) -> MCPError:
    return MCPError(INTERNAL_ERROR, message, data={"uri": uri})
