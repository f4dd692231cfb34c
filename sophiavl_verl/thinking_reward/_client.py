"""The client: admission (concurrency cap, circuit breaker), retries under three budgets (``max_retries``, the
call's ``deadline_s``, the breaker), and what each item cost."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import random
import re
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sophiavl_verl.config import SophiaVLRewardConfig, parse_trm_base_url
from sophiavl_verl.thinking_reward._breaker import CircuitBreaker
from sophiavl_verl.thinking_reward._failures import AttemptError, BadInput, TRMFailure
from sophiavl_verl.thinking_reward._images import IMAGE_CACHE_BYTES, ImageCache, url_part
from sophiavl_verl.thinking_reward._items import ThinkingRewardItem, TRMResult, check_item
from sophiavl_verl.thinking_reward._prompt import TRM_SYSTEM_PROMPT, build_reference_trm_prompt, build_trm_prompt
from sophiavl_verl.thinking_reward._replies import error_of, stated_score
from sophiavl_verl.thinking_reward._stats import TRMStats
from sophiavl_verl.thinking_reward._transport import (
    Pool,
    RequestTrace,
    Secret,
    close_orphaned_pools,
    once_more_if_stale,
    orphan,
    run_from_outside,
)

logger = logging.getLogger(__package__)

# Malformed replies (empty body, invalid JSON, no choices) point at a transport or proxy glitch: retried once.
_BAD_RESPONSE_RETRIES = 1
# verl's router answers its bodiless 500 for a request the upstream refused (4xx) and for an upstream fault
# alike: a second one for the same request, while the TRM answers other requests, means the upstream refuses it.
_ROUTER_500_RETRIES = 1
# One failure warning per this many seconds and client (verl's reward loop makes one call per response).
_WARN_EVERY_S = 30.0
# Image parts are spliced into request bodies in place of these strings (never seen by the policy).
_IMAGE_TOKEN = "sophiavl-image-" + secrets.token_hex(8)
_IMAGE_TOKEN_RE = re.compile(b'"' + _IMAGE_TOKEN.encode() + rb'-(\d+)"')

#: Each thread's event loop for :meth:`ThinkingRewardClient.score_sync`.
_THREAD_LOOP = threading.local()


class _LoopState:
    """What a client keeps per event loop: the concurrency cap, the connection pool and the circuit breaker."""

    def __init__(self, client: ThinkingRewardClient, loop: asyncio.AbstractEventLoop) -> None:
        options = client.options
        self.loop = loop
        self.semaphore = asyncio.Semaphore(options.max_concurrency)
        self.breaker = CircuitBreaker(options.breaker_failures, options.breaker_cooldown_s)
        # one connection more than the cap: the breaker's probe
        self.pool = Pool(loop, options.max_concurrency + 1, client._api_key, options.max_reply_bytes)
        self.probe: asyncio.Task | None = None
        self.last_success = -math.inf  # loop time of the latest 200 reply
        self.model_listed: bool | None = None  # whether GET /models lists the model (None: not known)
        self.models_check: asyncio.Task | None = None
        self.models_checked_at = -math.inf

    async def close(self) -> None:
        """Close the pool (on its loop)."""
        for task in (self.probe, self.models_check):
            if task is not None:
                task.cancel()
        await self.pool.close()

    def close_from_outside(self) -> None:
        """Close the pool from outside its loop."""
        if self.pool.is_open:
            run_from_outside(self.loop, self.close)


def _orphan_pools(states: dict) -> None:
    """``weakref.finalize`` callback of a client: its open pools are closed on their loops' next use."""
    orphan(state.pool for state in list(states.values()))


class ThinkingRewardClient:
    """Async client that scores responses with a thinking reward model behind an OpenAI chat API.

    Each item is one ``POST {base_url}/chat/completions`` request with a system message and a user message
    whose content is the item's images (base64 ``data:`` URLs) followed by the Table-4 prompt, sent with
    temperature 0 and ``max_tokens`` tokens (the ``paper`` layout; ``trm_prompt="reference"``: the authors'
    text, then the first image, temperature 0 only).

    Transport: one connection pool per client and event loop, with keep-alive, shared by every :meth:`score`
    call on that loop (verl's reward loop calls it once per response) and closed when the loop shuts down
    (``asyncio.run``), on :meth:`aclose` / :meth:`close`, or at interpreter exit. At most ``max_concurrency``
    items are in flight per loop, on at most as many connections (plus one for the breaker's probe); an item
    keeps its slot while it backs off, so a struggling server is not flooded by retries.

    Images are prepared once per process while their group is scored: a cache keyed by content (not identity)
    keeps the request parts of recent images within ``image_cache_bytes``. Encoded bytes (and files) are sent
    as they are; PIL images are encoded as PNG; with ``max_image_pixels`` larger images are downscaled first.
    Hashing and encoding run in worker threads, never on the event loop.

    A failed item scores NaN, never 0; its kind (:class:`~sophiavl_verl.thinking_reward.TRMFailure`, which says
    which kinds are retried) is counted in ``stats.failures``, every failed attempt in ``stats.errors``.

    Args:
        base_url: OpenAI-style base URL, e.g. ``http://host:8000/v1``, checked and normalised by
            :func:`sophiavl_verl.config.parse_trm_base_url` (the option's own rules: one with credentials,
            ``user:password@``, is refused without echoing it).
        model: The model name to put in requests (vLLM's ``--served-model-name``).
        options: The reward manager's options (:class:`~sophiavl_verl.config.SophiaVLRewardConfig`, validated
            there): ``trm_prompt``, ``max_concurrency``, ``timeout_s``, ``max_retries``, ``deadline_s``,
            ``breaker_failures``, ``breaker_cooldown_s``, ``clip_scores``, ``max_image_pixels``,
            ``max_reply_bytes`` and ``trm_api_key_env``; None: their defaults.
        api_key: Sent as ``Authorization: Bearer``; defaults to the environment variable ``trm_api_key_env``
            names. Never logged or shown in reprs and errors.
        image_cache_bytes: Budget of the image cache.
        max_tokens: ``max_tokens`` of the request (the reply is ``<answer>x</answer>``).
        backoff_base_s: First backoff; doubles each retry.
        backoff_max_s: Cap of one backoff (not of ``Retry-After``, which only the deadline limits).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        options: SophiaVLRewardConfig | None = None,
        *,
        api_key: str | None = None,
        image_cache_bytes: int = IMAGE_CACHE_BYTES,
        max_tokens: int = 32,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        self.options = SophiaVLRewardConfig() if options is None else options
        self.base_url = parse_trm_base_url(base_url, "base_url")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.image_cache_bytes = int(image_cache_bytes)
        self.max_tokens = int(max_tokens)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        if api_key is None:
            api_key = os.environ.get(self.options.trm_api_key_env) or None
        self._api_key = Secret(api_key)
        self.stats = TRMStats()
        self._init_runtime()

    def _init_runtime(self) -> None:
        """The parts bound to this process: per-loop pools and caps, the image cache, the warning clock."""
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._loops_lock = threading.Lock()
        self._images = ImageCache(self.image_cache_bytes)
        self._unwarned: Counter = Counter()
        self._warned_at = -math.inf
        finalizer = weakref.finalize(self, _orphan_pools, self._loops)
        finalizer.atexit = False  # at exit, the transport closes every pool

    def __repr__(self) -> str:
        key = "'***'" if self._api_key.value else "None"
        options = self.options
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, "
            f"max_concurrency={options.max_concurrency}, timeout_s={options.timeout_s}, "
            f"max_retries={options.max_retries}, deadline_s={options.deadline_s})"
        )

    def __getstate__(self) -> dict:
        runtime = ("_loops", "_loops_lock", "_images", "_unwarned", "_warned_at")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}  # rebuilt where the copy runs

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _redact(self, text: str) -> str:
        key = self._api_key.value
        return text.replace(key, "***") if key else text

    # ------------------------------------------------------------------ public

    async def score(self, items: Sequence[ThinkingRewardItem]) -> list[float]:
        """Score items concurrently.

        Args:
            items: The responses to score.

        Returns:
            One score in [0, 1] per item, in order; NaN for an item that failed.
        """
        return [result.score for result in await self.score_results(items)]

    async def score_results(self, items: Sequence[ThinkingRewardItem]) -> list[TRMResult]:
        """Score items concurrently, with each item's failure kind and cost.

        Args:
            items: The responses to score.

        Returns:
            One :class:`TRMResult` per item, in order. The call returns within ``deadline_s``.
        """
        items = list(items)
        if not items:
            return []
        self.stats.items += len(items)
        loop = asyncio.get_running_loop()
        await close_orphaned_pools(loop)
        state = self._state(loop)
        deadline = loop.time() + self.options.deadline_s
        results = await asyncio.gather(*(self._score_item(state, item, deadline) for item in items))
        self._warn_failures(results)
        return results

    def score_sync(self, items: Sequence[ThinkingRewardItem]) -> list[float]:
        """Blocking :meth:`score`, on this thread's own event loop (kept, so its connection pool is reused).

        Raises:
            RuntimeError: When called from inside a running event loop (``await score(...)`` there).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("score_sync() called inside a running event loop; use `await client.score(...)`")
        loop = getattr(_THREAD_LOOP, "loop", None)
        if loop is None or loop.is_closed():
            loop = _THREAD_LOOP.loop = asyncio.new_event_loop()
        return loop.run_until_complete(self.score(items))

    async def aclose(self) -> None:
        """Close the connection pool of the running event loop (a later call opens a new one)."""
        state = self._loops.get(asyncio.get_running_loop())
        if state is not None:
            await state.close()

    def close(self) -> None:
        """Close the connection pools of every event loop this client used.

        Call it outside those loops (inside one, ``await client.aclose()``); a loop running in another thread
        closes its pool there.
        """
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for state in list(self._loops.values()):
            if state.loop is current:
                raise RuntimeError("close() called inside the client's running event loop; use `await client.aclose()`")
            state.close_from_outside()

    async def served_models(self) -> tuple[int, list[str] | None]:
        """``GET {base_url}/models`` through this client's pool of the running loop, as scoring requests go:
        its timeout (within ``deadline_s``), reply size cap and redirect policy, and its API key.

        Returns:
            The reply's HTTP status, and the model ids it lists (None unless it is a 200 with a model list).

        Raises:
            TRMRequestError: When no whole reply came (``timeout``, ``connection``, or ``bad_response``: a
                redirect loop, a reply over ``max_reply_bytes``).
        """
        return await self._get_models(self._state(asyncio.get_running_loop()))

    # ----------------------------------------------------------------- internals

    def _state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        state = self._loops.get(loop)
        if state is None:
            with self._loops_lock:
                for old in [old for old in self._loops if old.is_closed()]:  # asyncio.run's loops, done
                    del self._loops[old]
                state = self._loops.setdefault(loop, _LoopState(self, loop))
        return state

    async def _score_item(self, state: _LoopState, item: Any, deadline: float) -> TRMResult:
        result = TRMResult()
        try:
            async with asyncio.timeout_at(deadline):
                result.score = await self._run_item(state, item, result, deadline)
        except AttemptError as err:
            self._fail(result, err.kind, str(err))
        except BadInput as exc:
            self._fail(result, TRMFailure.BAD_INPUT.value, f"{exc}")
        except TimeoutError:
            self._fail(result, TRMFailure.DEADLINE.value,
                       f"the call's deadline of {self.options.deadline_s:g} s passed")
        else:
            self.stats.scored += 1
        return result

    def _admit(self, state: _LoopState) -> None:
        """Raise when nothing may be sent now: the breaker is open, or the server does not list the model."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if state.breaker.is_open:
            if state.breaker.probe_due(now):
                state.breaker.probing = True
                state.probe = loop.create_task(self._probe(state))
            raise AttemptError(TRMFailure.CIRCUIT_OPEN, "the circuit breaker is open", retryable=False)
        if state.model_listed is False and now - state.models_checked_at < self.options.breaker_cooldown_s:
            raise AttemptError(TRMFailure.UNKNOWN_MODEL, f"the server does not list model {self.model!r}",
                               retryable=False)

    async def _run_item(self, state: _LoopState, item: Any, result: TRMResult, deadline: float) -> float:
        """Send one item, retrying as its failures allow; returns its score or raises ``AttemptError``."""
        loop = asyncio.get_running_loop()
        options = self.options
        check_item(item)
        self._admit(state)
        async with state.semaphore:
            self._admit(state)
            body = await self._body(item, result)
            started = loop.time()
            attempt = bad_responses = router_500s = 0
            while True:
                remaining = max(1e-3, deadline - loop.time())
                try:
                    value = await self._attempt(state, body, min(options.timeout_s, remaining), attempt, result)
                except AttemptError as exc:
                    err = exc
                    if exc.kind == TRMFailure.TIMEOUT.value and remaining < options.timeout_s:  # cut by the deadline
                        err = AttemptError(TRMFailure.DEADLINE, f"{exc} (the call's deadline)", retryable=False,
                                           alive=False)
                else:
                    state.breaker.record(True, loop.time())
                    return value
                self.stats.errors[err.kind] += 1
                logger.debug("thinking reward request failed (attempt %d): %s", attempt + 1, self._redact(str(err)))
                if err.kind == TRMFailure.STALE_CONNECTION.value:
                    continue  # a pooled connection the server had closed: a fresh one at once, no retry spent
                if state.breaker.record(err.alive, loop.time()):
                    logger.warning(
                        "thinking reward model: %d consecutive failed requests (last: %s); failing fast for %g s",
                        state.breaker.consecutive, err.kind, options.breaker_cooldown_s,
                    )
                if err.kind == TRMFailure.ROUTER_500.value:
                    router_500s += 1
                    if router_500s > _ROUTER_500_RETRIES and state.last_success > started:
                        raise AttemptError(TRMFailure.UPSTREAM_REJECTED, "verl's router answered 500 again while "
                                           "the TRM answered other requests", retryable=False)
                    if state.last_success == -math.inf and not await self._model_listed(state):
                        raise AttemptError(TRMFailure.UNKNOWN_MODEL, f"the server does not list model {self.model!r}",
                                           retryable=False)
                bad_responses += err.kind == TRMFailure.BAD_RESPONSE.value
                if not (err.retryable and attempt < options.max_retries and bad_responses <= _BAD_RESPONSE_RETRIES):
                    raise err
                delay = self._backoff(attempt, err.retry_after)
                if loop.time() + delay >= deadline:
                    raise AttemptError(TRMFailure(err.kind), f"{err} (a retry in {delay:.3g} s would pass the "
                                       "deadline)", retryable=False)
                await asyncio.sleep(delay)
                if state.breaker.is_open:
                    raise err  # the item ends with its own last error; items not yet sent get circuit_open
                attempt += 1

    async def _body(self, item: ThinkingRewardItem, result: TRMResult) -> bytes:
        """The request body: the payload's JSON with each image's prepared part spliced in."""
        parts = [await self._image_part(image, result) for image in self._sent_images(item)]
        text = json.dumps(self._payload(item, [f"{_IMAGE_TOKEN}-{i}" for i in range(len(parts))]))
        return _IMAGE_TOKEN_RE.sub(lambda match: parts[int(match.group(1))], text.encode())

    async def _image_part(self, image: Any, result: TRMResult) -> bytes:
        url = url_part(image)
        if url is not None:
            return url
        prepared, prepared_here = await asyncio.to_thread(self._images.prepared, image, self.options.max_image_pixels)
        if isinstance(prepared, concurrent.futures.Future):  # another response of the group is preparing it
            prepared = await asyncio.wrap_future(prepared)
        if prepared_here:
            self.stats.images_prepared += 1
            self.stats.image_encodes += prepared.reencoded
            self.stats.images_downscaled += prepared.downscaled
            result.image_encodes += prepared.reencoded
        else:
            self.stats.image_cache_hits += 1
        return prepared.url_json

    def _sent_images(self, item: ThinkingRewardItem) -> tuple:
        """The images the request carries: all of them, or the first only (``reference``)."""
        images = tuple(item.images)
        return images[:1] if self.options.trm_prompt == "reference" else images

    def _payload(self, item: ThinkingRewardItem, image_urls: list[str]) -> dict:
        """The JSON body of one item's request, in the client's ``prompt`` layout."""
        images = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
        if self.options.trm_prompt == "reference":
            text = build_reference_trm_prompt(item.question, item.response, has_image=bool(image_urls))
            content = [{"type": "text", "text": text}, *images]
            limits: dict = {}
        else:
            content = [*images, {"type": "text", "text": build_trm_prompt(item.question, item.response)}]
            limits = {"max_tokens": self.max_tokens}
        messages = [{"role": "system", "content": TRM_SYSTEM_PROMPT}, {"role": "user", "content": content}]
        return {"model": self.model, "messages": messages, "temperature": 0.0, **limits}

    def _fail(self, result: TRMResult, kind: str, detail: str) -> None:
        result.score, result.failure = math.nan, kind
        self.stats.failed += 1
        self.stats.failures[kind] += 1
        logger.debug("thinking reward item failed: %s", self._redact(detail))

    def _warn_failures(self, results: list[TRMResult]) -> None:
        self._unwarned.update(result.failure for result in results if result.failure is not None)
        now = time.monotonic()
        if not self._unwarned or now - self._warned_at < _WARN_EVERY_S:
            return
        logger.warning(
            "thinking reward model: %d items failed since the last warning (%s); they score NaN",
            sum(self._unwarned.values()),
            ", ".join(f"{k}: {n}" for k, n in sorted(self._unwarned.items())),
        )
        self._unwarned.clear()
        self._warned_at = now

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        delay = cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": desynchronises retries, keeps a floor
        return delay if retry_after is None else max(delay, retry_after)

    async def _attempt(self, state: _LoopState, body: bytes, timeout_s: float, attempt: int,
                       result: TRMResult) -> float:
        """One HTTP request; returns the score or raises :class:`AttemptError`."""
        self.stats.requests += 1
        self.stats.bytes_sent += len(body)
        result.requests += 1
        result.bytes_sent += len(body)
        if attempt:
            self.stats.retries += 1
        start = time.monotonic()
        trace = RequestTrace()
        try:
            status, raw, retry_after = await state.pool.request("POST", self.url, timeout_s, trace, data=body)
        finally:
            self.stats.connections += trace.connections
            result.connections += trace.connections
        latency = time.monotonic() - start

        if status != 200:
            raise error_of(status, raw, retry_after)
        state.last_success = asyncio.get_running_loop().time()
        value, content = stated_score(raw)
        self.stats.latencies_s.append(latency)
        if not 0.0 <= value <= 1.0:
            if not self.options.clip_scores:
                raise AttemptError(TRMFailure.OUT_OF_RANGE, f"score {value:g} outside [0, 1] in {content[:200]!r}",
                                   retryable=False)
            self.stats.clipped += 1
            value = min(1.0, max(0.0, value))
        return value

    async def _model_listed(self, state: _LoopState) -> bool:
        """Whether ``GET {base_url}/models`` lists the model (True when the server does not say).

        One check at a time per loop; its answer holds for ``breaker_cooldown_s``.
        """
        loop = asyncio.get_running_loop()
        if state.models_check is None or (
            state.models_check.done() and loop.time() - state.models_checked_at >= self.options.breaker_cooldown_s
        ):
            state.models_checked_at = loop.time()
            state.models_check = loop.create_task(self._list_models(state))
        ids = await asyncio.shield(state.models_check)
        state.model_listed = None if ids is None else self.model in ids
        return state.model_listed is not False

    async def _list_models(self, state: _LoopState) -> set | None:
        try:
            _, ids = await self._get_models(state)
        except AttemptError:
            return None
        return None if ids is None else set(ids)

    async def _get_models(self, state: _LoopState) -> tuple[int, list[str] | None]:
        return await state.pool.get_models(self.base_url, min(self.options.timeout_s, self.options.deadline_s))

    async def _probe(self, state: _LoopState) -> None:
        """The open breaker's probe: one small chat request; any reply but a 5xx closes the breaker."""
        self.stats.probes += 1
        payload = {"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1,
                   "temperature": 0.0}
        body = json.dumps(payload).encode()
        try:
            status, _, _ = await once_more_if_stale(
                lambda: state.pool.request("POST", self.url, self.options.timeout_s, RequestTrace(),
                                           data=body))
            alive = status < 500
        except AttemptError as exc:
            alive = exc.alive
        now = asyncio.get_running_loop().time()
        state.breaker.probing = False
        if alive:
            state.breaker.record(True, now)
            logger.warning("thinking reward model answers again; the circuit breaker is closed")
        elif state.breaker.is_open:
            state.breaker.opened_at = now  # another cool-down before the next probe
