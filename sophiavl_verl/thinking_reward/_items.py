"""What the client is asked to score (:class:`ThinkingRewardItem`) and what it answers per item (:class:`TRMResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sophiavl_verl.thinking_reward._failures import BadInput

__all__ = ["TRMResult", "ThinkingRewardItem", "check_item"]


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
        failure: The kind of failure (a value of :class:`~sophiavl_verl.thinking_reward.TRMFailure`); ``None``
            when scored.
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


def check_item(item: Any) -> None:
    """Raise :class:`BadInput` naming what is wrong with an item that cannot be sent."""
    if not isinstance(item, ThinkingRewardItem):
        raise BadInput(f"not a ThinkingRewardItem but a {type(item).__name__}")
    for name in ("question", "response"):
        value = getattr(item, name)
        if not isinstance(value, str):
            raise BadInput(f"its {name} is a {type(value).__name__}, not a string")
    if not isinstance(item.images, (tuple, list)):
        raise BadInput(f"its images are a {type(item.images).__name__}, not a tuple")

