"""Live resource subscriptions in both protocol eras, fed by one upstream stream per feed.

A *feed* is something upstream that changes (an axon's event stream, one stream of an
execution's output). Many resource URIs can map to one feed (`axon://a/events`,
`axon://a/events?limit=5`), and many clients can subscribe to one URI. Whatever the count, a
feed has at most one follower task holding one upstream SSE connection; it starts with the
first subscriber and is cancelled (closing the connection) when the last one leaves or
disconnects. `stats()` counts what is alive so tests can prove nothing leaks.

Delivery is coalesced per subscriber: a subscriber (a handshake-era connection, or a 2026
`subscriptions/listen` stream) holds a set of pending notifications and one sender at a time
drains it. Events arriving while a send is in flight collapse into one more notification, so a
slow client gets fewer notifications, never an unbounded backlog or a dropped stream.

Era plumbing (see the SDK notes §1.6): handshake-era clients use `resources/subscribe` and get
`notifications/resources/updated` on their connection's standalone channel; 2026 clients open
`subscriptions/listen`, served here by `listen` (replacing the SDK's handler, whose fixed buffer
ends the stream when events outpace the client). Change events published on the server's
`SubscriptionBus` by anyone (`ctx.notify_*`) reach both kinds of subscribers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server import NotificationOptions
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    event_matches,
    event_to_notification,
)
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

log = logging.getLogger("devbox_mcp.subscriptions")

Feed = Hashable
# Runs a feed's upstream until cancelled; calls `ready()` once every later upstream change is
# sure to be seen (the baseline is fixed), then `changed()` on every change. Returning means the
# feed is finished (e.g. the execution completed): subscribers get a last update.
Follow = Callable[[Feed, Callable[[], Awaitable[None]], Callable[[], None]], Awaitable[None]]
# How long a subscribe waits for its follower to fix its baseline before answering anyway.
READY_TIMEOUT = 10.0
# Maps a resource URI to its feed, or None for URIs that never change or have no upstream.
FeedOf = Callable[[str], Feed | None]
# Checks, before a subscription is accepted, that the resource exists (raises otherwise); gets
# the request's context so it can use that connection's API client.
Check = Callable[[Any, str], Awaitable[None]]

MAX_LISTEN_STREAMS = 1024
# Each subscribed URI may hold an upstream connection: one stream may not ask for unboundedly many.
MAX_URIS_PER_LISTEN = 100


@dataclass
class HubStats:
    """What is alive right now: all zero once every subscriber has left."""

    followers: int  # feeds with a running upstream task
    subscribed_uris: int  # URIs with at least one subscriber (either era)
    handshake_peers: int  # handshake-era connections holding subscriptions
    listen_streams: int  # open 2026 `subscriptions/listen` streams
    tasks: int  # every task this hub owns (followers and senders)


@dataclass(eq=False)
class _Sender:
    """One subscriber's coalescing outbox: pending notifications, drained by one task at a time."""

    send: Callable[[ServerEvent], Awaitable[None]]
    spawn: Callable[[Awaitable[None]], asyncio.Task[None]]
    pending: dict[ServerEvent, None] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def mark(self, event: ServerEvent) -> None:
        self.pending[event] = None
        if self.task is None:
            self.task = self.spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending:
                event = next(iter(self.pending))
                del self.pending[event]
                await self.send(event)
        except Exception as exc:  # the connection went away; its clean-up removes this sender
            log.debug("dropping notifications for a closed connection: %r", exc)
            self.pending.clear()
        finally:
            self.task = None

    def cancel(self) -> None:
        self.pending.clear()
        if self.task is not None:
            self.task.cancel()


@dataclass(eq=False)
class _HandshakePeer:
    """A handshake-era connection: where its notifications go and what it subscribed to."""

    session: ServerSession
    sender: _Sender
    uris: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Follower:
    feed: Feed
    uris: Counter[str] = field(default_factory=Counter)
    task: asyncio.Task[None] | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)


class SubscriptionHub:
    """The registry of subscribers (both eras) and of upstream followers, ref-counted by URI."""

    def __init__(self, bus: Any, feed_of: FeedOf, follow: Follow, check: Check | None = None) -> None:
        self._bus = bus
        self._feed_of = feed_of
        self._follow = follow
        self._check = check
        self._followers: dict[Feed, _Follower] = {}
        self._handshake: dict[object, _HandshakePeer] = {}  # by Connection
        self._handshake_by_uri: dict[str, set[_HandshakePeer]] = {}
        self._listen_streams = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---- wiring ---------------------------------------------------------------------------

    def install(self, server: Server[Any]) -> None:
        """Serve both eras' subscription methods on `server` and advertise them truthfully."""
        server.add_request_handler("resources/subscribe", SubscribeRequestParams, self.handshake_subscribe)
        server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self.handshake_unsubscribe)
        server.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, self.listen)
        server.middleware.append(self._track_handshake_connection)
        # MCPServer's handshake-era initialize says listChanged: false; we do send resource
        # list changes (and resource updates), so say so, keeping whatever else was set.
        create = server.create_initialization_options

        @functools.wraps(create)
        def create_initialization_options(notification_options: NotificationOptions | None = None, *a: Any, **kw: Any):
            options = notification_options or NotificationOptions()
            options.resources_changed = True
            return create(options, *a, **kw)

        server.create_initialization_options = create_initialization_options  # type: ignore[method-assign]
        self._bus.subscribe(self._from_bus)

    def stats(self) -> HubStats:
        return HubStats(
            followers=sum(1 for f in self._followers.values() if f.task is not None),
            subscribed_uris=len(set(self._handshake_by_uri) | {u for f in self._followers.values() for u in f.uris}),
            handshake_peers=sum(1 for p in self._handshake.values() if p.uris),
            listen_streams=self._listen_streams,
            tasks=len(self._tasks),
        )

    async def aclose(self) -> None:
        """Cancel every follower and sender (server shutdown)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        # Followers outlive the request that started them and are shared by every client, so
        # they cannot belong to any one connection's task group: the hub owns them.
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("subscription task failed", exc_info=task.exception())

    # ---- publishing -----------------------------------------------------------------------

    async def resource_updated(self, uri: str) -> None:
        """Tell every subscriber of `uri` (both eras) that it changed."""
        await self._bus.publish(ResourceUpdated(uri=uri))

    async def resources_list_changed(self) -> None:
        """Tell every client (both eras) that `resources/list` changed (a new devbox or axon)."""
        await self._bus.publish(ResourcesListChanged())

    def _from_bus(self, event: ServerEvent) -> None:
        """Handshake-era delivery of bus events (2026 listen streams subscribe to the bus themselves).

        Only resource events: those are what the handshake-era capabilities advertise."""
        if isinstance(event, ResourceUpdated):
            peers = self._handshake_by_uri.get(event.uri, ())
        elif isinstance(event, ResourcesListChanged):
            peers = self._handshake.values()
        else:
            return
        for peer in list(peers):
            peer.sender.mark(event)

    # ---- upstream followers ---------------------------------------------------------------

    async def _acquire(self, uri: str) -> None:
        """Count a subscriber of `uri`, starting its feed's follower if needed, and return once the
        follower is sure to see every change made from now on (so none between the subscribe
        answer and the upstream connection is missed)."""
        feed = self._feed_of(uri)
        if feed is None:
            return
        follower = self._followers.get(feed)
        if follower is None:
            follower = self._followers[feed] = _Follower(feed)
        follower.uris[uri] += 1
        if follower.task is None and not self._closed:
            follower.ready = anyio.Event()
            follower.task = self._spawn(self._run_follower(follower))
        with anyio.move_on_after(READY_TIMEOUT):
            await follower.ready.wait()

    def _release(self, uri: str) -> None:
        feed = self._feed_of(uri)
        follower = self._followers.get(feed) if feed is not None else None
        if follower is None:
            return
        follower.uris[uri] -= 1
        if follower.uris[uri] <= 0:
            del follower.uris[uri]
        if not follower.uris:
            del self._followers[feed]
            if follower.task is not None:
                follower.task.cancel()
                follower.task = None

    async def _run_follower(self, follower: _Follower) -> None:
        async def changed() -> None:
            for uri in list(follower.uris):
                await self.resource_updated(uri)

        try:
            await self._follow(follower.feed, changed, follower.ready.set)
        except asyncio.CancelledError:
            follower.ready.set()
            raise
        except Exception as exc:  # an upstream that failed for good: subscribers re-read and see why
            log.warning("upstream of %s stopped: %s", follower.feed, exc)
        follower.ready.set()
        await changed()
        if self._followers.get(follower.feed) is follower:
            follower.task = None

    # ---- handshake era: resources/subscribe -----------------------------------------------

    def _peer(self, ctx: ServerRequestContext[Any, Any]) -> _HandshakePeer | None:
        connection = getattr(ctx.session, "_connection", None)
        if connection is None or connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        peer = self._handshake.get(connection)
        if peer is None:
            session = ctx.session
            peer = _HandshakePeer(session, _Sender(functools.partial(_send_handshake, session), self._spawn))
            self._handshake[connection] = peer
            connection.exit_stack.push_async_callback(self._connection_closed, connection)
        return peer

    async def _track_handshake_connection(self, ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        """Remember every handshake-era connection, so list changes reach it even unsubscribed."""
        if ctx.method != "initialize":
            self._peer(ctx)
        return await call_next(ctx)

    async def handshake_subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        if self._check is not None:
            await self._check(ctx, uri)
        peer = self._peer(ctx)
        if peer is None:
            raise MCPError(INVALID_REQUEST, "resources/subscribe needs a handshake-era session; use subscriptions/listen")
        if uri not in peer.uris:
            peer.uris.add(uri)
            self._handshake_by_uri.setdefault(uri, set()).add(peer)
            await self._acquire(uri)
        return EmptyResult()

    async def handshake_unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        peer = self._peer(ctx)
        if peer is not None:
            self._drop(peer, str(params.uri))
        return EmptyResult()

    def _drop(self, peer: _HandshakePeer, uri: str) -> None:
        if uri not in peer.uris:
            return
        peer.uris.discard(uri)
        peers = self._handshake_by_uri.get(uri)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._handshake_by_uri[uri]
        peer.sender.pending.pop(ResourceUpdated(uri=uri), None)
        self._release(uri)

    async def _connection_closed(self, connection: object) -> None:
        peer = self._handshake.pop(connection, None)
        if peer is None:
            return
        for uri in list(peer.uris):
            self._drop(peer, uri)
        peer.sender.cancel()

    # ---- 2026 era: subscriptions/listen ---------------------------------------------------

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """One listen stream: ack the honored filter, then forward matching events, coalesced,
        until the client goes away (which cancels this handler)."""
        subscription_id = ctx.request_id
        if subscription_id is None:
            raise MCPError(INVALID_REQUEST, "subscriptions/listen requires a request id")
        if self._listen_streams >= MAX_LISTEN_STREAMS:
            raise MCPError(INTERNAL_ERROR, f"too many open subscriptions (limit {MAX_LISTEN_STREAMS}); close one first")
        honored = _honored(params.notifications)
        uris = frozenset(honored.resource_subscriptions or ())
        if len(uris) > MAX_URIS_PER_LISTEN:
            raise MCPError(
                INVALID_PARAMS,
                f"{len(uris)} resource subscriptions in one stream; at most {MAX_URIS_PER_LISTEN}: "
                "split them over several subscriptions/listen streams",
            )
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        pending: dict[ServerEvent, None] = {}
        wake = anyio.Event()

        def deliver(event: ServerEvent) -> None:
            nonlocal wake
            if event_matches(honored, uris, event):
                pending[event] = None
                wake.set()

        unsubscribe = self._bus.subscribe(deliver)
        self._listen_streams += 1
        acquired: list[str] = []
        try:
            for uri in uris:
                acquired.append(uri)
                await self._acquire(uri)
            await ctx.session.send_notification(
                SubscriptionsAcknowledgedNotification(
                    params=SubscriptionsAcknowledgedNotificationParams(notifications=honored, _meta=meta)
                ),
                related_request_id=subscription_id,
            )
            while not self._closed:
                await wake.wait()
                wake = anyio.Event()
                while pending:
                    event = next(iter(pending))
                    del pending[event]
                    await ctx.session.send_notification(
                        event_to_notification(event, meta), related_request_id=subscription_id
                    )
        finally:
            unsubscribe()
            self._listen_streams -= 1
            for uri in acquired:
                self._release(uri)
        return SubscriptionsListenResult(_meta=meta)


async def _send_handshake(session: ServerSession, event: ServerEvent) -> None:
    if isinstance(event, ResourceUpdated):
        await session.send_resource_updated(event.uri)
    elif isinstance(event, ResourcesListChanged):
        await session.send_resource_list_changed()


def _honored(requested: SubscriptionFilter) -> SubscriptionFilter:
    """What the stream will deliver, echoed in the ack (falsy flags dropped, as the SDK does)."""
    return SubscriptionFilter(
        tools_list_changed=True if requested.tools_list_changed else None,
        prompts_list_changed=True if requested.prompts_list_changed else None,
        resources_list_changed=True if requested.resources_list_changed else None,
        resource_subscriptions=list(requested.resource_subscriptions) if requested.resource_subscriptions else None,
    )
