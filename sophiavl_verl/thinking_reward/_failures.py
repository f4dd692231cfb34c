"""The kinds of failure of a thinking-reward request, declared once: :class:`TRMFailure`.

A failed item scores NaN, never 0. Its kind is the key of ``TRMStats.failures`` (failed items) and
``TRMStats.errors`` (failed attempts, retried ones included), and names the metric ``trm/failed_<kind>``.
"""

from __future__ import annotations

import enum

__all__ = ["TRMFailure", "TRMRequestError"]


class TRMFailure(str, enum.Enum):
    """A kind of failure; ``value`` is the string the stats and metrics use.

    Attributes:
        meaning: What happened, in one line.
        retried: Whether and how the client tries again.
    """

    meaning: str
    retried: str

    def __new__(cls, value: str, meaning: str, retried: str) -> TRMFailure:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        member.retried = retried
        return member

    TIMEOUT = ("timeout", "no reply to one request within `timeout_s`", "yes")
    CONNECTION = ("connection", "the connection was refused or reset", "yes")
    STALE_CONNECTION = (
        "stale_connection", "a pooled connection the server had closed (counted in `stats.errors` only)",
        "at once on a fresh connection, no retry spent")
    HTTP_5XX = ("http_5xx", "HTTP 5xx", "yes")
    HTTP_429 = ("http_429", "HTTP 429", "yes, `Retry-After` (seconds) honoured up to the deadline")
    HTTP_408 = ("http_408", "HTTP 408", "yes, `Retry-After` (seconds) honoured up to the deadline")
    ROUTER_500 = (
        "router_500", "the bodiless 500 of verl's reward router (hosting mode A), answered for any failed upstream "
        "request, 4xx included", "once, then `upstream_rejected` if the TRM answers other requests")
    UPSTREAM_REJECTED = (
        "upstream_rejected", "verl's router answered its bodiless 500 again for the same request while the TRM "
        "answered other requests: the upstream refuses it", "no")
    CONTEXT_LENGTH = (
        "context_length", "an error body naming the context length (vLLM's, OpenAI's wording; any status)", "no")
    UNKNOWN_MODEL = (
        "unknown_model", "an error body naming an unknown model (any status), or, behind verl's router, "
        "`GET /models` does not list it", "no")
    HTTP_4XX = ("http_4xx", "any other HTTP 4xx (bad request, auth)", "no")
    BAD_RESPONSE = (
        "bad_response", "a reply that is no chat completion (empty body, invalid JSON or UTF-8, JSON nested too "
        "deep, no choices, no string message content); or a reply over `max_reply_bytes` (after decompression), "
        "or a redirect loop", "once (a proxy or transport glitch); never for an oversized reply or a redirect loop")
    UNPARSEABLE = (
        "unparseable", "a well-formed reply without one unambiguous score (see `parse_score`)",
        "no (temperature 0: the same prompt gives the same text)")
    TRUNCATED = (
        "truncated", "a reply cut at `max_tokens` (`finish_reason: \"length\"`) without a complete "
        "`<answer>x</answer>`", "no")
    OUT_OF_RANGE = ("out_of_range", "a score outside [0, 1] (unless `clip_scores`)", "no")
    DEADLINE = (
        "deadline", "the call's `deadline_s` ran out (waiting for a slot, in a request or backing off)", "—")
    CIRCUIT_OPEN = ("circuit_open", "not sent: the circuit breaker is open", "—")
    BAD_INPUT = (
        "bad_input", "the item cannot be sent (a question or response that is not a string, an image that cannot "
        "be read or is not an image); nothing is sent for it", "no")


class TRMRequestError(Exception):
    """A request to the TRM endpoint that got no usable reply; ``kind`` is the value of its :class:`TRMFailure`."""

    kind: str


class AttemptError(TRMRequestError):
    """One failed attempt. ``retryable`` says whether to try again; ``alive`` whether the reply shows that the
    server answers (only timeouts, connection errors and 5xx count for the breaker)."""

    def __init__(
        self, kind: TRMFailure, detail: str, *, retryable: bool, retry_after: float | None = None, alive: bool = True
    ):
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind.value
        self.retryable = retryable
        self.retry_after = retry_after
        self.alive = alive


class BadInput(ValueError):
    """An item that cannot be sent (:attr:`TRMFailure.BAD_INPUT`); nothing is sent for it."""
