"""What a reply of the TRM endpoint means: the failure an error reply is, the score a chat completion states."""

from __future__ import annotations

import json
import re

from sophiavl_verl.thinking_reward._failures import AttemptError, TRMFailure
from sophiavl_verl.thinking_reward._prompt import ANSWER, parse_raw_score

#: The whole body of verl 0.9.1's reward router's reply to ANY failed upstream request (hosting mode A):
#: ``NaiveRouter`` re-raises the upstream's HTTP error and Starlette answers its default plain-text 500, so the
#: upstream's status and error body (vLLM's 400 "maximum context length", its 404 for an unknown model, a 503)
#: are lost. The client tells permanent errors apart by other means (see ``ThinkingRewardClient._run_item``).
ROUTER_500_BODY = b"Internal Server Error"

#: Permanent errors recognised in an error body (vLLM's and OpenAI's wording), whatever the status (a proxy
#: may wrap a 4xx in a 5xx): the same request would fail again.
_PERMANENT_ERRORS = (
    (TRMFailure.CONTEXT_LENGTH,
     re.compile(r"context length|maximum model length|max_model_len|longer than the maximum", re.I)),
    (TRMFailure.UNKNOWN_MODEL, re.compile(r"\bmodel\b.{0,200}\bdoes not exist|model_not_found", re.I | re.S)),
)


def _permanent_kind(raw: bytes) -> TRMFailure | None:
    text = raw[:4096].decode("utf-8", "replace")
    for kind, pattern in _PERMANENT_ERRORS:
        if pattern.search(text):
            return kind
    return None


def error_of(status: int, raw: bytes, retry_after: float | None) -> AttemptError:
    """The failure a reply with a status other than 200 is, and whether it is retried."""
    text = raw[:200].decode("utf-8", "replace")
    permanent = _permanent_kind(raw)
    if permanent is not None:
        return AttemptError(permanent, f"{status} {text}", retryable=False)
    if status in (408, 429):
        return AttemptError(TRMFailure(f"http_{status}"), text, retryable=True, retry_after=retry_after)
    if status == 500 and raw.strip() == ROUTER_500_BODY:
        return AttemptError(TRMFailure.ROUTER_500, "500 Internal Server Error", retryable=True, alive=False)
    if status >= 500:
        return AttemptError(TRMFailure.HTTP_5XX, f"{status} {text}", retryable=True, retry_after=retry_after,
                            alive=False)
    return AttemptError(TRMFailure.HTTP_4XX, f"{status} {text}", retryable=False)


def _completion_of(raw: bytes) -> tuple[str, str | None]:
    """The message content and ``finish_reason`` of a chat completion; :class:`AttemptError` (``bad_response``)
    for anything else, whatever the bytes (invalid JSON or UTF-8, nesting too deep to decode, other shapes)."""
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise AttemptError(TRMFailure.BAD_RESPONSE, f"not JSON: {raw[:200]!r}", retryable=True) from None
    choices = reply.get("choices") if isinstance(reply, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise AttemptError(TRMFailure.BAD_RESPONSE, f"no message content in {raw[:200]!r}", retryable=True)
    finish_reason = choice.get("finish_reason")
    return content, finish_reason if isinstance(finish_reason, str) else None


def stated_score(raw: bytes) -> tuple[float, str]:
    """The score a 200 reply states, unclipped, and the reply's text.

    Raises:
        AttemptError: ``bad_response`` (no chat completion), ``truncated`` (cut at ``max_tokens`` without a
            complete ``<answer>x</answer>``) or ``unparseable`` (no unambiguous score).
    """
    content, finish_reason = _completion_of(raw)
    if finish_reason == "length" and not ANSWER.search(content):
        raise AttemptError(TRMFailure.TRUNCATED, f"cut at max_tokens: {content[-200:]!r}", retryable=False)
    value = parse_raw_score(content)
    if value is None:
        raise AttemptError(TRMFailure.UNPARSEABLE, f"no unambiguous score in {content[:200]!r}", retryable=False)
    return value, content
