# Copyright 2025 sophiavl-verl authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Client of the thinking reward model (TRM) of SophiaVL-R1.

The TRM is a generative vision-language model served behind an OpenAI-compatible chat API (vLLM in the
reference deployment, verl's reward-model router, or ``transformers serve`` on CPU). It reads the image(s),
the question and a policy response, and answers a score in {0, 0.1, ..., 1.0} as ``<answer>x</answer>``.

What the TRM sees: the whole decoded response (``<think>...</think>`` *and* ``<answer>...</answer>``), as
the reference code sends it; the caller decides what text it passes as ``response``.

Failure semantics: an item whose request fails (after retries) scores ``NaN``, never 0, so that an outage
cannot look like bad reasoning to the algorithm. Failures are counted in :class:`TRMStats`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import random
import re
import time
import weakref
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sophiavl_verl.config import TRM_PROMPTS

logger = logging.getLogger(__name__)

__all__ = [
    "API_KEY_ENV",
    "TRM_INSTRUCTION",
    "REFERENCE_TRM_INSTRUCTION",
    "ThinkingRewardClient",
    "ThinkingRewardItem",
    "TRMStats",
    "build_reference_trm_prompt",
    "build_trm_prompt",
    "parse_score",
]

API_KEY_ENV = "SOPHIAVL_TRM_API_KEY"

# Table 4 (Appendix B) of arXiv 2505.17018, wording kept verbatim: the released TRM was trained on it.
# The table lists the inputs ({Image}, {Question}, {Model Response}) but not their layout; the
# "Question:" / "Reasoning process:" / "Your response format:" lines are the reference code's.
TRM_INSTRUCTION = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. "
    "Your goal is to judge a reward process and give a score between 0 and 1. You should focus on "
    "whether the reasoning process is good rather than whether the final answer is correct.\n"
    "Evaluation Criteria:\n"
    "1. Logical Soundness: Does each step follow logically from the previous one?\n"
    "2. Correct Reasoning: Are the methods and steps used appropriate and valid? Are the facts and "
    "lemmas correctly stated and applied?\n"
    "3. Error Identification: Are there logical flaws, unsupported assumptions, or incorrect steps?\n"
    "4. Language Consistency: Is the reasoning process conducted in a single, consistent language "
    "without mixing different languages?\n"
    "5. Redundancy: Is the reasoning concise, avoiding repetition or irrelevant steps?\n"
    "Provide a single score from {0, 0.1, 0.2, ..., 1.0} based on the reasoning quality, where:\n"
    "- 0: Completely flawed reasoning.\n"
    "- 1: Perfectly sound reasoning.\n"
    "- Intermediate: Reflect partial correctness or minor errors (e.g., 0.3 for significant flaws, "
    "0.7 for minor errors).\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score "
    "without any explanation."
)
TRM_RESPONSE_FORMAT = "Your response format: <answer>your_score</answer>"
# The reference sends this system message; Qwen2.5-VL's chat template inserts the same one by default.
TRM_SYSTEM_PROMPT = "You are a helpful assistant."


def build_trm_prompt(question: str, response: str) -> str:
    """Build the thinking-reward-model prompt (paper Table 4) for one response.

    Args:
        question: The question shown to the policy (plain text; images are sent separately).
        response: The policy's whole decoded response (reasoning and final answer).

    Returns:
        The user-message text. The images go in front of it as separate ``image_url`` parts.
    """
    # Concatenation, not str.format: questions and responses may contain braces.
    return (
        f"{TRM_INSTRUCTION}\n"
        f"Question: {question.strip()}\n"
        f"Reasoning process: {response.strip()}\n"
        f"{TRM_RESPONSE_FORMAT}"
    )


# What the authors' RL run sent instead (kxfan2002/SophiaVL-R1 at a818494, verl/workers/reward/custom.py,
# get_process_reward): a markdown variant of Table 4, with "Question:" etc. indented by their f-string.
REFERENCE_TRM_INSTRUCTION = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is "
    "to judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning "
    "process is good rather than whether the final answer is correct.### Evaluation Criteria:\n"
    "- **Logical Soundness**: Does each step follow logically from the previous one?\n"
    "- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas "
    "correctly stated and applied?\n"
    "- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?\n"
    "- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without "
    "mixing different languages?\n"
    "- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?\n"
    "Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:\n"
    " - **0**: Completely flawed reasoning\n"
    "- **1**: Perfectly sound reasoning\n"
    "- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score without any "
    "explanation."
)


def build_reference_trm_prompt(question: str, response: str, has_image: bool) -> str:
    """Build the text the authors' code sends the TRM (the ``reference`` layout) for one response.

    Args:
        question: The text shown as the question; the reference sends the policy's whole decoded prompt.
        response: The policy's whole decoded response; ``$`` is removed, as the reference does before
            scoring and asking the TRM.
        has_image: Whether an image goes with the request: ``<image> `` then precedes the question,
            unless it already contains ``<image>``.

    Returns:
        The text part of the user message (the image goes after it).
    """
    if has_image and "<image>" not in question:
        question = f"<image> {question}"
    return (
        f"{REFERENCE_TRM_INSTRUCTION}\n    Question: {question}\n    Reasoning process: {response.replace('$', '')}\n"
        f"    {TRM_RESPONSE_FORMAT}\n    "
    )


# --------------------------------------------------------------------------------------------- parsing

_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))"
# In order of preference; the first shape that matches wins (the reference tries them in order too).
_SCORE_PATTERNS = (
    re.compile(r"<answer>\s*" + _NUM + r"\s*</answer>", re.IGNORECASE),
    re.compile(r"\\box(?:ed|es)?\s*\{\s*" + _NUM + r"\s*\}"),
    re.compile(r"</think>\s*(?:<answer>)?\s*" + _NUM),
    re.compile(r"\bscore\b\s*(?:is|of|=|:)?\s*[*`\"']*\s*" + _NUM, re.IGNORECASE),
    # A bare number: the whole reply, or its first line (markdown emphasis and a final period allowed).
    re.compile(r"^\s*[*`\"']*\s*" + _NUM + r"\s*[*`\"']*\s*\.?\s*(?:\n|$)"),
)


def _parse_raw_score(text: str) -> float | None:
    """The first score found in ``text``, unclipped; None when there is none."""
    if not isinstance(text, str) or not text.strip():
        return None
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(text)
        if match:
            value = float(match.group(1))
            if math.isfinite(value):
                return value
    return None


def parse_score(text: str) -> float | None:
    """Parse the TRM's reply into a score in [0, 1].

    Accepted shapes, tried in this order: ``<answer>0.7</answer>``, ``\\boxed{0.7}`` / ``\\box{0.7}`` /
    ``\\boxes{0.7}``, a number right after ``</think>``, ``Score: 0.7``, and a bare number (the whole
    reply or its first line, e.g. ``0.7``, ``**0.7**``, ``0.7.``). Values are not snapped to the
    0.1 grid. Out-of-range values are clipped to [0, 1] as the reference does (``1.7`` -> 1.0,
    ``-0.2`` -> 0.0); :class:`ThinkingRewardClient` counts them as ``clipped``.

    Unlike the reference, a reply without any of these shapes is not scored 0 (nor is the first
    digit found anywhere in a sentence taken as the score): it is unparseable.

    Args:
        text: The assistant message content.

    Returns:
        The score in [0, 1], or None when no score can be parsed.
    """
    value = _parse_raw_score(text)
    if value is None:
        return None
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ThinkingRewardItem:
    """One response to score.

    Attributes:
        question: The question text.
        response: The whole decoded response; the TRM sees all of it (reasoning and answer).
        images: The images of the prompt, each a PIL image, encoded image bytes (PNG, JPEG, ...), a file
            path, or a ``data:``/``http(s)://`` URL string. All of them are sent, in order.
    """

    question: str
    response: str
    images: tuple = ()


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _mime_of(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def image_to_data_url(image: Any) -> str:
    """Encode one image as a ``data:`` URL (PIL images as PNG; bytes and files as they are).

    Args:
        image: A PIL image, encoded image bytes, a path, or a URL string (returned unchanged).

    Returns:
        The URL to put in an ``image_url`` content part.
    """
    if isinstance(image, str) and image.startswith(("data:", "http://", "https://")):
        return image
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif hasattr(image, "save"):  # PIL.Image.Image, without importing PIL here
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    return f"data:{_mime_of(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _image_key(image: Any) -> tuple:
    if isinstance(image, (str, Path)):
        return ("path", str(image))
    return ("obj", id(image))  # PIL images are unhashable; the items keep them alive during a call


# ---------------------------------------------------------------------------------------------- stats


#: How many request latencies a client keeps for its p50/p95.
LATENCY_WINDOW = 65536


@dataclass
class TRMStats:
    """Counters of a :class:`ThinkingRewardClient` (reset them once per training step).

    Attributes:
        items: Items asked for.
        scored: Items that got a score.
        requests: HTTP requests sent (first attempts and retries).
        retries: Requests that were retries.
        failed: Items that ended NaN.
        failures: Failed items by the kind of their last error (see ``ThinkingRewardClient``).
        errors: Failed attempts by kind (retried ones included).
        clipped: Scores outside [0, 1] that were clipped.
        latencies_s: Wall time of each successful request, in seconds (the latest ``LATENCY_WINDOW``, so a
            long-lived client in a reward worker stays bounded in memory).
    """

    items: int = 0
    scored: int = 0
    requests: int = 0
    retries: int = 0
    failed: int = 0
    failures: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    clipped: int = 0
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def reset(self) -> None:
        """Zero every counter."""
        self.__init__()

    def summary(self) -> dict[str, float]:
        """Metrics for a logger, under ``trm/``.

        Returns:
            ``trm/items``, ``trm/requests``, ``trm/retries``, ``trm/failed``, ``trm/failed_frac``,
            ``trm/failed_<kind>`` per kind, ``trm/clipped``, ``trm/latency_{mean,p50,p95,max}_s``
            (NaN when no request succeeded).
        """
        lat = sorted(self.latencies_s)
        out = {
            "trm/items": float(self.items),
            "trm/requests": float(self.requests),
            "trm/retries": float(self.retries),
            "trm/failed": float(self.failed),
            "trm/failed_frac": self.failed / self.items if self.items else 0.0,
            "trm/clipped": float(self.clipped),
            "trm/latency_mean_s": sum(lat) / len(lat) if lat else math.nan,
            "trm/latency_p50_s": _quantile(lat, 0.50),
            "trm/latency_p95_s": _quantile(lat, 0.95),
            "trm/latency_max_s": lat[-1] if lat else math.nan,
        }
        out.update({f"trm/failed_{kind}": float(n) for kind, n in sorted(self.failures.items())})
        return out


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------- client


class _AttemptError(Exception):
    """One failed attempt. ``kind`` names the failure; ``retryable`` says whether to try again."""

    def __init__(self, kind: str, detail: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


class _Secret:
    """Holds the API key; shows as ``***`` in reprs, ``vars()`` dumps and f-strings."""

    __slots__ = ("value",)

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


# Malformed replies (empty body, invalid JSON, no choices) point at a transport or proxy glitch: retried once.
_BAD_RESPONSE_RETRIES = 1


class ThinkingRewardClient:
    """Async client that scores responses with a thinking reward model behind an OpenAI chat API.

    Each item is one ``POST {base_url}/chat/completions`` request with a system message and a user message.
    With ``prompt="paper"`` its content is the item's images (base64 ``data:`` URLs) followed by the Table-4
    prompt, sent with temperature 0 and ``max_tokens`` tokens; with ``prompt="reference"`` it is
    :func:`build_reference_trm_prompt`'s text followed by the item's first image, sent with temperature 0
    only, as the authors' code does. At most ``max_concurrency`` items are in flight; an item keeps
    its slot while it backs off, so a struggling server is not flooded by retries. The cap holds across concurrent
    :meth:`score` calls on the same event loop; each call opens (and closes) its own HTTP session, so pass many
    items per call to reuse connections.

    Failures, by ``kind`` (the keys of ``stats.failures`` and ``stats.errors``):

    * ``timeout``, ``connection``, ``http_5xx``, ``http_429`` (and ``http_408``): retried with exponential
      backoff and jitter (``Retry-After`` honoured), at most ``max_retries`` times and within the item's
      deadline.
    * ``http_4xx`` (any other 4xx: bad request, auth, unknown model): not retried.
    * ``bad_response`` (empty body, invalid JSON, no choices or no message content): retried once.
    * ``unparseable`` (a well-formed completion with no score in it): not retried, since the same prompt at
      temperature 0 gives the same text.
    * ``deadline``: the item's ``total_deadline_s`` ran out while retrying.
    * ``bad_input``: an image could not be read or encoded (nothing is sent).

    A failed item scores NaN; it is never turned into 0 here.

    Args:
        base_url: OpenAI-style base URL, e.g. ``http://host:8000/v1``.
        model: The model name to put in requests (vLLM's ``--served-model-name``).
        api_key: Sent as ``Authorization: Bearer``; defaults to the ``SOPHIAVL_TRM_API_KEY`` env var.
            Never logged or shown in reprs and errors.
        max_concurrency: Items in flight at once.
        timeout_s: Limit for one HTTP request.
        max_retries: Retries after the first attempt of an item.
        total_deadline_s: Limit for one item, retries and backoff included, counted from its first attempt
            (time queued for a concurrency slot does not count). None: bounded only by
            ``(max_retries + 1) * timeout_s`` plus backoff.
        max_tokens: ``max_tokens`` of the request (the reply is ``<answer>x</answer>``); not sent in the
            ``reference`` layout.
        backoff_base_s: First backoff; doubles each retry.
        backoff_max_s: Cap of one backoff.
        prompt: The request layout, one of ``sophiavl_verl.config.TRM_PROMPTS`` (``paper``, ``reference``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        total_deadline_s: float | None = None,
        max_tokens: int = 32,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        prompt: str = "paper",
    ) -> None:
        if prompt not in TRM_PROMPTS:
            raise ValueError(f"prompt must be one of {TRM_PROMPTS}, got {prompt!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if total_deadline_s is not None and total_deadline_s <= 0:
            raise ValueError(f"total_deadline_s must be > 0, got {total_deadline_s}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.total_deadline_s = total_deadline_s
        self.max_tokens = int(max_tokens)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.prompt = prompt
        self._api_key = _Secret(api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None)
        self.stats = TRMStats()
        # One cap per event loop, shared by concurrent score() calls (verl's reward loop scores sample by sample).
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        key = "'***'" if self._api_key.value else "None"
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, "
            f"max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, max_retries={self.max_retries}, "
            f"total_deadline_s={self.total_deadline_s})"
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_semaphores"] = None  # bound to event loops; rebuilt where the copy runs
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _semaphores=weakref.WeakKeyDictionary())

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
        items = list(items)
        if not items:
            return []
        self.stats.items += len(items)
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.max_concurrency)
        image_cache: dict[tuple, asyncio.Task] = {}
        headers = {"Content-Type": "application/json"}
        if self._api_key.value:
            headers["Authorization"] = f"Bearer {self._api_key.value}"
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            scores = await asyncio.gather(
                *(self._score_item(session, semaphore, image_cache, item) for item in items)
            )
        failed = [kind for _, kind in scores if kind is not None]
        if failed:
            logger.warning(
                "thinking reward model: %d/%d items failed (%s); they score NaN",
                len(failed),
                len(items),
                ", ".join(f"{k}: {n}" for k, n in sorted(Counter(failed).items())),
            )
        return [value for value, _ in scores]

    def score_sync(self, items: Sequence[ThinkingRewardItem]) -> list[float]:
        """Blocking :meth:`score`, run on verl's event loop (``verl.utils.ray_utils.get_event_loop``).

        Raises:
            RuntimeError: When called from inside a running event loop (``await score(...)`` there).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("score_sync() called inside a running event loop; use `await client.score(...)`")
        from verl.utils.ray_utils import get_event_loop

        return get_event_loop().run_until_complete(self.score(items))

    # ----------------------------------------------------------------- internals

    async def _image_urls(self, images: tuple, cache: dict[tuple, asyncio.Task]) -> list[str]:
        tasks = []
        for image in images:
            key = _image_key(image)
            if key not in cache:  # one encoding per distinct image per call (a group shares its images)
                cache[key] = asyncio.ensure_future(asyncio.to_thread(image_to_data_url, image))
            tasks.append(cache[key])
        return list(await asyncio.gather(*tasks))

    def _sent_images(self, item: ThinkingRewardItem) -> tuple:
        """The images the request carries: all of them, or the first only (``reference``)."""
        images = tuple(item.images)
        return images[:1] if self.prompt == "reference" else images

    def _payload(self, item: ThinkingRewardItem, image_urls: list[str]) -> dict:
        """The JSON body of one item's request, in the client's ``prompt`` layout."""
        images = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
        if self.prompt == "reference":
            text = build_reference_trm_prompt(item.question, item.response, has_image=bool(image_urls))
            content = [{"type": "text", "text": text}, *images]
            limits: dict = {}
        else:
            content = [*images, {"type": "text", "text": build_trm_prompt(item.question, item.response)}]
            limits = {"max_tokens": self.max_tokens}
        messages = [{"role": "system", "content": TRM_SYSTEM_PROMPT}, {"role": "user", "content": content}]
        return {"model": self.model, "messages": messages, "temperature": 0.0, **limits}

    async def _score_item(
        self,
        session: aiohttp.ClientSession,
        semaphore: asyncio.Semaphore,
        image_cache: dict[tuple, asyncio.Task],
        item: ThinkingRewardItem,
    ) -> tuple[float, str | None]:
        """Returns (score, None) or (NaN, failure kind)."""
        async with semaphore:
            try:
                payload = self._payload(item, await self._image_urls(self._sent_images(item), image_cache))
            except (OSError, TypeError, ValueError) as exc:
                return self._fail("bad_input", f"{type(exc).__name__}: {exc}")
            body = json.dumps(payload)
            start = time.monotonic()
            deadline = start + self.total_deadline_s if self.total_deadline_s is not None else math.inf
            bad_responses = 0
            attempt = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._fail("deadline", "item deadline passed")
                try:
                    value = await self._attempt(session, body, min(self.timeout_s, remaining), attempt)
                    self.stats.scored += 1
                    return value, None
                except _AttemptError as err:
                    self.stats.errors[err.kind] += 1
                    logger.debug("thinking reward request failed (attempt %d): %s", attempt + 1, self._redact(str(err)))
                    if err.kind == "bad_response":
                        bad_responses += 1
                    retry = err.retryable and attempt < self.max_retries
                    if err.kind == "bad_response" and bad_responses > _BAD_RESPONSE_RETRIES:
                        retry = False
                    if not retry:
                        return self._fail(err.kind, str(err))
                    delay = self._backoff(attempt, err.retry_after)
                    if time.monotonic() + delay >= deadline:
                        return self._fail(err.kind, f"{err} (no time left to retry)")
                    await asyncio.sleep(delay)
                    attempt += 1

    def _fail(self, kind: str, detail: str) -> tuple[float, str]:
        self.stats.failed += 1
        self.stats.failures[kind] += 1
        logger.debug("thinking reward item failed: %s", self._redact(detail))
        return math.nan, kind

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        delay = cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": desynchronises retries, keeps a floor
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    async def _attempt(self, session: aiohttp.ClientSession, body: str, timeout_s: float, attempt: int) -> float:
        """One HTTP request; returns the clipped score or raises :class:`_AttemptError`."""
        self.stats.requests += 1
        if attempt:
            self.stats.retries += 1
        start = time.monotonic()
        try:
            async with session.post(self.url, data=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                status = resp.status
                raw = await resp.read()
                retry_after = _retry_after_s(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise _AttemptError("timeout", f"no reply within {timeout_s:.3g}s", retryable=True) from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages name host and port, never the request headers.
            raise _AttemptError("connection", f"{type(exc).__name__}: {exc}", retryable=True) from None
        latency = time.monotonic() - start

        if status != 200:
            text = raw[:200].decode("utf-8", "replace")
            if status == 429 or status == 408:
                raise _AttemptError(f"http_{status}", text, retryable=True, retry_after=retry_after)
            if status >= 500:
                raise _AttemptError("http_5xx", f"{status} {text}", retryable=True, retry_after=retry_after)
            raise _AttemptError("http_4xx", f"{status} {text}", retryable=False)

        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _AttemptError("bad_response", f"malformed completion {raw[:200]!r}", retryable=True) from None
        if not isinstance(content, str):
            raise _AttemptError("bad_response", f"no message content {raw[:200]!r}", retryable=True)
        value = _parse_raw_score(content)
        if value is None:
            raise _AttemptError("unparseable", f"no score in {content[:200]!r}", retryable=False)
        self.stats.latencies_s.append(latency)
        if not 0.0 <= value <= 1.0:
            self.stats.clipped += 1
            value = min(1.0, max(0.0, value))
        return value


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (only the delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
