"""Client of the thinking reward model (TRM) of SophiaVL-R1.

The TRM is a generative vision-language model served behind an OpenAI-compatible chat API (vLLM in the
reference deployment, verl's reward-model router, or ``transformers serve`` on CPU). It reads the image(s),
the question and a policy response, and answers a score in {0, 0.1, ..., 1.0} as ``<answer>x</answer>``.

What the TRM sees: the whole decoded response (``<think>...</think>`` *and* ``<answer>...</answer>``), as
the reference code sends it; the caller decides what text it passes as ``response``.

Failure semantics: an item whose request fails (after retries), whose reply is not a score in [0, 1], or
that cannot be sent scores ``NaN``, never 0, so that an outage cannot look like bad reasoning to the
algorithm. Failures are counted by kind in :class:`TRMStats` (the kinds are listed in
:class:`ThinkingRewardClient`). Whatever a reply holds, the worst it does is fail its own item: it is read up to
``max_reply_bytes`` after decompression, and any body that is not a chat completion is ``bad_response``. A score
call takes at most its deadline, and after repeated failed requests a circuit breaker fails fast until a probe
gets through. A base URL with credentials (``user:password@``) is refused, without echoing it.

Cost: one connection pool per client and event loop (verl's reward loop calls :meth:`score` once per
response), and each image is prepared once per process while its group is scored (a content-keyed cache),
sent as its original bytes when it has them.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import hashlib
import io
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
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from sophiavl_verl.config import TRM_PROMPTS, SophiaVLRewardConfig, parse_trm_base_url

logger = logging.getLogger(__name__)

__all__ = [
    "API_KEY_ENV",
    "TRM_INSTRUCTION",
    "REFERENCE_TRM_INSTRUCTION",
    "ThinkingRewardClient",
    "ThinkingRewardItem",
    "TRMRequestError",
    "TRMResult",
    "TRMStats",
    "build_reference_trm_prompt",
    "build_trm_prompt",
    "parse_score",
    "quantile",
]

#: The environment variable the API key is read from by default (``trm_api_key_env``'s default).
API_KEY_ENV = SophiaVLRewardConfig.trm_api_key_env

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
#: A complete ``<answer>x</answer>``: the only shape a reply cut at ``max_tokens`` may still be scored by.
_ANSWER = re.compile(r"<answer>\s*" + _NUM + r"\s*</answer>", re.IGNORECASE)
#: Where a reply states its score, besides its first line alone (``_BARE``): ``<answer>x</answer>``, ``\boxed{x}``
#: (``\box``, ``\boxes``), after ``score``. No two adjacent quantifiers can match the same characters, so that a
#: hostile reply (a number, then a megabyte of spaces) cannot make them backtrack for hours.
_SCORE_PATTERNS = (
    _ANSWER,
    re.compile(r"\\box(?:ed|es)?\s*\{\s*" + _NUM + r"\s*\}"),
    re.compile(r"\bscore\b(?:\s*(?:is|of|=|:))?[\s*`\"']*" + _NUM, re.IGNORECASE),
)
#: The first line of a reply when it is a number alone (markdown emphasis and a final period allowed).
_BARE = re.compile(r"[*`\"']*\s*" + _NUM + r"\s*[*`\"']*\.?")
_ANY_NUMBER = re.compile(_NUM)
#: A score given on another scale: ``8/10``, ``8 out of 10``.
_OTHER_SCALE = re.compile(r"\d\s*/\s*\d|\bout\s+of\b", re.IGNORECASE)
_THINK_END = "</think>"


def _parse_raw_score(text: str) -> float | None:
    """The score ``text`` states unambiguously, unclipped; None when there is none (see :func:`parse_score`)."""
    if not isinstance(text, str):
        return None
    end = text.lower().rfind(_THINK_END)
    reply = text if end < 0 else text[end + len(_THINK_END):]  # the reasoning's own numbers are no candidates
    values = {float(number) for number in _ANY_NUMBER.findall(reply)}
    stated = _BARE.fullmatch(reply.strip().split("\n", 1)[0].strip()) or any(p.search(reply) for p in _SCORE_PATTERNS)
    if len(values) != 1 or _OTHER_SCALE.search(reply) or not stated:
        return None
    (value,) = values
    return value if math.isfinite(value) else None


def parse_score(text: str) -> float | None:
    """Parse the TRM's reply into a score in [0, 1].

    The rule: after the last ``</think>`` (the whole reply when there is none), the reply must hold exactly
    one distinct number, stated as ``<answer>0.7</answer>``, ``\\boxed{0.7}`` (``\\box{0.7}``,
    ``\\boxes{0.7}``), ``Score: 0.7``, or alone on its first line (``0.7``, ``**0.7**``, ``0.7.``); a reply
    with two or more distinct numbers there, a fraction (``0.8/10``) or ``out of`` is unparseable. So the
    paper's replies (``<answer>0.7</answer>``, with or without a ``<think>`` block before) parse, and
    ``The final score is 1 out of 10.`` or ``Score: 0-1 scale, I give 0.3`` do not. Values are not snapped
    to the 0.1 grid. Out-of-range values are clipped to [0, 1] as the reference does (``1.7`` -> 1.0,
    ``-0.2`` -> 0.0); :class:`ThinkingRewardClient` does not clip unless asked (``clip_scores``): by
    default such a reply is a failure of kind ``out_of_range``. The client also refuses a reply cut at
    ``max_tokens`` (``finish_reason: "length"``) without a complete ``<answer>x</answer>``: ``truncated``.

    Unlike the reference, a reply without a score is not scored 0, and neither the first digit found in a
    sentence nor the first of several numbers is taken as the score: it is unparseable.

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
        images: The images of the prompt, each encoded image bytes (PNG, JPEG, GIF, BMP or WebP, sent as they
            are), a PIL image (sent as PNG), a file path (its bytes are sent), or a ``data:image/...`` or
            ``http(s)://`` URL string. All of them are sent, in order.
    """

    question: str
    response: str
    images: tuple = ()


@dataclass
class TRMResult:
    """One item's score and what it cost.

    Attributes:
        score: The score in [0, 1]; NaN when the item failed.
        failure: The kind of failure (see :class:`ThinkingRewardClient`); ``None`` when scored.
        requests: HTTP requests sent for the item, retries included.
        connections: TCP connections opened for those requests (0 when pooled ones were reused).
        image_encodes: Images this item decoded and encoded again (0 when the cache or the original bytes
            served).
        bytes_sent: Request body bytes sent for the item.
    """

    score: float = math.nan
    failure: str | None = None
    requests: int = 0
    connections: int = 0
    image_encodes: int = 0
    bytes_sent: int = 0


def _check_item(item: Any) -> None:
    """Raise :class:`_BadInput` naming what is wrong with an item that cannot be sent."""
    if not isinstance(item, ThinkingRewardItem):
        raise _BadInput(f"not a ThinkingRewardItem but a {type(item).__name__}")
    for name in ("question", "response"):
        value = getattr(item, name)
        if not isinstance(value, str):
            raise _BadInput(f"its {name} is a {type(value).__name__}, not a string")
    if not isinstance(item.images, (tuple, list)):
        raise _BadInput(f"its images are a {type(item.images).__name__}, not a tuple")


# --------------------------------------------------------------------------------------------- images


class _BadInput(ValueError):
    """An item that cannot be sent (failure kind ``bad_input``); nothing is sent for it."""


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def _mime_of(data: bytes) -> str | None:
    """The MIME type of encoded image bytes from their signature; ``None`` when they are no known image."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


#: Modes PNG can store; an image in another mode (CMYK, YCbCr, ...) is converted to RGB first.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class _Prepared(NamedTuple):
    """An image ready to send: the JSON string of its ``data:`` URL, spliced into request bodies as is."""

    url_json: bytes
    reencoded: bool  # decoded and encoded again as PNG (a PIL image, or a downscaled one)
    downscaled: bool


def _url_json(mime: str, data: bytes) -> bytes:
    return b'"data:' + mime.encode("ascii") + b";base64," + base64.b64encode(data) + b'"'


def _downscale(image: Any, max_pixels: int) -> Any:
    """Shrink an image to at most ``max_pixels`` pixels, keeping its aspect ratio, with the reference's rule.

    The authors' dataset (EasyR1's ``process_image``) scales both sides by sqrt(max_pixels / (w * h)),
    truncates them to integers, resizes with PIL's default filter and converts to RGB.
    """
    factor = math.sqrt(max_pixels / (image.width * image.height))
    image = image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))))
    return image if image.mode == "RGB" else image.convert("RGB")


def _encode_pil(image: Any, max_pixels: int | None) -> _Prepared:
    downscaled = max_pixels is not None and image.width * image.height > max_pixels
    if downscaled:
        image = _downscale(image, max_pixels)
    elif image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless, as the reference sends images
    return _Prepared(_url_json("image/png", buffer.getvalue()), True, downscaled)


def _prepare_bytes(data: bytes, max_pixels: int | None, what: str) -> _Prepared:
    mime = _mime_of(data)
    if mime is None:
        raise _BadInput(f"{what} are not a PNG, JPEG, GIF, BMP or WebP image (they start with {data[:8]!r})")
    if max_pixels is not None:
        from PIL import Image

        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.width * image.height > max_pixels:
            return _encode_pil(image, max_pixels)
    return _Prepared(_url_json(mime, data), False, False)


#: Serialises the loading of PIL images: a lazily opened one (``Image.open``) reads its file on first access,
#: and two threads decoding the same image at once (the items of a group share it) corrupt each other's read.
_PIL_LOAD_LOCK = threading.Lock()


def _image_job(image: Any, max_pixels: int | None) -> tuple[Hashable, Callable[[], _Prepared]]:
    """The content key of an image and the function that prepares it.

    Equal content gives equal keys whatever the object's identity: a group's responses reach a reward worker
    as separately deserialized copies of the same image. Hashing reads all of it, so this runs in a thread.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return ("bytes", hashlib.sha256(data).digest()), lambda: _prepare_bytes(data, max_pixels, "image bytes")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        stat = os.stat(path)
        key = ("file", os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
        return key, lambda: _prepare_bytes(Path(path).read_bytes(), max_pixels, f"the bytes of {path}")
    if hasattr(image, "tobytes") and hasattr(image, "save"):  # a PIL image, without importing PIL here
        with _PIL_LOAD_LOCK:
            image.load()
        digest = hashlib.sha256(image.tobytes())
        digest.update(bytes(image.getpalette() or ()))  # mode "P": the same indices with another palette differ
        return ("pixels", image.mode, image.size, digest.digest()), lambda: _encode_pil(image, max_pixels)
    raise _BadInput(f"an image is a {type(image).__name__}, not bytes, a PIL image, a path or a URL")


def _bad_input_on_error(function: Callable, *args: Any) -> Any:
    """``function(*args)``, any error raised as :class:`_BadInput` (PIL raises many types on a broken image: the
    item fails, not the call)."""
    try:
        return function(*args)
    except _BadInput:
        raise
    except Exception as exc:
        raise _BadInput(f"an image cannot be read: {type(exc).__name__}: {exc}") from None


#: Each thread's event loop for :meth:`ThinkingRewardClient.score_sync`.
_THREAD_LOOP = threading.local()

#: The image cache's default budget per client (the JSON strings of prepared images, in bytes).
IMAGE_CACHE_BYTES = 256 * 2**20


class _ImageCache:
    """Prepared images by content key, least recently used out first, at most ``max_bytes`` in all.

    Thread-safe. While one thread prepares a key, the others asking for it get that preparation's future to
    await instead of preparing it again (a group's responses arrive together) or blocking a thread. An image
    larger than the budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._parts: OrderedDict[Hashable, _Prepared] = OrderedDict()
        self._pending: dict[Hashable, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, key: Hashable,
            prepare: Callable[[], _Prepared]) -> tuple[_Prepared | concurrent.futures.Future, bool]:
        """The prepared image of ``key`` (or the future of its preparation elsewhere), and whether this call
        prepared it."""
        with self._lock:
            part = self._parts.get(key)
            if part is not None:
                self._parts.move_to_end(key)
                return part, False
            if key in self._pending:
                return self._pending[key], False
            future = self._pending[key] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # a waiter that gives up cannot cancel it for the others
        try:
            part = prepare()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            future.set_exception(exc)
            raise
        with self._lock:
            size = len(part.url_json)
            if size <= self.max_bytes:
                self._parts[key] = part
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, evicted = self._parts.popitem(last=False)
                    self.nbytes -= len(evicted.url_json)
            del self._pending[key]
        future.set_result(part)
        return part, True


# ---------------------------------------------------------------------------------------------- stats


#: How many request latencies a client keeps for its p50/p95.
LATENCY_WINDOW = 65536


@dataclass
class TRMStats:
    """Counters of a :class:`ThinkingRewardClient` (reset them once per training step).

    Attributes:
        items: Items asked for.
        scored: Items that got a score.
        requests: HTTP requests sent for items (first attempts and retries).
        retries: Requests that were retries.
        failed: Items that ended NaN.
        failures: Failed items by the kind of their failure (see ``ThinkingRewardClient``).
        errors: Failed attempts by kind (retried ones included).
        clipped: Scores outside [0, 1] that were clipped (``clip_scores=True`` only).
        connections: TCP connections opened.
        bytes_sent: Request body bytes sent for items.
        images_prepared: Images turned into request parts (the rest came from the cache).
        image_encodes: Of those, images decoded and encoded again (PIL images, downscaled images).
        images_downscaled: Images shrunk to ``max_image_pixels``.
        image_cache_hits: Images served by the cache.
        probes: Requests the open circuit breaker sent to see whether the TRM answers again.
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
    connections: int = 0
    bytes_sent: int = 0
    images_prepared: int = 0
    image_encodes: int = 0
    images_downscaled: int = 0
    image_cache_hits: int = 0
    probes: int = 0
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def reset(self) -> None:
        """Zero every counter."""
        self.__init__()

    def summary(self) -> dict[str, float]:
        """Metrics for a logger, under ``trm/``.

        Returns:
            ``trm/items``, ``trm/requests``, ``trm/retries``, ``trm/failed``, ``trm/failed_frac``,
            ``trm/failed_<kind>`` per kind, ``trm/clipped``, ``trm/connections``, ``trm/bytes_sent``,
            ``trm/images_prepared``, ``trm/image_encodes``, ``trm/images_downscaled``,
            ``trm/image_cache_hits``, ``trm/latency_{mean,p50,p95,max}_s`` (NaN when no request succeeded).
        """
        lat = sorted(self.latencies_s)
        out = {
            "trm/items": float(self.items),
            "trm/requests": float(self.requests),
            "trm/retries": float(self.retries),
            "trm/failed": float(self.failed),
            "trm/failed_frac": self.failed / self.items if self.items else 0.0,
            "trm/clipped": float(self.clipped),
            "trm/connections": float(self.connections),
            "trm/bytes_sent": float(self.bytes_sent),
            "trm/images_prepared": float(self.images_prepared),
            "trm/image_encodes": float(self.image_encodes),
            "trm/images_downscaled": float(self.images_downscaled),
            "trm/image_cache_hits": float(self.image_cache_hits),
            "trm/latency_mean_s": sum(lat) / len(lat) if lat else math.nan,
            "trm/latency_p50_s": quantile(lat, 0.50),
            "trm/latency_p95_s": quantile(lat, 0.95),
            "trm/latency_max_s": lat[-1] if lat else math.nan,
        }
        out.update({f"trm/failed_{kind}": float(n) for kind, n in sorted(self.failures.items())})
        return out


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` with linear interpolation (numpy's default), NaN when empty.

    The one quantile of the package: the client's latency summary, the estimator's ``trm/latency_p*_s`` and
    the audit's report use it.
    """
    sorted_values = sorted(values)
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------- errors


class TRMRequestError(Exception):
    """A request to the TRM endpoint that got no usable reply; ``kind`` is its failure kind (see
    :class:`ThinkingRewardClient`)."""

    kind: str


class _AttemptError(TRMRequestError):
    """One failed attempt. ``kind`` names the failure; ``retryable`` says whether to try again; ``alive`` whether
    the reply shows that the server answers (only timeouts, connection errors and 5xx count for the breaker)."""

    def __init__(
        self, kind: str, detail: str, *, retryable: bool, retry_after: float | None = None, alive: bool = True
    ):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        self.alive = alive


#: The whole body of verl 0.9.1's reward router's reply to ANY failed upstream request (hosting mode A):
#: ``NaiveRouter`` re-raises the upstream's HTTP error and Starlette answers its default plain-text 500, so the
#: upstream's status and error body (vLLM's 400 "maximum context length", its 404 for an unknown model, a 503)
#: are lost. The client tells permanent errors apart by other means (see ``_run_item``).
ROUTER_500_BODY = b"Internal Server Error"

#: Permanent errors recognised in an error body (vLLM's and OpenAI's wording), whatever the status (a proxy
#: may wrap a 4xx in a 5xx): the same request would fail again.
_PERMANENT_ERRORS = (
    ("context_length", re.compile(r"context length|maximum model length|max_model_len|longer than the maximum", re.I)),
    ("unknown_model", re.compile(r"\bmodel\b.{0,200}\bdoes not exist|model_not_found", re.I | re.S)),
)


def _permanent_kind(raw: bytes) -> str | None:
    text = raw[:4096].decode("utf-8", "replace")
    for kind, pattern in _PERMANENT_ERRORS:
        if pattern.search(text):
            return kind
    return None


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (only the delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _completion_of(raw: bytes) -> tuple[str, str | None]:
    """The message content and ``finish_reason`` of a chat completion; :class:`_AttemptError` (``bad_response``)
    for anything else, whatever the bytes (invalid JSON or UTF-8, nesting too deep to decode, other shapes)."""
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _AttemptError("bad_response", f"not JSON: {raw[:200]!r}", retryable=True) from None
    choices = reply.get("choices") if isinstance(reply, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _AttemptError("bad_response", f"no message content in {raw[:200]!r}", retryable=True)
    finish_reason = choice.get("finish_reason")
    return content, finish_reason if isinstance(finish_reason, str) else None


def _model_ids(raw: bytes) -> list[str] | None:
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
    closed and :class:`_AttemptError` (``bad_response``, not retried: the same request gets the same reply)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            response.close()
            raise _AttemptError("bad_response", f"a reply over max_reply_bytes ({max_bytes} bytes)", retryable=False)
    return bytes(body)


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
# verl's router answers its bodiless 500 for a request the upstream refused (4xx) and for an upstream fault
# alike: a second one for the same request, while the TRM answers other requests, means the upstream refuses it.
_ROUTER_500_RETRIES = 1
# Replies are read in chunks of this many bytes (after decompression), so that the size cap bounds memory.
_READ_CHUNK = 2**16
# Idle pooled connections are kept this long. A server that closes them sooner (uvicorn, i.e. vLLM and verl's
# router, after 5 s) is fine: the pool drops connections the server closed, and a request that races such a close
# is sent again at once on another connection (``stale_connection``).
_KEEPALIVE_S = 60.0
# One failure warning per this many seconds and client (verl's reward loop makes one call per response).
_WARN_EVERY_S = 30.0
# Image parts are spliced into request bodies in place of these strings (never seen by the policy).
_IMAGE_TOKEN = "sophiavl-image-" + secrets.token_hex(8)
_IMAGE_TOKEN_RE = re.compile(b'"' + _IMAGE_TOKEN.encode() + rb'-(\d+)"')


# -------------------------------------------------------------------------------------------- breaker


class _CircuitBreaker:
    """Fails fast after ``threshold`` consecutive failed requests (timeouts, connection errors, 5xx).

    closed --threshold failures--> open: items fail at once (``circuit_open``) --``cooldown_s``--> one probe
    request in the background --answer--> closed; --failure--> open again. A request that gets any answer
    meanwhile closes it too. ``threshold`` 0 disables it.
    """

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def record(self, alive: bool, now: float) -> bool:
        """Count one request's outcome; returns True when this failure opened the breaker."""
        if alive:
            self.consecutive, self.opened_at = 0, None
            return False
        self.consecutive += 1
        if self.threshold and self.opened_at is None and self.consecutive >= self.threshold:
            self.opened_at = now
            return True
        return False

    def probe_due(self, now: float) -> bool:
        return self.opened_at is not None and not self.probing and now - self.opened_at >= self.cooldown_s


# ------------------------------------------------------------------------------------------ per loop


class _LoopState:
    """What a client keeps per event loop: the concurrency cap, the connection pool and the circuit breaker."""

    def __init__(self, client: ThinkingRewardClient, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.semaphore = asyncio.Semaphore(client.max_concurrency)
        self.breaker = _CircuitBreaker(client.breaker_failures, client.breaker_cooldown_s)
        self.session: aiohttp.ClientSession | None = None
        self.lifetime: Any = None  # the async generator that closes the session (see _pool_lifetime)
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
        lifetime, self.lifetime = self.lifetime, None
        if lifetime is not None:
            await lifetime.aclose()

    def close_from_outside(self) -> None:
        """Close the pool from outside its loop: run the loop if it is idle, else hand it the work."""
        if self.loop.is_closed() or self.lifetime is None:
            return
        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.close(), self.loop).result(timeout=5)
            except concurrent.futures.TimeoutError:
                logger.debug("thinking reward client: the pool of a busy event loop was not closed within 5 s")
        else:
            self.loop.run_until_complete(self.close())


#: Pools with an open session. Held strongly, so that a pool is closed, never collected open (aiohttp logs an
#: error for a collected open session): by its loop's shutdown, ``aclose``/``close``, or at interpreter exit.
_OPEN_POOLS: set[_LoopState] = set()
#: Open pools of clients that were garbage-collected; closed when their loop next runs a client call.
_ORPHANED_POOLS: list[_LoopState] = []


async def _pool_lifetime(state: _LoopState):
    """Closes ``state``'s session when this generator is closed: by ``_LoopState.close``, or by the loop's shutdown
    (``asyncio.run`` closes every async generator still open), so a pool never outlives its loop."""
    _OPEN_POOLS.add(state)
    try:
        yield
    finally:
        _OPEN_POOLS.discard(state)
        session, state.session = state.session, None
        if session is not None:
            await session.close()


def _orphan_pools(states: dict) -> None:
    """``weakref.finalize`` callback of a client: its open pools are closed on their loops' next use."""
    _ORPHANED_POOLS.extend(state for state in list(states.values()) if state.lifetime is not None)


async def _close_orphaned_pools(loop: asyncio.AbstractEventLoop) -> None:
    # Taken off the list before the first await: concurrent calls on this loop must not close a pool twice.
    mine = [state for state in _ORPHANED_POOLS if state.loop is loop]
    _ORPHANED_POOLS[:] = [state for state in _ORPHANED_POOLS if state.loop is not loop]
    for state in mine:
        await state.close()


@atexit.register
def _close_open_pools() -> None:
    """Close the pools still open when the interpreter exits (a reward worker ends)."""
    for state in list(_OPEN_POOLS):
        try:
            state.close_from_outside()
        except Exception as exc:  # exiting: a pool that cannot be closed cleanly is closed by the OS
            logger.debug("thinking reward client: closing a pool at exit failed: %r", exc)


async def _once_more_if_stale(request: Callable[[], Any]) -> Any:
    """``await request()``, once more when the pooled connection it got had been closed by the server."""
    try:
        return await request()
    except _AttemptError as exc:
        if exc.kind != "stale_connection":
            raise
        return await request()


class _Attempt:
    """Per-request context for aiohttp's tracing: which counters it feeds (none for the client's own checks),
    whether it reused a connection."""

    __slots__ = ("stats", "result", "reused")

    def __init__(self, stats: TRMStats | None = None, result: TRMResult | None = None) -> None:
        self.stats = stats
        self.result = result
        self.reused = False


# aiohttp tracing callbacks. Module functions, not methods: a pool must not keep its client alive, so that a
# client dropped with its pool open is collected and its pool closed (see _orphan_pools).
async def _on_connection_created(session: Any, context: Any, params: Any) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt) and attempt.result is not None:
        attempt.stats.connections += 1
        attempt.result.connections += 1


async def _on_connection_reused(session: Any, context: Any, params: Any) -> None:
    if isinstance(context.trace_request_ctx, _Attempt):
        context.trace_request_ctx.reused = True


# --------------------------------------------------------------------------------------------- client


_OPTIONS = SophiaVLRewardConfig  # the defaults of the options live there, once
#: The reward manager's options that configure the client (the names of its keyword arguments).
_CLIENT_OPTIONS = ("max_concurrency", "timeout_s", "max_retries", "deadline_s", "breaker_failures",
                   "breaker_cooldown_s", "clip_scores", "max_image_pixels", "max_reply_bytes")


class ThinkingRewardClient:
    """Async client that scores responses with a thinking reward model behind an OpenAI chat API.

    Each item is one ``POST {base_url}/chat/completions`` request with a system message and a user message
    whose content is the item's images (base64 ``data:`` URLs) followed by the Table-4 prompt, sent with
    temperature 0 and ``max_tokens`` tokens.

    Transport: one connection pool per client and event loop, with keep-alive, shared by every :meth:`score`
    call on that loop (verl's reward loop calls it once per response) and closed when the loop shuts down
    (``asyncio.run``), on :meth:`aclose` / :meth:`close`, or at interpreter exit. At most ``max_concurrency``
    items are in flight per loop, on at most as many connections (plus one for the breaker's probe); an item
    keeps its slot while it backs off, so a struggling server is not flooded by retries.

    Images are prepared once per process while their group is scored: a cache keyed by content (not identity)
    keeps the request parts of recent images within ``image_cache_bytes``. Encoded bytes (and files) are sent
    as they are; PIL images are encoded as PNG; with ``max_image_pixels`` larger images are downscaled first.
    Hashing and encoding run in worker threads, never on the event loop.

    Failures, by ``kind`` (the keys of ``stats.failures`` and ``stats.errors``):

    * ``timeout``, ``connection``, ``http_5xx``, ``http_429`` (and ``http_408``): retried with exponential
      backoff and jitter (``Retry-After`` honoured up to the deadline), at most ``max_retries`` times.
    * ``router_500``: the bodiless 500 of verl's reward router (hosting mode A), which it answers for every
      failed upstream request, 4xx included. Retried; a second one for the same item while the TRM answers
      other requests means the upstream refuses this request: ``upstream_rejected``, not retried. When no
      request has succeeded yet, ``GET /models`` tells whether the model is served (else ``unknown_model``).
    * ``context_length``, ``unknown_model``: permanent errors named in an error body (vLLM's or OpenAI's
      wording, any status): not retried.
    * ``http_4xx`` (any other 4xx: bad request, auth): not retried.
    * ``bad_response``: a reply that is no chat completion (empty body, invalid JSON or UTF-8, JSON nested too
      deep, no choices, no string message content): retried once; a reply over ``max_reply_bytes`` (after
      decompression: reading stops there) or a redirect loop: not retried.
    * ``unparseable`` (a well-formed completion without one unambiguous score, see :func:`parse_score`),
      ``truncated`` (cut at ``max_tokens``, ``finish_reason: "length"``, without a complete
      ``<answer>x</answer>``) and ``out_of_range`` (a score outside [0, 1], unless ``clip_scores``): not
      retried, since the same prompt at temperature 0 gives the same text.
    * ``deadline``: the call's ``deadline_s`` ran out (waiting for a slot, in a request or backing off).
    * ``circuit_open``: not sent, the circuit breaker is open.
    * ``bad_input``: the item cannot be sent (not a string question or response, an image that cannot be read
      or is not an image); nothing is sent for it and the other items are scored.

    A failed item scores NaN; it is never turned into 0 here.

    Args:
        base_url: OpenAI-style base URL, e.g. ``http://host:8000/v1``, checked and normalised by
            :func:`sophiavl_verl.config.parse_trm_base_url` (the option's own rules: one with credentials,
            ``user:password@``, is refused without echoing it).
        model: The model name to put in requests (vLLM's ``--served-model-name``).
        api_key: Sent as ``Authorization: Bearer``; defaults to the :data:`API_KEY_ENV` env var.
            Never logged or shown in reprs and errors.
        max_concurrency: Items in flight at once per event loop.
        timeout_s: Limit for one HTTP request.
        max_retries: Retries after the first attempt of an item.
        deadline_s: Limit for one :meth:`score` call, from the call to its result: waiting for a concurrency
            slot, requests, backoff and ``Retry-After`` included.
        breaker_failures: Consecutive failed requests (timeouts, connection errors, 5xx) that open the circuit
            breaker; 0 disables it.
        breaker_cooldown_s: How long the open breaker fails fast before it probes.
        clip_scores: Clip a score outside [0, 1] into it (the reference's behaviour) instead of failing the
            item with ``out_of_range``.
        max_image_pixels: Downscale images with more pixels (see :func:`_downscale`); ``None``: never.
        max_reply_bytes: Largest reply read, in bytes after decompression (``bad_response`` past it).
        image_cache_bytes: Budget of the image cache.
        max_tokens: ``max_tokens`` of the request (the reply is ``<answer>x</answer>``).
        backoff_base_s: First backoff; doubles each retry.
        backoff_max_s: Cap of one backoff (not of ``Retry-After``, which only the deadline limits).
        prompt: The request layout, one of ``sophiavl_verl.config.TRM_PROMPTS``: ``paper`` (the item's images,
            then the Table-4 prompt, with ``max_tokens``) or ``reference`` (:func:`build_reference_trm_prompt`'s
            text, then the item's first image, temperature 0 only, as the authors' code sends it).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = _OPTIONS.max_concurrency,
        timeout_s: float = _OPTIONS.timeout_s,
        max_retries: int = _OPTIONS.max_retries,
        deadline_s: float = _OPTIONS.deadline_s,
        breaker_failures: int = _OPTIONS.breaker_failures,
        breaker_cooldown_s: float = _OPTIONS.breaker_cooldown_s,
        clip_scores: bool = _OPTIONS.clip_scores,
        max_image_pixels: int | None = _OPTIONS.max_image_pixels,
        max_reply_bytes: int = _OPTIONS.max_reply_bytes,
        image_cache_bytes: int = IMAGE_CACHE_BYTES,
        max_tokens: int = 32,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        prompt: str = "paper",
    ) -> None:
        if prompt not in TRM_PROMPTS:
            raise ValueError(f"prompt must be one of {TRM_PROMPTS}, got {prompt!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        for name, value in (("timeout_s", timeout_s), ("deadline_s", deadline_s),
                            ("breaker_cooldown_s", breaker_cooldown_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if breaker_failures < 0:
            raise ValueError(f"breaker_failures must be >= 0, got {breaker_failures}")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1 or None, got {max_image_pixels}")
        if max_reply_bytes < 1:
            raise ValueError(f"max_reply_bytes must be >= 1, got {max_reply_bytes}")
        self.base_url = parse_trm_base_url(base_url, "base_url")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.deadline_s = float(deadline_s)
        self.breaker_failures = int(breaker_failures)
        self.breaker_cooldown_s = float(breaker_cooldown_s)
        self.clip_scores = bool(clip_scores)
        self.max_image_pixels = max_image_pixels
        self.max_reply_bytes = int(max_reply_bytes)
        self.image_cache_bytes = int(image_cache_bytes)
        self.max_tokens = int(max_tokens)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.prompt = prompt
        self._api_key = _Secret(api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None)
        self.stats = TRMStats()
        self._init_runtime()

    @classmethod
    def from_config(
        cls, base_url: str, model: str, options: SophiaVLRewardConfig, *, api_key: str | None = None
    ) -> ThinkingRewardClient:
        """A client with the TRM options of the ``sophiavl`` reward manager (``reward.reward_kwargs``)."""
        return cls(base_url, model, api_key=api_key, prompt=options.trm_prompt,
                   **{name: getattr(options, name) for name in _CLIENT_OPTIONS})

    def _init_runtime(self) -> None:
        """The parts bound to this process: per-loop pools and caps, the image cache, the warning clock."""
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._loops_lock = threading.Lock()
        self._images = _ImageCache(self.image_cache_bytes)
        self._unwarned: Counter = Counter()
        self._warned_at = -math.inf
        finalizer = weakref.finalize(self, _orphan_pools, self._loops)
        finalizer.atexit = False  # at exit, _close_open_pools closes every pool

    def __repr__(self) -> str:
        key = "'***'" if self._api_key.value else "None"
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, "
            f"max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, max_retries={self.max_retries}, "
            f"deadline_s={self.deadline_s})"
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
        if _ORPHANED_POOLS:
            await _close_orphaned_pools(loop)
        state = self._state(loop)
        deadline = loop.time() + self.deadline_s
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

    # ----------------------------------------------------------------- internals

    def _state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        state = self._loops.get(loop)
        if state is None:
            with self._loops_lock:
                for old in [old for old in self._loops if old.is_closed()]:  # asyncio.run's loops, done
                    del self._loops[old]
                state = self._loops.setdefault(loop, _LoopState(self, loop))
        return state

    async def _session(self, state: _LoopState) -> aiohttp.ClientSession:
        if state.session is None or state.session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(_on_connection_created)
            trace.on_connection_reuseconn.append(_on_connection_reused)
            headers = {"Content-Type": "application/json"}
            if self._api_key.value:
                headers["Authorization"] = f"Bearer {self._api_key.value}"
            connector = aiohttp.TCPConnector(limit=self.max_concurrency + 1, keepalive_timeout=_KEEPALIVE_S)
            state.session = aiohttp.ClientSession(connector=connector, headers=headers, trace_configs=[trace])
            state.lifetime = _pool_lifetime(state)
            await state.lifetime.__anext__()  # registers it with the loop, which closes it at shutdown
        return state.session

    async def _score_item(self, state: _LoopState, item: Any, deadline: float) -> TRMResult:
        result = TRMResult()
        try:
            async with asyncio.timeout_at(deadline):
                result.score = await self._run_item(state, item, result, deadline)
        except _AttemptError as err:
            self._fail(result, err.kind, str(err))
        except _BadInput as exc:
            self._fail(result, "bad_input", f"{exc}")
        except TimeoutError:
            self._fail(result, "deadline", f"the call's deadline of {self.deadline_s:g} s passed")
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
            raise _AttemptError("circuit_open", "the circuit breaker is open", retryable=False)
        if state.model_listed is False and now - state.models_checked_at < self.breaker_cooldown_s:
            raise _AttemptError("unknown_model", f"the server does not list model {self.model!r}", retryable=False)

    async def _run_item(self, state: _LoopState, item: Any, result: TRMResult, deadline: float) -> float:
        """Send one item, retrying as its failures allow; returns its score or raises ``_AttemptError``."""
        loop = asyncio.get_running_loop()
        _check_item(item)
        self._admit(state)
        async with state.semaphore:
            self._admit(state)
            body = await self._body(item, result)
            session = await self._session(state)
            started = loop.time()
            attempt = bad_responses = router_500s = 0
            while True:
                remaining = max(1e-3, deadline - loop.time())
                try:
                    value = await self._attempt(state, session, body, min(self.timeout_s, remaining), attempt, result)
                except _AttemptError as exc:
                    err = exc
                    if exc.kind == "timeout" and remaining < self.timeout_s:  # cut short by the deadline
                        err = _AttemptError("deadline", f"{exc} (the call's deadline)", retryable=False, alive=False)
                else:
                    state.breaker.record(True, loop.time())
                    return value
                self.stats.errors[err.kind] += 1
                logger.debug("thinking reward request failed (attempt %d): %s", attempt + 1, self._redact(str(err)))
                if err.kind == "stale_connection":
                    continue  # a pooled connection the server had closed: a fresh one at once, no retry spent
                if state.breaker.record(err.alive, loop.time()):
                    logger.warning(
                        "thinking reward model: %d consecutive failed requests (last: %s); failing fast for %g s",
                        state.breaker.consecutive, err.kind, self.breaker_cooldown_s,
                    )
                if err.kind == "router_500":
                    router_500s += 1
                    if router_500s > _ROUTER_500_RETRIES and state.last_success > started:
                        raise _AttemptError("upstream_rejected", "verl's router answered 500 again while the TRM "
                                            "answered other requests", retryable=False)
                    if state.last_success == -math.inf and not await self._model_listed(state, session):
                        raise _AttemptError("unknown_model", f"the server does not list model {self.model!r}",
                                            retryable=False)
                bad_responses += err.kind == "bad_response"
                if not (err.retryable and attempt < self.max_retries and bad_responses <= _BAD_RESPONSE_RETRIES):
                    raise err
                delay = self._backoff(attempt, err.retry_after)
                if loop.time() + delay >= deadline:
                    raise _AttemptError(err.kind, f"{err} (a retry in {delay:.3g} s would pass the deadline)",
                                        retryable=False)
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
        if isinstance(image, str) and image.startswith(("data:", "http://", "https://")):
            if image.startswith("data:") and not image.startswith("data:image/"):
                raise _BadInput(f"a data: URL that is not an image ({image[:30]!r})")
            return json.dumps(image).encode()
        prepared, prepared_here = await asyncio.to_thread(self._prepare_image, image)
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

    def _prepare_image(self, image: Any) -> tuple[_Prepared | concurrent.futures.Future, bool]:
        """(in a worker thread) The image's request part from the cache, prepared there if missing."""
        key, prepare = _bad_input_on_error(_image_job, image, self.max_image_pixels)
        return self._images.get(key, lambda: _bad_input_on_error(prepare))

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

    async def _attempt(
        self, state: _LoopState, session: aiohttp.ClientSession, body: bytes, timeout_s: float, attempt: int,
        result: TRMResult,
    ) -> float:
        """One HTTP request; returns the score or raises :class:`_AttemptError`."""
        self.stats.requests += 1
        self.stats.bytes_sent += len(body)
        result.requests += 1
        result.bytes_sent += len(body)
        if attempt:
            self.stats.retries += 1
        start = time.monotonic()
        status, raw, retry_after = await self._send(session, "POST", self.url, timeout_s,
                                                    _Attempt(self.stats, result), data=body)
        latency = time.monotonic() - start

        if status != 200:
            text = raw[:200].decode("utf-8", "replace")
            permanent = _permanent_kind(raw)
            if permanent is not None:
                raise _AttemptError(permanent, f"{status} {text}", retryable=False)
            if status in (408, 429):
                raise _AttemptError(f"http_{status}", text, retryable=True, retry_after=retry_after)
            if status == 500 and raw.strip() == ROUTER_500_BODY:
                raise _AttemptError("router_500", "500 Internal Server Error", retryable=True, alive=False)
            if status >= 500:
                raise _AttemptError("http_5xx", f"{status} {text}", retryable=True, retry_after=retry_after,
                                    alive=False)
            raise _AttemptError("http_4xx", f"{status} {text}", retryable=False)
        state.last_success = asyncio.get_running_loop().time()

        content, finish_reason = _completion_of(raw)
        if finish_reason == "length" and not _ANSWER.search(content):
            raise _AttemptError("truncated", f"cut at max_tokens: {content[-200:]!r}", retryable=False)
        value = _parse_raw_score(content)
        if value is None:
            raise _AttemptError("unparseable", f"no unambiguous score in {content[:200]!r}", retryable=False)
        self.stats.latencies_s.append(latency)
        if not 0.0 <= value <= 1.0:
            if not self.clip_scores:
                raise _AttemptError("out_of_range", f"score {value:g} outside [0, 1] in {content[:200]!r}",
                                    retryable=False)
            self.stats.clipped += 1
            value = min(1.0, max(0.0, value))
        return value

    async def _model_listed(self, state: _LoopState, session: aiohttp.ClientSession) -> bool:
        """Whether ``GET {base_url}/models`` lists the model (True when the server does not say).

        One check at a time per loop; its answer holds for ``breaker_cooldown_s``.
        """
        loop = asyncio.get_running_loop()
        if state.models_check is None or (
            state.models_check.done() and loop.time() - state.models_checked_at >= self.breaker_cooldown_s
        ):
            state.models_checked_at = loop.time()
            state.models_check = loop.create_task(self._list_models(session))
        ids = await asyncio.shield(state.models_check)
        state.model_listed = None if ids is None else self.model in ids
        return state.model_listed is not False

    async def _list_models(self, session: aiohttp.ClientSession) -> set | None:
        try:
            _, ids = await self._get_models(session)
        except _AttemptError:
            return None
        return None if ids is None else set(ids)

    async def served_models(self) -> tuple[int, list[str] | None]:
        """``GET {base_url}/models`` through this client's pool of the running loop, as scoring requests go:
        its timeout (within ``deadline_s``), reply size cap and redirect policy, and its API key.

        Returns:
            The reply's HTTP status, and the model ids it lists (None unless it is a 200 with a model list).

        Raises:
            TRMRequestError: When no whole reply came (``timeout``, ``connection``, or ``bad_response``: a
                redirect loop, a reply over ``max_reply_bytes``).
        """
        return await self._get_models(await self._session(self._state(asyncio.get_running_loop())))

    async def _get_models(self, session: aiohttp.ClientSession) -> tuple[int, list[str] | None]:
        url, timeout_s = f"{self.base_url}/models", min(self.timeout_s, self.deadline_s)
        status, raw, _ = await _once_more_if_stale(lambda: self._send(session, "GET", url, timeout_s, _Attempt()))
        return status, _model_ids(raw) if status == 200 else None

    async def _send(
        self, session: aiohttp.ClientSession, method: str, url: str, timeout_s: float, context: _Attempt,
        data: bytes | None = None,
    ) -> tuple[int, bytes, float | None]:
        """One HTTP request, the one way every request goes: ``timeout_s`` for all of it, the reply read up to
        ``max_reply_bytes`` after decompression, and aiohttp's redirects (at most 10; the ``Authorization``
        header is dropped when one leads to another host, port or scheme).

        Returns:
            The status, the body and ``Retry-After`` in seconds (None when absent).

        Raises:
            _AttemptError: ``timeout``, ``connection`` / ``stale_connection`` (a pooled connection the server had
                closed), or ``bad_response`` (not retried) for a redirect loop or a reply over the cap.
        """
        try:
            async with session.request(method, url, data=data, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                       trace_request_ctx=context) as resp:
                if resp.status >= 500 and resp.connection is not None:
                    # uvicorn (verl's router) drops the connection after an error: keep it out of the pool, which
                    # aiohttp returns it to as soon as the body is read
                    resp.connection.protocol.force_close()
                raw = await _read_capped(resp, self.max_reply_bytes)
                return resp.status, raw, _retry_after_s(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise _AttemptError("timeout", f"no reply within {timeout_s:.3g}s", retryable=True, alive=False) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            kind = "stale_connection" if context.reused else "connection"
            raise _AttemptError(kind, f"{type(exc).__name__}: {exc}", retryable=True, alive=False) from None
        except aiohttp.TooManyRedirects:  # permanent: the same request loops again
            raise _AttemptError("bad_response", "a redirect loop", retryable=False) from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages name host and port, never the request headers.
            raise _AttemptError("connection", f"{type(exc).__name__}: {exc}", retryable=True, alive=False) from None

    async def _probe(self, state: _LoopState) -> None:
        """The open breaker's probe: one small chat request; any reply but a 5xx closes the breaker."""
        self.stats.probes += 1
        payload = {"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1,
                   "temperature": 0.0}
        session = await self._session(state)
        body = json.dumps(payload).encode()
        try:
            status, _, _ = await _once_more_if_stale(
                lambda: self._send(session, "POST", self.url, self.timeout_s, _Attempt(), data=body))
            alive = status < 500
        except _AttemptError as exc:
            alive = exc.alive
        now = asyncio.get_running_loop().time()
        state.breaker.probing = False
        if alive:
            state.breaker.record(True, now)
            logger.warning("thinking reward model answers again; the circuit breaker is closed")
        elif state.breaker.is_open:
            state.breaker.opened_at = now  # another cool-down before the next probe
