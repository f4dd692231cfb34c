"""HTTP for the client: one connection pool per client and event loop (:class:`Pool`), its lifetime, and the one
way every request goes.

:class:`Pool` is the only place that knows the HTTP library (aiohttp): it sends a request and reads its reply
(``request``, ``get_models``) and closes itself. Another library fits behind the same methods.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

import aiohttp

from sophiavl_verl.thinking_reward._failures import AttemptError, TRMFailure

logger = logging.getLogger(__package__)

# Replies are read in chunks of this many bytes (after decompression), so that the size cap bounds memory.
_READ_CHUNK = 2**16
# Idle pooled connections are kept this long. A server that closes them sooner (uvicorn, i.e. vLLM and verl's
# router, after 5 s) is fine: the pool drops connections the server closed, and a request that races such a close
# is sent again at once on another connection (``stale_connection``).
_KEEPALIVE_S = 60.0


class Secret:
    """Holds the API key; shows as ``***`` in reprs, ``vars()`` dumps and f-strings."""

    __slots__ = ("value",)

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


class Reply(NamedTuple):
    """A whole reply: its status, its body (at most the pool's ``max_reply_bytes``) and ``Retry-After`` in seconds
    (None when absent)."""

    status: int
    body: bytes
    retry_after: float | None


class RequestTrace:
    """What one request cost in connections: how many it opened, and whether it reused a pooled one."""

    __slots__ = ("connections", "reused")

    def __init__(self) -> None:
        self.connections = 0
        self.reused = False


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (only the delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def model_ids(raw: bytes) -> list[str] | None:
    """The model ids of an OpenAI ``/models`` reply; None when it is not one."""
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    entries = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(entries, list):
        return None
    return [entry["id"] for entry in entries if isinstance(entry, dict) and isinstance(entry.get("id"), str)]


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body of ``response`` as decompressed, read in chunks; past ``max_bytes`` reading stops, the connection is
    closed and :class:`AttemptError` (``bad_response``, not retried: the same request gets the same reply)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            response.close()
            raise AttemptError(TRMFailure.BAD_RESPONSE, f"a reply over max_reply_bytes ({max_bytes} bytes)",
                               retryable=False)
    return bytes(body)


# aiohttp tracing callbacks. Module functions, not methods: a pool must not keep its client alive, so that a
# client dropped with its pool open is collected and its pool closed (see orphan).
async def _on_connection_created(session: Any, context: Any, params: Any) -> None:
    if isinstance(context.trace_request_ctx, RequestTrace):
        context.trace_request_ctx.connections += 1


async def _on_connection_reused(session: Any, context: Any, params: Any) -> None:
    if isinstance(context.trace_request_ctx, RequestTrace):
        context.trace_request_ctx.reused = True


#: Pools with an open session. Held strongly, so that a pool is closed, never collected open (aiohttp logs an
#: error for a collected open session): by its loop's shutdown, ``aclose``/``close``, or at interpreter exit.
_OPEN_POOLS: set[Pool] = set()
#: Open pools of clients that were garbage-collected; closed when their loop next runs a client call.
_ORPHANED_POOLS: list[Pool] = []


class Pool:
    """The connection pool of one client on one event loop, with keep-alive; opened by its first request.

    Args:
        loop: The event loop it belongs to.
        max_connections: Connections open at once.
        api_key: Sent as ``Authorization: Bearer`` when it holds a key.
        max_reply_bytes: Largest reply read, in bytes after decompression.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_connections: int, api_key: Secret,
                 max_reply_bytes: int) -> None:
        self.loop = loop
        self.max_connections = max_connections
        self.max_reply_bytes = max_reply_bytes
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._lifetime: Any = None  # the async generator that closes the session (see _lifetime_of)

    @property
    def is_open(self) -> bool:
        return self._lifetime is not None

    async def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(_on_connection_created)
            trace.on_connection_reuseconn.append(_on_connection_reused)
            headers = {"Content-Type": "application/json"}
            if self._api_key.value:
                headers["Authorization"] = f"Bearer {self._api_key.value}"
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=_KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, headers=headers, trace_configs=[trace])
            self._lifetime = _lifetime_of(self)
            await self._lifetime.__anext__()  # registers it with the loop, which closes it at shutdown
        return self._session

    async def request(self, method: str, url: str, timeout_s: float, trace: RequestTrace,
                      data: bytes | None = None) -> Reply:
        """One HTTP request, the one way every request goes: ``timeout_s`` for all of it, the reply read up to
        ``max_reply_bytes`` after decompression, and aiohttp's redirects (at most 10; the ``Authorization``
        header is dropped when one leads to another host, port or scheme).

        Raises:
            AttemptError: ``timeout``, ``connection`` / ``stale_connection`` (a pooled connection the server had
                closed), or ``bad_response`` (not retried) for a redirect loop or a reply over the cap.
        """
        session = await self._open_session()
        try:
            async with session.request(method, url, data=data, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                       trace_request_ctx=trace) as resp:
                if resp.status >= 500 and resp.connection is not None:
                    # uvicorn (verl's router) drops the connection after an error: keep it out of the pool, which
                    # aiohttp returns it to as soon as the body is read
                    resp.connection.protocol.force_close()
                raw = await _read_capped(resp, self.max_reply_bytes)
                return Reply(resp.status, raw, retry_after_s(resp.headers.get("Retry-After")))
        except asyncio.TimeoutError:
            raise AttemptError(TRMFailure.TIMEOUT, f"no reply within {timeout_s:.3g}s", retryable=True,
                               alive=False) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            kind = TRMFailure.STALE_CONNECTION if trace.reused else TRMFailure.CONNECTION
            raise AttemptError(kind, f"{type(exc).__name__}: {exc}", retryable=True, alive=False) from None
        except aiohttp.TooManyRedirects:  # permanent: the same request loops again
            raise AttemptError(TRMFailure.BAD_RESPONSE, "a redirect loop", retryable=False) from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages name host and port, never the request headers.
            raise AttemptError(TRMFailure.CONNECTION, f"{type(exc).__name__}: {exc}", retryable=True,
                               alive=False) from None

    async def get_models(self, base_url: str, timeout_s: float) -> tuple[int, list[str] | None]:
        """``GET {base_url}/models``: its status, and the model ids it lists (None unless a 200 with a model list).

        Raises:
            AttemptError: As :meth:`request`.
        """
        status, raw, _ = await once_more_if_stale(
            lambda: self.request("GET", f"{base_url}/models", timeout_s, RequestTrace()))
        return status, model_ids(raw) if status == 200 else None

    async def close(self) -> None:
        """Close the pool (on its loop); a later request opens it again."""
        lifetime, self._lifetime = self._lifetime, None
        if lifetime is not None:
            await lifetime.aclose()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _lifetime_of(pool: Pool):
    """Closes ``pool``'s session when this generator is closed: by :meth:`Pool.close`, or by the loop's shutdown
    (``asyncio.run`` closes every async generator still open), so a pool never outlives its loop."""
    _OPEN_POOLS.add(pool)
    try:
        yield
    finally:
        _OPEN_POOLS.discard(pool)
        await pool._close_session()


async def once_more_if_stale(request: Callable[[], Awaitable[Reply]]) -> Reply:
    """``await request()``, once more when the pooled connection it got had been closed by the server."""
    try:
        return await request()
    except AttemptError as exc:
        if exc.kind != TRMFailure.STALE_CONNECTION.value:
            raise
        return await request()


def run_from_outside(loop: asyncio.AbstractEventLoop, close: Callable[[], Awaitable[None]]) -> None:
    """Run ``close()`` on ``loop`` from outside it: run the loop if it is idle, else hand it the work."""
    if loop.is_closed():
        return
    if loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)
        except concurrent.futures.TimeoutError:
            logger.debug("thinking reward client: the pool of a busy event loop was not closed within 5 s")
    else:
        loop.run_until_complete(close())


def orphan(pools: Iterable[Pool]) -> None:
    """The open ``pools`` of a garbage-collected client: closed on their loops' next use."""
    _ORPHANED_POOLS.extend(pool for pool in pools if pool.is_open)


async def close_orphaned_pools(loop: asyncio.AbstractEventLoop) -> None:
    """Close the orphaned pools of ``loop`` (the running one)."""
    if not _ORPHANED_POOLS:
        return
    # Taken off the list before the first await: concurrent calls on this loop must not close a pool twice.
    mine = [pool for pool in _ORPHANED_POOLS if pool.loop is loop]
    _ORPHANED_POOLS[:] = [pool for pool in _ORPHANED_POOLS if pool.loop is not loop]
    for pool in mine:
        await pool.close()


@atexit.register
def _close_open_pools() -> None:
    """Close the pools still open when the interpreter exits (a reward worker ends)."""
    for pool in list(_OPEN_POOLS):
        try:
            run_from_outside(pool.loop, pool.close)
        except Exception as exc:  # exiting: a pool that cannot be closed cleanly is closed by the OS
            logger.debug("thinking reward client: closing a pool at exit failed: %r", exc)
