"""The group-outcome board: where a response waits for its group's outcomes under a skip query policy.

verl's reward loop sends each response to a random reward worker, so the outcomes of a group meet on one
board per cluster: a named Ray actor (:data:`BOARD_ACTOR_NAME`), or a process-local board outside Ray.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BOARD_ACTOR_NAME", "GroupOutcomeBoard", "group_board"]

BOARD_ACTOR_NAME = "sophiavl_group_outcome_board"


@dataclass
class _Group:
    outcomes: list[float] = field(default_factory=list)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0


class GroupOutcomeBoard:
    """Collects the outcome rewards of a group's responses until the group is complete.

    Used in-process, or as a Ray actor (one per cluster, named ``sophiavl_group_outcome_board``)
    when reward workers run under Ray, because verl sends each response to a random reward worker.
    """

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._last_arrival = -math.inf  # event-loop time of the latest arrival of any group

    async def arrive(
        self, uid: str, outcome: float, group_size: int, timeout_s: float, idle_s: float | None = None
    ) -> list[float] | None:
        """Post one response's R^o and wait for its group.

        The wait ends when the group has ``group_size`` outcomes, when ``timeout_s`` has passed, or
        when no response of any group has arrived for ``idle_s`` (every response still to come is
        being generated, if any: a group short of members then is one that may never complete;
        ``None``: no such release).

        Returns:
            The outcomes of all ``group_size`` responses (in arrival order), or ``None`` if the wait
            ended before the group was complete.
        """
        loop = asyncio.get_running_loop()
        self._last_arrival = loop.time()
        deadline = self._last_arrival + timeout_s
        group = self._groups.setdefault(uid, _Group())
        group.outcomes.append(float(outcome))
        if len(group.outcomes) >= group_size:
            group.complete.set()
        group.waiting += 1
        try:
            while not group.complete.is_set():
                # Re-armed after every wake-up: an arrival elsewhere moves the quiet deadline.
                quiet = math.inf if idle_s is None else self._last_arrival + idle_s
                remaining = min(deadline, quiet) - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(group.complete.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    pass
            return list(group.outcomes)
        finally:
            group.waiting -= 1
            if group.waiting == 0:
                # Complete, or timed out (a late arrival then waits anew and is scored as under `all`).
                self._groups.pop(uid, None)

    def pending_groups(self) -> int:
        """Number of groups currently held (for tests and leak checks)."""
        return len(self._groups)


_board: Any = None  # this process's board (or handle to the cluster's); holding it keeps the actor alive


def group_board() -> Any:
    """The cluster's board (a named Ray actor) inside Ray, else a process-local one."""
    global _board
    import ray

    if _board is None:
        if ray.is_initialized():
            actor = ray.remote(GroupOutcomeBoard).options(
                name=BOARD_ACTOR_NAME, get_if_exists=True, num_cpus=0, max_concurrency=100_000
            )
            _board = _RayBoard(actor.remote())
        else:
            _board = GroupOutcomeBoard()
    return _board


class _RayBoard:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def arrive(
        self, uid: str, outcome: float, group_size: int, timeout_s: float, idle_s: float | None = None
    ) -> list[float] | None:
        return await self._handle.arrive.remote(uid, outcome, group_size, timeout_s, idle_s)
