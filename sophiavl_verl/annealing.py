"""Annealing schedules for the thinking reward (SophiaVL-R1 §3.4, Eq. 5).

The paper multiplies the thinking term by ``e^(-step / T)`` so that the policy leans on the exact
outcome reward late in training. A schedule here is any ``f(step, total_steps) -> float`` where
``step`` is verl's global training step (1 on the first update, restored on resume) and
``total_steps`` is ``T``. Third parties add their own with :func:`register_schedule`::

    from sophiavl_verl.annealing import register_schedule

    @register_schedule("step_half")
    def step_half(step: int, total_steps: int) -> float:
        return 1.0 if step < total_steps // 2 else 0.0

and select it with ``algorithm.trust_grpo.schedule=step_half``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Schedule", "register_schedule", "get_schedule", "available_schedules"]

Schedule = Callable[[int, int], float]

_SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Register an annealing schedule under ``name``.

    Args:
        name: The value users put in ``algorithm.trust_grpo.schedule``.

    Returns:
        A decorator that registers ``f(step, total_steps) -> float`` and returns it unchanged.

    Raises:
        ValueError: If another function is already registered under ``name``.
    """

    def decorator(fn: Schedule) -> Schedule:
        if name in _SCHEDULES and _SCHEDULES[name] is not fn:
            raise ValueError(f"annealing schedule {name!r} is already registered: {_SCHEDULES[name]}")
        _SCHEDULES[name] = fn
        return fn

    return decorator


def get_schedule(name: str) -> Schedule:
    """Return the schedule registered under ``name``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the registered names.
    """
    try:
        return _SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown annealing schedule {name!r}; registered: {available_schedules()}") from None


def available_schedules() -> list[str]:
    """Names of all registered schedules, sorted."""
    return sorted(_SCHEDULES)


@register_schedule("exp")
def exponential(step: int, total_steps: int) -> float:
    """The paper's schedule, ``e^(-step / T)`` (Eq. 5)."""
    return math.exp(-step / total_steps)


@register_schedule("linear")
def linear(step: int, total_steps: int) -> float:
    """``1 - step / T``, reaching 0 at ``T`` and staying there."""
    return max(0.0, 1.0 - step / total_steps)


@register_schedule("cosine")
def cosine(step: int, total_steps: int) -> float:
    """Half a cosine from 1 at step 0 to 0 at ``T``, then 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


@register_schedule("constant")
def constant(step: int, total_steps: int) -> float:
    """No annealing (the paper's "w/o annealing" ablations)."""
    return 1.0
