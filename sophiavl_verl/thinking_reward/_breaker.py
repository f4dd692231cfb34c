"""The circuit breaker of one client on one event loop."""

from __future__ import annotations


class CircuitBreaker:
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
