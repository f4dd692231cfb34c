"""verl's registered ``trust_grpo`` advantage estimator: the reward extra info in, the advantages and metrics out.

The math is :func:`sophiavl_verl.trust_grpo.trust_grpo_advantages` (Eq. 1-6, no verl). This module is
the verl side: it reads R^o and R^t from the per-sample reward extra info the ``sophiavl`` reward
manager writes (:mod:`sophiavl_verl.keys`), computes the step's annealing factor from the trainer's
step, leaves verl's padding rows out of the metrics, and reports ``trust_grpo/*`` and ``trm/*``.
verl 0.9.1 passes none of the extra info, the step or a metrics dict to an estimator;
:mod:`sophiavl_verl.integration.advantage` adds them (``docs/verl_integration.md``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from sophiavl_verl.annealing import get_schedule
from sophiavl_verl.config import TRUST_GRPO, TrustGRPOConfig
from sophiavl_verl.keys import (
    OUTCOME_KEY,
    PAD_UID_PATTERN,
    THINKING_KEY,
    TRM_COST_COLUMNS,
    TRM_FAILURE_KEY,
    TRM_LATENCY_KEY,
    TRM_STATUS_KEY,
)
from sophiavl_verl.thinking_reward import quantile
from sophiavl_verl.trust_grpo import GroupTrust, as_float64_column, trust_grpo_advantages

__all__ = ["compute_trust_grpo_advantage", "trust_grpo_advantage_estimator"]

_PAD_UID = re.compile(PAD_UID_PATTERN)


def _column(non_tensor_batch: dict[str, Any], key: str, size: int) -> torch.Tensor:
    """A per-sample float column of the reward extra info; ``None`` entries become NaN (missing)."""
    values = non_tensor_batch[key]
    if len(values) != size:
        raise ValueError(f"reward extra info {key!r} has {len(values)} rows, the batch has {size}")
    return as_float64_column(values, f"reward extra info {key!r}")


def _read_rewards(
    non_tensor_batch: dict[str, Any] | None, scores: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """R^o and R^t of every response from the reward extra info, validated row by row."""
    if non_tensor_batch is None:
        from sophiavl_verl.integration.adapter import adapter_missing_reason

        raise RuntimeError(f"trust_grpo got no reward extra info from verl: {adapter_missing_reason()}")
    size = scores.shape[0]
    if OUTCOME_KEY in non_tensor_batch:
        outcome = _column(non_tensor_batch, OUTCOME_KEY, size)
    else:
        outcome = scores.detach().to("cpu", torch.float64)
    if THINKING_KEY in non_tensor_batch:
        thinking = _column(non_tensor_batch, THINKING_KEY, size)
    elif alpha == 0:
        thinking = torch.full((size,), math.nan, dtype=torch.float64)
    else:
        raise KeyError(
            f"trust_grpo needs the per-sample reward extra info {THINKING_KEY!r}, which the batch lacks "
            f"(it has {sorted(non_tensor_batch)}). Use reward.reward_manager.name=sophiavl, or a reward "
            f"manager that writes {THINKING_KEY!r} (NaN for a missing score)."
        )
    return outcome, thinking


def _padding_groups(index: np.ndarray, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """`(torch.Tensor)` bool, shape (num_groups,): the groups of rows verl adds to pad a batch.

    Their uid is ``padding_utils``'s; one uid per group is checked (a row of each), not every row.
    """
    first = torch.full((num_groups,), len(group), dtype=torch.int64)
    first = first.scatter_reduce(0, group, torch.arange(len(group)), reduce="amin")
    uids = np.asarray(index, dtype=object)[first.numpy()]
    return torch.tensor(
        [isinstance(uid, str) and uid.startswith("pad") and _PAD_UID.fullmatch(uid) is not None for uid in uids],
        dtype=torch.bool,
    )


def _metrics(
    trust: GroupTrust,
    thinking: torch.Tensor,
    thinking_term: torch.Tensor,
    outcome: torch.Tensor,
    group: torch.Tensor,
    *,
    anneal: float,
    cfg: TrustGRPOConfig,
    non_tensor_batch: dict[str, Any],
    real_groups: torch.Tensor,
) -> dict[str, float]:
    """Per-step metrics of the estimator (``trust_grpo/*``) and the thinking reward model (``trm/*``).

    Only ``real_groups`` (``(num_groups,)`` bool) count: verl's padding rows copy a real sample's extra info.
    """
    real = real_groups[group]
    mixed = trust.mixed & real_groups
    scored = ~torch.isnan(thinking) & real
    metrics = {
        "trust_grpo/anneal": anneal,
        "trust_grpo/mixed_group_frac": mixed.double().sum().item() / max(int(real_groups.sum()), 1),
        "trust_grpo/thinking_term_mean": thinking_term[real].mean().item(),
        "trust_grpo/thinking_missing_frac": 1.0 - scored.double().sum().item() / max(int(real.sum()), 1),
    }
    if mixed.any():
        gamma_mixed = trust.gamma[mixed]
        metrics["trust_grpo/gamma_mean"] = gamma_mixed.mean().item()
        metrics["trust_grpo/gamma_min"] = gamma_mixed.min().item()
        metrics["trust_grpo/untrusted_group_frac"] = trust.untrusted[mixed].double().mean().item()
        metrics["trust_grpo/mu_correct"] = trust.mu_correct[mixed].mean().item()
        metrics["trust_grpo/mu_wrong"] = trust.mu_wrong[mixed].mean().item()

    correct = outcome >= cfg.correct_threshold
    for name, members in (("correct", scored & correct), ("wrong", scored & ~correct)):
        if members.any():
            metrics[f"trm/thinking_reward_{name}_mean"] = thinking[members].mean().item()
    keep = real.numpy()
    if TRM_STATUS_KEY in non_tensor_batch:
        status = np.asarray(non_tensor_batch[TRM_STATUS_KEY], dtype=object)[keep]
        metrics["trm/requests"] = float(np.sum(status != "skipped"))
        metrics["trm/skipped"] = float(np.sum(status == "skipped"))
        metrics["trm/failed"] = float(np.sum(status == "failed"))
    if TRM_FAILURE_KEY in non_tensor_batch:
        kinds = Counter(str(kind) for kind in np.asarray(non_tensor_batch[TRM_FAILURE_KEY], dtype=object)[keep] if kind)
        metrics.update({f"trm/failed_{kind}": float(n) for kind, n in sorted(kinds.items())})
    for _, key, metric in TRM_COST_COLUMNS:
        if key in non_tensor_batch:
            metrics[metric] = float(np.nansum(_column(non_tensor_batch, key, len(thinking)).numpy()[keep]))
    if TRM_LATENCY_KEY in non_tensor_batch:
        latency = _column(non_tensor_batch, TRM_LATENCY_KEY, len(thinking)).numpy()[keep]
        latency = latency[~np.isnan(latency)]
        if latency.size:
            metrics["trm/latency_p50_s"] = quantile(latency.tolist(), 0.50)
            metrics["trm/latency_p95_s"] = quantile(latency.tolist(), 0.95)
    return metrics


def compute_trust_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any,
    *,
    non_tensor_batch: dict[str, Any],
    global_step: int,
    total_training_steps: int | None,
    norm_adv_by_std_in_grpo: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Trust-GRPO advantages of a batch, with the step's metrics.

    Args:
        token_level_rewards: `(torch.Tensor)` shape (bs, response_length). Summed per response it is
            the base score (R^o, minus the KL penalty if ``use_kl_in_reward``), as in verl's GRPO.
        response_mask: `(torch.Tensor)` shape (bs, response_length).
        index: `(np.ndarray)` shape (bs,). verl's ``uid`` per response.
        config: verl's ``algorithm`` config node (reads ``trust_grpo`` and ``norm_adv_by_std_in_grpo``).
        non_tensor_batch: Per-sample reward extra info with ``OUTCOME_KEY`` (optional: correctness
            falls back to the base score) and ``THINKING_KEY`` (required unless α = 0).
        global_step: verl's global training step (1-based; restored on resume).
        total_training_steps: The run's total steps, T when ``anneal_steps`` is null.
        norm_adv_by_std_in_grpo: Overrides ``config.norm_adv_by_std_in_grpo`` when given.

    Returns:
        advantages: `(torch.Tensor)` shape (bs, response_length).
        returns: `(torch.Tensor)` shape (bs, response_length).
        metrics: ``trust_grpo/*`` and ``trm/*`` scalars for verl's tracker.
    """
    cfg = TrustGRPOConfig.from_algorithm_config(config)
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = (config or {}).get("norm_adv_by_std_in_grpo", True)
    scores = token_level_rewards.sum(dim=-1, dtype=torch.float64)  # bf16 rewards exactly, never rounded to bf16
    outcome, thinking = _read_rewards(non_tensor_batch, scores, cfg.alpha)
    anneal = get_schedule(cfg.schedule)(global_step, cfg.anneal_total_steps(total_training_steps))
    result = trust_grpo_advantages(
        scores, outcome, thinking, response_mask, index, config=cfg, anneal=anneal,
        norm_by_std=norm_adv_by_std_in_grpo, names=(OUTCOME_KEY, THINKING_KEY),
    )
    num_groups = len(result.trust.gamma)
    metrics = _metrics(
        result.trust, thinking, result.thinking_term, outcome, result.group, anneal=anneal, cfg=cfg,
        non_tensor_batch=non_tensor_batch, real_groups=~_padding_groups(index, result.group, num_groups),
    )
    advantages, returns = result.advantages, result.returns
    return advantages, returns, metrics


@register_adv_est(TRUST_GRPO)
def trust_grpo_advantage_estimator(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
    non_tensor_batch: dict[str, Any] | None = None,
    global_step: int | None = None,
    total_training_steps: int | None = None,
    metrics: dict[str, Any] | None = None,
    norm_adv_by_std_in_grpo: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's registered ``trust_grpo`` estimator: :func:`compute_trust_grpo_advantage` in verl's contract.

    verl 0.9.1 calls registered estimators with only ``token_level_rewards, response_mask, config,
    index``; the plugin's ``compute_advantage`` wrapper (:mod:`.advantage`) adds ``non_tensor_batch``,
    ``global_step``, ``total_training_steps`` and a ``metrics`` dict that receives the step's metrics. Called
    without them (the wrapper is not installed), it raises and says why.

    Returns:
        advantages: `(torch.Tensor)` shape (bs, response_length).
        returns: `(torch.Tensor)` shape (bs, response_length).
    """
    if non_tensor_batch is None or global_step is None:
        from sophiavl_verl.integration.adapter import adapter_missing_reason

        raise RuntimeError(f"trust_grpo was called without its inputs: {adapter_missing_reason()}")
    advantages, returns, step_metrics = compute_trust_grpo_advantage(
        token_level_rewards,
        response_mask,
        index,
        config,
        non_tensor_batch=non_tensor_batch,
        global_step=global_step,
        total_training_steps=total_training_steps,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
    )
    if metrics is not None:
        metrics.update(step_metrics)
    return advantages, returns
