"""Trust-GRPO (SophiaVL-R1, arXiv 2505.17018, §3.4): trust-weighted thinking reward + GRPO advantage.

For a group of N responses o_1..o_N to one prompt, with outcome rewards R^o_i and thinking rewards
R^t_i in [0, 1] (NaN = missing: the thinking reward model failed or was not asked):

    G_correct = {i : R^o_i >= threshold, R^t_i scored},  G_wrong = {i : R^o_i < threshold, R^t_i scored}
    μ_c = mean_{i in G_correct} R^t_i,  μ_w = mean_{i in G_wrong} R^t_i                     (Eq. 1-2)
    γ = 1 if μ_c >= μ_w else e^(μ_c - μ_w)                                                 (Eq. 3)
    R_i = R^o_i + γ · α · anneal(step) · R^t_i      (a missing R^t_i adds nothing)         (Eq. 5)
    A_i = (R_i - mean(R)) / (std(R) + ε)            (verl's GRPO normalisation)            (Eq. 6)

Everything is vectorised over the batch (scatter-adds over group ids; no Python loop per response
or per group; only the metrics look at one uid per group, for verl's padding rows). The registered
estimator ``trust_grpo`` reads R^o and R^t from the per-sample reward extra info that the ``sophiavl``
reward manager writes; see ``verl_adapter`` for how it gets there.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from verl.trainer.ppo.core_algos import register_adv_est
from verl.utils import group_mean_std

from sophiavl_verl.annealing import get_schedule
from sophiavl_verl.config import TRUST_GRPO, TrustGRPOConfig

__all__ = [
    "OUTCOME_KEY",
    "THINKING_KEY",
    "TRM_STATUS_KEY",
    "TRM_LATENCY_KEY",
    "trust_weighted_rewards",
    "group_normalized_advantage",
    "compute_trust_grpo_advantage",
]

#: Per-sample reward extra info written by the ``sophiavl`` reward manager.
OUTCOME_KEY = "sophiavl_outcome_reward"
THINKING_KEY = "sophiavl_thinking_reward"  # float in [0, 1], NaN = missing
TRM_STATUS_KEY = "sophiavl_trm_status"  # "scored" | "failed" | "skipped"
TRM_LATENCY_KEY = "sophiavl_trm_latency_s"  # NaN when no request was sent
#: The uid verl's ``padding_utils.upsample_batch_to_divisible_size`` gives the rows it adds
#: (``f"pad{uuid.uuid4().hex}"``); they copy a real sample's reward extra info and count in no metric.
PAD_UID_PATTERN = r"pad[0-9a-f]{32}"
_PAD_UID = re.compile(PAD_UID_PATTERN)


class GroupTrust(NamedTuple):
    """Per-group quantities of Eq. 1-3, each of shape (num_groups,)."""

    mu_correct: torch.Tensor  # NaN where the group has no scored correct response
    mu_wrong: torch.Tensor  # NaN where the group has no scored wrong response
    mixed: torch.Tensor  # bool: at least one scored correct and one scored wrong response
    gamma: torch.Tensor  # the multiplier applied to the group's thinking rewards


def _group_trust(
    outcome: torch.Tensor,
    thinking: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    *,
    correct_threshold: float,
    uniform_groups: str,
    use_trust_weight: bool,
) -> GroupTrust:
    """Eq. 1-3 for every group at once (float64 inputs of shape (bs,), ``group`` of ids 0..G-1)."""
    scored = ~torch.isnan(thinking)
    correct = outcome >= correct_threshold
    value = torch.where(scored, thinking, torch.zeros_like(thinking))

    def group_mean(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, members.double())
        total = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, value * members)
        return total / count, count  # NaN where count == 0

    mu_correct, n_correct = group_mean(scored & correct)
    mu_wrong, n_wrong = group_mean(scored & ~correct)
    mixed = (n_correct > 0) & (n_wrong > 0)

    if not use_trust_weight:
        gamma = torch.ones(num_groups, dtype=torch.float64)
    else:
        # NaN comparisons are False, so non-mixed groups land in the exp branch; they are replaced below.
        gamma_mixed = torch.where(mu_correct >= mu_wrong, 1.0, torch.exp(mu_correct - mu_wrong))
        uniform_gamma = 0.0 if uniform_groups == "skip" else 1.0
        gamma = torch.where(mixed, gamma_mixed, torch.full_like(gamma_mixed, uniform_gamma))
    return GroupTrust(mu_correct, mu_wrong, mixed, gamma)


def _group_ids(index: np.ndarray) -> tuple[torch.Tensor, int]:
    """Group ids 0..G-1 of shape (bs,) for verl's uid array, by hashing (pandas.factorize)."""
    codes, uniques = pd.factorize(np.asarray(index, dtype=object), use_na_sentinel=True)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"the group index (uid) of row {row} is missing")
    return torch.from_numpy(codes.astype(np.int64, copy=False)), len(uniques)


def _thinking_terms(
    outcome: torch.Tensor,
    thinking: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    *,
    alpha: float,
    anneal: float,
    correct_threshold: float,
    uniform_groups: str,
    use_trust_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, GroupTrust]:
    """The thinking term γ·α·anneal·R^t of every response (float64, shape (bs,)), its γ, and the group stats."""
    if outcome.ndim != 1 or thinking.shape != outcome.shape or group.shape != outcome.shape:
        raise ValueError(
            f"outcome, thinking and index must be 1-D of one length, got {tuple(outcome.shape)}, "
            f"{tuple(thinking.shape)}, {tuple(group.shape)}"
        )
    thinking64 = thinking.detach().to("cpu", torch.float64)
    trust = _group_trust(
        outcome.detach().to("cpu", torch.float64),
        thinking64,
        group,
        num_groups,
        correct_threshold=correct_threshold,
        uniform_groups=uniform_groups,
        use_trust_weight=use_trust_weight,
    )
    gamma = trust.gamma[group]
    return gamma * (alpha * anneal) * torch.nan_to_num(thinking64, nan=0.0), gamma, trust


def _add_term(base: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``base + term`` in float64, back in ``base``'s dtype and device (exactly ``base`` where term is 0)."""
    return (base.detach().to("cpu", torch.float64) + term).to(device=base.device, dtype=base.dtype)


def trust_weighted_rewards(
    outcome: torch.Tensor,
    thinking: torch.Tensor,
    index: np.ndarray,
    *,
    alpha: float,
    anneal: float = 1.0,
    correct_threshold: float = 0.5,
    uniform_groups: str = "skip",
    use_trust_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trust-weighted reward of every response (Eq. 1-5), vectorised over the batch.

    Args:
        outcome: `(torch.Tensor)` shape (bs,). Outcome rewards R^o.
        thinking: `(torch.Tensor)` shape (bs,). Thinking rewards R^t in [0, 1]; NaN marks a missing
            one, which is excluded from μ_c and μ_w and adds nothing to its response's reward.
        index: `(np.ndarray)` shape (bs,). Group id of each response (verl's ``uid`` array).
        alpha: Weight α of the thinking reward (0.3 in the paper).
        anneal: The annealing factor of the current step, e.g. e^(-step/T).
        correct_threshold: R^o at or above this counts as correct.
        uniform_groups: For a group without at least one scored correct and one scored wrong
            response: ``"skip"`` (no thinking term) or ``"trust"`` (γ = 1).
        use_trust_weight: ``False`` sets γ = 1 everywhere (the "w/o trust weight" ablations).

    Returns:
        rewards: `(torch.Tensor)` shape (bs,), dtype of ``outcome``. R_i of Eq. 5.
        gamma: `(torch.Tensor)` shape (bs,). The multiplier applied to each response's thinking
            reward: its group's γ, 0 for a skipped group.
    """
    term, gamma, _ = _thinking_terms(
        outcome,
        thinking,
        *_group_ids(index),
        alpha=alpha,
        anneal=anneal,
        correct_threshold=correct_threshold,
        uniform_groups=uniform_groups,
        use_trust_weight=use_trust_weight,
    )
    return _add_term(outcome, term), gamma.to(device=outcome.device, dtype=outcome.dtype)


def group_normalized_advantage(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    *,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantage from one scalar score per response (Eq. 6), vectorised.

    Same contract and values as verl's ``compute_grpo_outcome_advantage`` given per-response scores:
    a one-response group has mean 0 and std 1; the std is the unbiased one; the result is float32.

    Args:
        scores: `(torch.Tensor)` shape (bs,). Per-response rewards R_i.
        response_mask: `(torch.Tensor)` shape (bs, response_length).
        index: `(np.ndarray)` shape (bs,). Group id of each response.
        norm_by_std: Divide by the group std (GRPO) or not (Dr.GRPO), as verl's
            ``norm_adv_by_std_in_grpo``.
        epsilon: Added to the std.

    Returns:
        advantages: `(torch.Tensor)` shape (bs, response_length).
        returns: `(torch.Tensor)` shape (bs, response_length), equal to ``advantages``.
    """
    group, _ = _group_ids(index)
    return _normalize(scores, response_mask, group, norm_by_std=norm_by_std, epsilon=epsilon)


def _normalize(
    scores: torch.Tensor, response_mask: torch.Tensor, group: torch.Tensor, *, norm_by_std: bool, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 given group ids; see :func:`group_normalized_advantage`."""
    with torch.no_grad():
        scores = scores.float()  # verl's GRPO works in float32 (and group_mean_std returns float32)
        group = group.to(scores.device)
        mean, std, _ = group_mean_std(scores, group, eps=0.0, device=scores.device)
        centred = scores - mean[group]
        scalars = centred / (std[group] + epsilon) if norm_by_std else centred
        advantages = scalars.unsqueeze(-1) * response_mask
    return advantages, advantages


def _column(non_tensor_batch: dict[str, Any], key: str, size: int) -> torch.Tensor:
    """A per-sample float column of the reward extra info; ``None`` entries become NaN (missing)."""
    values = non_tensor_batch[key]
    if len(values) != size:
        raise ValueError(f"reward extra info {key!r} has {len(values)} rows, the batch has {size}")
    try:
        return torch.from_numpy(np.asarray(values, dtype=np.float64))  # None -> NaN
    except (TypeError, ValueError):
        row = next(i for i, v in enumerate(values) if v is not None and not isinstance(v, (int, float, np.number)))
        raise ValueError(f"reward extra info {key!r} of row {row} is {values[row]!r}, not a number") from None


def _read_rewards(
    non_tensor_batch: dict[str, Any] | None, scores: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """R^o and R^t of every response from the reward extra info, validated row by row."""
    if non_tensor_batch is None:
        from sophiavl_verl.verl_adapter import adapter_missing_reason

        raise RuntimeError(f"trust_grpo got no reward extra info from verl: {adapter_missing_reason()}")
    size = scores.shape[0]
    outcome = _column(non_tensor_batch, OUTCOME_KEY, size) if OUTCOME_KEY in non_tensor_batch else scores.double()
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
    bad = torch.nonzero(~torch.isfinite(outcome)).flatten()
    if bad.numel():
        row = int(bad[0])
        raise ValueError(f"{OUTCOME_KEY} of row {row} is {outcome[row].item()}; outcome rewards must be finite")
    bad = torch.nonzero((thinking < 0) | (thinking > 1) | torch.isinf(thinking)).flatten()
    if bad.numel():
        row = int(bad[0])
        raise ValueError(f"{THINKING_KEY} of row {row} is {thinking[row].item()}; it must be in [0, 1] or NaN")
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
        metrics["trust_grpo/untrusted_group_frac"] = (gamma_mixed < 1).double().mean().item()
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
    if TRM_LATENCY_KEY in non_tensor_batch:
        latency = _column(non_tensor_batch, TRM_LATENCY_KEY, len(thinking)).numpy()[keep]
        latency = latency[~np.isnan(latency)]
        if latency.size:
            metrics["trm/latency_p50_s"] = float(np.percentile(latency, 50))
            metrics["trm/latency_p95_s"] = float(np.percentile(latency, 95))
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
    scores = token_level_rewards.sum(dim=-1)
    outcome, thinking = _read_rewards(non_tensor_batch, scores, cfg.alpha)
    anneal = get_schedule(cfg.schedule)(global_step, cfg.anneal_total_steps(total_training_steps))

    # The correct/wrong split uses R^o; the thinking term is added to verl's base score.
    group, num_groups = _group_ids(index)
    term, _, trust = _thinking_terms(
        outcome,
        thinking,
        group,
        num_groups,
        alpha=cfg.alpha,
        anneal=anneal,
        correct_threshold=cfg.correct_threshold,
        uniform_groups=cfg.uniform_groups,
        use_trust_weight=cfg.use_trust_weight,
    )
    advantages, returns = _normalize(
        _add_term(scores, term), response_mask, group, norm_by_std=norm_adv_by_std_in_grpo, epsilon=cfg.epsilon
    )
    metrics = _metrics(
        trust, thinking, term, outcome, group, anneal=anneal, cfg=cfg, non_tensor_batch=non_tensor_batch,
        real_groups=~_padding_groups(index, group, num_groups),
    )
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
    index``; the plugin's adapter adds ``non_tensor_batch``, ``global_step``, ``total_training_steps``
    and a ``metrics`` dict that receives the step's metrics. Called without them (the adapter is not
    installed), it raises and says why.

    Returns:
        advantages: `(torch.Tensor)` shape (bs, response_length).
        returns: `(torch.Tensor)` shape (bs, response_length).
    """
    if non_tensor_batch is None or global_step is None:
        from sophiavl_verl.verl_adapter import adapter_missing_reason

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
