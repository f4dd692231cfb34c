"""The legacy trainer path (``trainer.use_v1=false``, verl's ``RayPPOTrainer``).

That trainer already merges the reward extra info into ``batch.non_tensor_batch`` before
``compute_advantage``; its ``fit`` is wrapped only to expose the trainer's step and T, and
``compute_data_metrics`` (called by ``fit`` right after the advantage) to log the estimator's metrics.
Each attribute patched here is declared in :data:`.hooks.TOUCH_POINTS` (``docs/verl_integration.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

from sophiavl_verl.integration import hooks
from sophiavl_verl.integration.advantage import METRICS_META_KEY, StepContext, step_context, wrap_compute_advantage

__all__ = ["PATCHES"]


def _wrap_fit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``RayPPOTrainer.fit`` run with the trainer exposed as the step source."""

    @functools.wraps(original)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        with step_context(StepContext(self)):
            return original(self, *args, **kwargs)

    return fit


def _wrap_compute_data_metrics(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl's ``compute_data_metrics`` plus the estimator metrics parked in ``batch.meta_info``."""

    @functools.wraps(original)
    def compute_data_metrics(batch: Any, use_critic: bool = True) -> dict[str, Any]:
        metrics = original(batch=batch, use_critic=use_critic)
        metrics.update(batch.meta_info.pop(METRICS_META_KEY, {}))
        return metrics

    return compute_data_metrics


def _patch_ray_trainer(module: ModuleType) -> None:
    hooks.patch(module, "compute_advantage", wrap_compute_advantage)  # shared: v1.utils imports this binding
    hooks.patch(module, "compute_data_metrics", _wrap_compute_data_metrics)
    hooks.patch(module, "RayPPOTrainer.fit", _wrap_fit)


#: verl module -> what is patched when it is first imported.
PATCHES: dict[str, Callable[[ModuleType], None]] = {hooks.RAY_TRAINER: _patch_ray_trainer}
