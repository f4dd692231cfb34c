"""verl's ``compute_advantage`` given trust_grpo's inputs: the part both trainer paths share.

verl 0.9.1 calls a registered estimator with ``token_level_rewards, response_mask, config, index`` only. For
``adv_estimator == "trust_grpo"`` the wrapper of :func:`wrap_compute_advantage` also passes the reward extra
info, the trainer's step, T and a metrics dict, which the trainer path in use put in a :class:`StepContext`
(:mod:`.trainer_v1`, :mod:`.trainer_legacy`; other loops use :func:`trainer_step`). Every other estimator goes
to verl's function untouched. Why and where: ``docs/verl_integration.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from sophiavl_verl.config import TRUST_GRPO

__all__ = ["METRICS_META_KEY", "OUTSIDE_TRAINER_STEP", "TRUST_GRPO_SESSIONS", "StepContext", "step_context",
           "trainer_step", "wrap_compute_advantage"]

#: Where the legacy path parks the estimator's metrics between compute_advantage and compute_data_metrics.
METRICS_META_KEY = "sophiavl_trust_grpo_metrics"


class _TrustGRPOSessions(str):
    """An ``adv_estimator`` equal to ``"grpo"`` (so verl's multi-output session branch runs) that the
    compute_advantage wrapper sends to trust_grpo."""


#: What :mod:`.trainer_v1` passes as ``adv_estimator`` to verl's ``compute_advantage_for_multi_trajectories``.
TRUST_GRPO_SESSIONS = _TrustGRPOSessions("grpo")


class TrainingProgress(Protocol):
    """What the estimator reads of a trainer; verl's trainers have both attributes."""

    global_steps: int
    total_training_steps: int


@dataclass
class StepContext:
    """What trust_grpo needs from the trainer step it runs in.

    Attributes:
        progress: The step and T (a verl trainer).
        reward_extra_info: Per-sample columns; None: read ``data.non_tensor_batch``.
        metrics: Receives the estimator's metrics; None: they are parked in ``data.meta_info``.
    """

    progress: TrainingProgress
    reward_extra_info: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


#: Why trust_grpo has no step when it runs with the adapter installed but outside any trainer step.
OUTSIDE_TRAINER_STEP = (
    "it was called outside a verl trainer step; verl's trainers provide the step, other callers "
    "wrap the call in sophiavl_verl.integration.trainer_step(...)"
)

_STEP_CONTEXT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("sophiavl_step", default=None)


@dataclass
class _FixedProgress:
    global_steps: int
    total_training_steps: int | None


@contextlib.contextmanager
def step_context(context: StepContext) -> Iterator[None]:
    """Run the enclosed code with ``context`` as the current trainer step."""
    token = _STEP_CONTEXT.set(context)
    try:
        yield
    finally:
        _STEP_CONTEXT.reset(token)


def current_step_context() -> StepContext:
    """The current trainer step; raises outside one."""
    context = _STEP_CONTEXT.get()
    if context is None:
        raise RuntimeError(f"trust_grpo does not know the global step: {OUTSIDE_TRAINER_STEP}")
    return context


@contextlib.contextmanager
def trainer_step(
    global_step: int,
    total_training_steps: int | None = None,
    *,
    reward_extra_info: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Iterator[None]:
    """Run verl's ``compute_advantage`` for trust_grpo outside verl's trainers (other loops, tests).

    Args:
        global_step: The training step the anneal schedule sees.
        total_training_steps: T when ``algorithm.trust_grpo.anneal_steps`` is null.
        reward_extra_info: Per-sample columns to use instead of ``data.non_tensor_batch``.
        metrics: A dict that receives the estimator's metrics (else ``data.meta_info``).
    """
    with step_context(StepContext(_FixedProgress(global_step, total_training_steps), reward_extra_info, metrics)):
        yield


def wrap_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl's ``compute_advantage``, with trust_grpo called with its extra inputs (PR #7473 + step)."""

    @functools.wraps(original)
    def compute_advantage(
        data: Any,
        adv_estimator: Any,
        gamma: float = 1.0,
        lam: float = 1.0,
        num_repeat: int = 1,
        norm_adv_by_std_in_grpo: bool = True,
        config: Any = None,
    ) -> Any:
        name = getattr(adv_estimator, "value", adv_estimator)
        if name != TRUST_GRPO and not isinstance(adv_estimator, _TrustGRPOSessions):
            return original(
                data,
                adv_estimator,
                gamma=gamma,
                lam=lam,
                num_repeat=num_repeat,
                norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
                config=config,
            )
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        from verl.trainer.ppo.ray_trainer import compute_response_mask

        context = current_step_context()
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = compute_response_mask(data)
        metrics: dict[str, Any] = {}
        advantages, returns = get_adv_estimator_fn(TRUST_GRPO)(
            token_level_rewards=data.batch["token_level_rewards"],
            response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch["uid"],
            config=config,
            non_tensor_batch=(
                data.non_tensor_batch if context.reward_extra_info is None else context.reward_extra_info
            ),
            global_step=context.progress.global_steps,
            total_training_steps=context.progress.total_training_steps,
            metrics=metrics,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        )
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        if context.metrics is not None:
            context.metrics.update(metrics)
        else:
            data.meta_info[METRICS_META_KEY] = metrics
        return data

    return compute_advantage
