"""The v1 trainer path (verl's default, ``trainer.use_v1=true``): its samples live in TransferQueue.

verl 0.9.1's ``PPOTrainer._compute_advantage`` fetches uid, masks, scores and log-probs only; for trust_grpo
the reward extra info is fetched too, for the same keys, and verl's method then runs with the trainer's step.
Multi-output sessions get verl's GRPO treatment, and the training-rollout dumps gain R^o, R^t and the TRM
status. Each attribute patched here is declared in :data:`.hooks.TOUCH_POINTS` (``docs/verl_integration.md``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from sophiavl_verl.config import TRUST_GRPO, is_trust_grpo
from sophiavl_verl.integration import hooks
from sophiavl_verl.integration.advantage import (
    TRUST_GRPO_SESSIONS,
    StepContext,
    current_step_context,
    step_context,
    wrap_compute_advantage,
)

__all__ = ["PATCHES", "fetch_reward_extra_info"]


def fetch_reward_extra_info(batch: Any) -> dict[str, list[Any]]:
    """The reward extra info of a v1 batch, as per-sample columns aligned with ``batch.keys``.

    Uses verl's TransferQueue client as the v1 trainer's validation does (``select_fields=["extra_fields"]``;
    each sample's ``extra_fields["reward_extra_info"]``), reading the field with ``list(...)`` and verl's
    ``unwrap_non_tensor_data``, which take every container a storage backend returns (a ``NonTensorStack``
    of ``NonTensorData``, a list of dicts). A key absent from a sample is ``None`` there (missing, never 0).
    """
    import transfer_queue as tq
    from verl.utils.tensordict_utils import unwrap_non_tensor_data

    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    rows = [
        (fields.get("reward_extra_info") or {}) if isinstance(fields, dict) else {}
        for fields in map(unwrap_non_tensor_data, list(data.pop("extra_fields")))
    ]
    keys = sorted({key for row in rows for key in row})
    return {key: np.array([row.get(key) for row in rows], dtype=object) for key in keys}


def _wrap_compute_advantage_method(original: Callable[..., Any]) -> Callable[..., Any]:
    """``PPOTrainer._compute_advantage`` that also fetches the reward extra info for trust_grpo."""

    @functools.wraps(original)
    def _compute_advantage(self: Any, batch: Any, metrics: dict) -> Any:
        if not is_trust_grpo(self.config.algorithm):
            return original(self, batch, metrics)
        with step_context(StepContext(self, fetch_reward_extra_info(batch), metrics)):
            return original(self, batch, metrics)

    return _compute_advantage


def _wrap_multi_trajectories(original: Callable[..., Any]) -> Callable[..., Any]:
    """``compute_advantage_for_multi_trajectories``, giving trust_grpo verl's GRPO session treatment.

    verl counts each ``{uid}_{session_id}`` once in GRPO (its final output), while the agent loop copies
    the reward extra info onto every output of a session. For trust_grpo this runs verl's own GRPO branch
    with :data:`.advantage.TRUST_GRPO_SESSIONS` as the estimator (equal to ``"grpo"``), whose
    ``compute_advantage`` call then reaches the trust_grpo estimator with the final outputs' rows.
    """

    @functools.wraps(original)
    def compute_advantage_for_multi_trajectories(
        data: Any, batch_keys: list[str], adv_estimator: Any, **kwargs: Any
    ) -> Any:
        if getattr(adv_estimator, "value", adv_estimator) != TRUST_GRPO:
            return original(data, batch_keys=batch_keys, adv_estimator=adv_estimator, **kwargs)
        context = current_step_context()
        if context.reward_extra_info is not None:
            # Rows follow batch_keys; verl's select_idxs then keeps the extra info of the rows it keeps.
            data.non_tensor_batch.update({k: np.asarray(v, dtype=object) for k, v in context.reward_extra_info.items()})
        with step_context(dataclasses.replace(context, reward_extra_info=None)):
            return original(data, batch_keys=batch_keys, adv_estimator=TRUST_GRPO_SESSIONS, **kwargs)

    return compute_advantage_for_multi_trajectories


_DUMP_BATCH: contextvars.ContextVar[Any] = contextvars.ContextVar("sophiavl_dump_batch", default=None)


def _wrap_log_rollout_data(original: Callable[..., Any]) -> Callable[..., Any]:
    """``PPOTrainer._log_rollout_data`` with its batch visible to :func:`_wrap_dump_generations`."""

    @functools.wraps(original)
    def _log_rollout_data(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_trust_grpo(self.config.algorithm):
            return original(self, batch, *args, **kwargs)
        token = _DUMP_BATCH.set(batch)
        try:
            return original(self, batch, *args, **kwargs)
        finally:
            _DUMP_BATCH.reset(token)

    return _log_rollout_data


def _wrap_dump_generations(original: Callable[..., Any]) -> Callable[..., Any]:
    """``PPOTrainer._dump_generations`` whose training-rollout rows also carry the reward extra info.

    verl 0.9.1's v1 trainer dumps validation samples with their reward extra info but training rollouts
    with uid, input, output, ground truth and score only; R^o, R^t and the TRM status of each response
    are what a user audits a Trust-GRPO run by, so they are added here (as the legacy trainer dumps them).
    """

    @functools.wraps(original)
    def _dump_generations(self: Any, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path) -> Any:
        batch = _DUMP_BATCH.get()
        if batch is not None:
            extra = fetch_reward_extra_info(batch)
            position = {key: i for i, key in enumerate(batch.keys)}
            order = [position[key] for key in reward_extra_infos_dict["uid"]]
            reward_extra_infos_dict = {
                **{name: [column[i] for i in order] for name, column in extra.items()},
                **reward_extra_infos_dict,
            }
        return original(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path)

    return _dump_generations


def _patch_utils(module: ModuleType) -> None:
    hooks.patch(module, "compute_advantage", wrap_compute_advantage)  # wrapped already if ray_trainer was patched
    hooks.patch(module, "compute_advantage_for_multi_trajectories", _wrap_multi_trajectories)


def _patch_trainer_base(module: ModuleType) -> None:
    hooks.patch(module, "PPOTrainer._compute_advantage", _wrap_compute_advantage_method)
    hooks.patch(module, "PPOTrainer._log_rollout_data", _wrap_log_rollout_data)
    hooks.patch(module, "PPOTrainer._dump_generations", _wrap_dump_generations)
    # Its own binding of the v1 utils function (wrapped already if v1.utils was imported through the hook).
    hooks.patch(module, "compute_advantage_for_multi_trajectories", _wrap_multi_trajectories)


#: verl module -> what is patched when it is first imported.
PATCHES: dict[str, Callable[[ModuleType], None]] = {
    hooks.V1_UTILS: _patch_utils,
    hooks.V1_TRAINER: _patch_trainer_base,
}
