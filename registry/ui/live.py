"""Live updates: one ``LISTEN gg_incident`` connection per app process, fanned out to every browser stream.

Migration ``0008_live`` makes PostgreSQL send ``NOTIFY gg_incident, '<incident id>'`` whenever something
an incident shows changes (its row, timeline, valve commands, notifications, its household's devices).
`LiveHub` holds the one listening connection (opened when the first browser subscribes, re-opened with
backoff when it is lost) and copies each id to every subscriber's queue. ``GET /ui/api/events`` is the
browsers' Server-Sent Events stream (FastAPI's `EventSourceResponse`, which also sends keep-alive
comments): an ``incident`` event carries an id, and the browser re-reads that incident through the
scoped board API — so a stream never carries data its user may not see.

Reconnects: every event has an id ``<hub>-<seq>``. A browser reconnecting with ``Last-Event-ID`` gets
what it missed from a short in-memory backlog; when that is not possible (another process, too old, the
LISTEN connection was lost in between, a subscriber fell behind) it gets a ``resync`` event and reloads
the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from registry.auth import Role, User, current_user
from registry.deps import CONNECT_ERRORS, PoolDep, get_state

_LOGGER = logging.getLogger(__name__)

CHANNEL = "gg_incident"
#: How the listening connection shows in ``pg_stat_activity``.
APPLICATION_NAME = "gasguard-registry-live"
#: How many recent notifications a reconnecting browser can catch up on.
BACKLOG = 2000
#: Per-stream queue; a stream that falls this far behind is told to resync instead.
QUEUE_SIZE = 1000
#: Browser reconnection delay after a dropped stream (EventSource ``retry``), in milliseconds.
RETRY_MS = 2000
#: How often an open stream re-checks that its session is still valid.
SESSION_CHECK_S = 60.0

#: Failures of a check against the database that leave a session's validity unknown.
_UNSURE: tuple[type[Exception], ...] = (*CONNECT_ERRORS, TimeoutError)

#: Roles that watch the alarm board.
BOARD_ROLES = (Role.ADMIN, Role.DUTY_OPERATOR, Role.EMERGENCY_MANAGEMENT, Role.COMMUNITY_STAFF)


@dataclass(frozen=True, slots=True)
class Message:
    """What a subscriber receives: an incident id to re-read, or None meaning "reload everything"."""

    seq: int
    incident_id: int | None


class LiveHub:
    """Fans ``NOTIFY gg_incident`` out to subscribers, over a single LISTEN connection."""

    def __init__(self, dsn: str, *, backlog: int = BACKLOG) -> None:
        self._dsn = dsn
        self.boot = secrets.token_hex(4)
        self._seq = 0
        self._recent: deque[Message] = deque(maxlen=backlog)
        self._subscribers: set[asyncio.Queue[Message]] = set()
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def event_id(self, seq: int) -> str:
        """The SSE id of message ``seq`` of this hub."""
        return f"{self.boot}-{seq}"

    def _publish(self, incident_id: int | None) -> None:
        self._seq += 1
        message = Message(self._seq, incident_id)
        if incident_id is not None:
            self._recent.append(message)
        else:
            self._recent.clear()  # nothing before a resync can be replayed
        for queue in self._subscribers:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A stream this far behind reloads instead; dropping the queue's content keeps memory bounded.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(Message(self._seq, None))

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            incident_id = int(str(payload))
        except ValueError:
            _LOGGER.warning("ignoring %s notification with payload %r", CHANNEL, payload)
            return
        self._publish(incident_id)

    async def _listen_loop(self) -> None:
        attempt = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
                )
            except CONNECT_ERRORS as err:
                attempt += 1
                delay = random.uniform(0.5, min(30.0, 1.5**attempt))
                _LOGGER.warning("live updates: cannot LISTEN (%r); retrying in %.1f s", err, delay)
                await asyncio.sleep(delay)
                continue
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                if attempt:
                    _LOGGER.info("live updates: listening again")
                    self._publish(None)  # notifications may have been missed while we were away
                attempt = 0
                self._listening.set()
                while not lost.is_set():
                    # Also probe: a silently dropped TCP connection does not always terminate at once.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 15)
                    if not lost.is_set():
                        try:
                            await conn.fetchval("SELECT 1", timeout=5)
                        except _UNSURE:
                            lost.set()
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
            attempt = 1
            _LOGGER.warning("live updates: LISTEN connection lost; reconnecting")
            self._publish(None)

    async def wait_listening(self, within_s: float) -> bool:
        """Start listening if nobody has yet; whether the LISTEN is in place within ``within_s`` seconds."""
        if self._closed:
            return False
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen_loop(), name="registry.live.listen_loop")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), within_s)
        return self._listening.is_set()

    def replay(self, last_event_id: str | None) -> list[Message] | None:
        """Messages after ``last_event_id`` if this hub still has all of them, else None."""
        if last_event_id is None:
            return []
        boot, _, seq_text = last_event_id.partition("-")
        if boot != self.boot or not seq_text.isdigit():
            return None
        last = int(seq_text)
        if last > self._seq:
            return None
        missed = [m for m in self._recent if m.seq > last]
        # Complete only if the backlog reaches back to the message right after ``last``.
        first_kept = self._recent[0].seq if self._recent else self._seq + 1
        if last + 1 < first_kept and last < self._seq:
            return None
        return missed

    @contextlib.contextmanager
    def subscription(self) -> Iterator[asyncio.Queue[Message]]:
        """A queue receiving every message from now on, for the duration of the ``with`` block."""
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def seq(self) -> int:
        """The id of the latest message."""
        return self._seq

    async def close(self) -> None:
        """Stop listening and tell the subscribers to resync (they will reconnect elsewhere)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Give the app its hub (runs inside the registry lifespan, which has opened the pool)."""
    hub = LiveHub(app.state.registry.settings.dsn())
    app.state.live = hub
    try:
        yield
    finally:
        await hub.close()
        del app.state.live


router = APIRouter(prefix="/ui/api", tags=["ui"], lifespan=_lifespan)


async def stream_user(request: Request, pool: PoolDep) -> User:
    """The caller of a stream; borrows a connection only for the check, not for the stream's lifetime."""
    state = get_state(request)
    try:
        conn = await pool.acquire(timeout=state.settings.db_timeout_s)
    except CONNECT_ERRORS as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="database unavailable") from err
    try:
        user = await current_user(request, conn)
    finally:
        await pool.release(conn)
    if user.role not in BOARD_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"role {user.role.value!r} may not watch the board")
    return user


async def _session_valid(request: Request, pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=5) as conn:
            await current_user(request, conn)
    except HTTPException:
        return False
    except _UNSURE:
        return True  # the database is away; the session is not known to be over
    return True


def _event(hub: LiveHub, message: Message) -> ServerSentEvent:
    if message.incident_id is None:
        return ServerSentEvent(event="resync", data={}, id=hub.event_id(message.seq), retry=RETRY_MS)
    return ServerSentEvent(event="incident", data={"id": message.incident_id}, id=hub.event_id(message.seq))


@router.get("/events", response_class=EventSourceResponse)
async def events(
    request: Request,
    user: Annotated[User, Depends(stream_user)],
    pool: PoolDep,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> AsyncIterable[ServerSentEvent]:
    """Live board updates: ``hello`` once listening, then ``incident`` {id} per change, ``resync`` when lost."""
    hub: LiveHub = request.app.state.live
    with hub.subscription() as queue:
        listening = await hub.wait_listening(within_s=10)
        missed = hub.replay(last_event_id)
        sent = hub.seq  # messages up to here are covered by the first event(s); skip them in the queue
        if not listening or missed is None:
            yield ServerSentEvent(event="resync", data={}, id=hub.event_id(sent), retry=RETRY_MS)
        else:
            # ``hello`` tells a first-time browser that from here on it misses nothing: load the board now.
            yield ServerSentEvent(event="hello", data={"user": user.username}, id=hub.event_id(sent), retry=RETRY_MS)
            for message in missed:
                yield _event(hub, message)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + SESSION_CHECK_S
        while True:
            timeout = max(0.0, next_check - loop.time())
            try:
                message = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                if not await _session_valid(request, pool):
                    return  # logged out or expired: the browser's reconnect will get a 401
                next_check = loop.time() + SESSION_CHECK_S
                continue
            if message.seq > sent:
                yield _event(hub, message)
