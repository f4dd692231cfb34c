"""What a :class:`~sophiavl_verl.thinking_reward.ThinkingRewardClient` counts, and the package's one quantile."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LATENCY_WINDOW", "TRMStats", "quantile"]

#: How many request latencies a client keeps for its p50/p95.
LATENCY_WINDOW = 65536


@dataclass
class TRMStats:
    """Counters of a :class:`~sophiavl_verl.thinking_reward.ThinkingRewardClient` (reset them once per training step).

    Attributes:
        items: Items asked for.
        scored: Items that got a score.
        requests: HTTP requests sent for items (first attempts and retries).
        retries: Requests that were retries.
        failed: Items that ended NaN.
        failures: Failed items by the kind of their failure (a value of
            :class:`~sophiavl_verl.thinking_reward.TRMFailure`).
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
