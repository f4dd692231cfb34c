"""Trust-GRPO (SophiaVL-R1, arXiv 2505.17018, §3.4): trust-weighted thinking reward + GRPO advantage.

For a group of N responses o_1..o_N to one prompt, with outcome rewards R^o_i and thinking rewards
R^t_i in [0, 1] (NaN = missing: the thinking reward model failed or was not asked):

    G_correct = {i : R^o_i >= threshold, R^t_i scored},  G_wrong = {i : R^o_i < threshold, R^t_i scored}
    μ_c = mean_{i in G_correct} R^t_i,  μ_w = mean_{i in G_wrong} R^t_i                     (Eq. 1-2)
    γ = 1 if μ_c >= μ_w - TIE_TOLERANCE else e^(μ_c - μ_w)                                 (Eq. 3)

Equal means must give γ = 1 exactly, but a mean of equal floats is not always that float
(3 × 0.7 / 3 = 0.6999999999999998 while 5 × 0.7 / 5 = 0.7), so Eq. 3 compares with a tolerance of
``TIE_TOLERANCE`` = 1e-9: far above the rounding of any group's mean (under n · 2^-53 for n responses)
and far below any difference a thinking reward model expresses (its scores are in steps of 0.1).
``_group_trust`` is the one place that applies the rule; the metrics and the audit read its result.
    R_i = R^o_i + γ · α · anneal(step) · R^t_i      (a missing R^t_i adds nothing)         (Eq. 5)
    A_i = (R_i - mean(R)) / (std(R) + ε)            (verl's GRPO normalisation)            (Eq. 6)

Everything is vectorised over the batch (scatter-adds over group ids; no Python loop per response
or per group; only the metrics look at one uid per group, for verl's padding rows). The registered
estimator ``trust_grpo`` reads R^o and R^t from the per-sample reward extra info that the ``sophiavl``
reward manager writes; see ``verl_adapter`` for how it gets there.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
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
    "TRM_FAILURE_KEY",
    "TRM_COST_COLUMNS",
    "TIE_TOLERANCE",
    "GroupTrust",
    "group_trust",
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
TRM_FAILURE_KEY = "sophiavl_trm_failure"  # the kind of a failed request ("" otherwise), summed as trm/failed_<kind>
#: What each response's TRM request cost: (``TRMResult`` attribute, reward extra info key, per-step sum metric).
TRM_COST_COLUMNS = (
    ("requests", "sophiavl_trm_http_requests", "trm/http_requests"),
    ("connections", "sophiavl_trm_connections", "trm/connections"),
    ("image_encodes", "sophiavl_trm_image_encodes", "trm/image_encodes"),
    ("bytes_sent", "sophiavl_trm_bytes_sent", "trm/bytes_sent"),
)

#: μ_c below μ_w by at most this is a tie (γ = 1): float rounding of the means, not a judgement.
TIE_TOLERANCE = 1e-9

_PAD_UID = re.compile(PAD_UID_PATTERN)


class GroupTrust(NamedTuple):
    """Per-group quantities of Eq. 1-3, each of shape (num_groups,)."""

    mu_correct: torch.Tensor  # NaN where the group has no scored correct response
    mu_wrong: torch.Tensor  # NaN where the group has no scored wrong response
    mixed: torch.Tensor  # bool: at least one scored correct and one scored wrong response
    untrusted: torch.Tensor  # bool: mixed, trust weight on, and μ_c < μ_w - TIE_TOLERANCE (so γ < 1)
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
    if outcome.ndim != 1 or thinking.shape != outcome.shape or group.shape != outcome.shape:
        raise ValueError(
            f"outcome, thinking and index must be 1-D of one length, got {tuple(outcome.shape)}, "
            f"{tuple(thinking.shape)}, {tuple(group.shape)}"
        )
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
        untrusted = torch.zeros(num_groups, dtype=torch.bool)
        gamma = torch.ones(num_groups, dtype=torch.float64)
    else:
        untrusted = mixed & (mu_correct < mu_wrong - TIE_TOLERANCE)  # NaN compares False: never untrusted
        uniform_gamma = 0.0 if uniform_groups == "skip" else 1.0
        trusted = torch.where(mixed, 1.0, uniform_gamma).double()
        gamma = torch.where(untrusted, torch.exp(mu_correct - mu_wrong), trusted)
    return GroupTrust(mu_correct, mu_wrong, mixed, untrusted, gamma)


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
    """The thinking term γ·α·anneal·R^t of every response (float64, shape (bs,)), its γ, and the group stats.

    ``outcome`` and ``thinking`` are validated float64 CPU tensors (see :func:`_check_rewards`).
    """
    trust = _group_trust(
        outcome,
        thinking,
        group,
        num_groups,
        correct_threshold=correct_threshold,
        uniform_groups=uniform_groups,
        use_trust_weight=use_trust_weight,
    )
    gamma = trust.gamma[group]
    return gamma * (alpha * anneal) * torch.nan_to_num(thinking, nan=0.0), gamma, trust


def _add_term(base: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``base + term`` in float64, back in ``base``'s dtype and device (exactly ``base`` where term is 0)."""
    return (base.detach().to("cpu", torch.float64) + term).to(device=base.device, dtype=base.dtype)


def _as_float64(values: Any, name: str) -> torch.Tensor:
    """A 1-D float64 CPU tensor of ``values``: a tensor of any dtype, an array or a list (``None`` -> NaN).

    Raises:
        ValueError: Naming ``name`` and the row of the first entry that is not a number (strings included).
    """
    if isinstance(values, torch.Tensor):
        column = values.detach().to("cpu", torch.float64)
    else:
        array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
        if array.dtype.kind not in "biuf" and array.ndim == 1:  # numbers or None only (numpy parses "0.5")
            for row, value in enumerate(array):
                if value is not None and not isinstance(value, (int, float, np.integer, np.floating)):
                    raise ValueError(f"{name} of row {row} is {value!r}, not a number")
            array = np.array([math.nan if v is None else v for v in array], dtype=np.float64)
        column = torch.from_numpy(np.asarray(array, dtype=np.float64))
    if column.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per response), got shape {tuple(column.shape)}")
    return column


def _check_rewards(outcome: torch.Tensor, thinking: torch.Tensor, outcome_name: str, thinking_name: str) -> None:
    """R^o must be finite and R^t in [0, 1] or NaN (missing); errors name the row."""
    bad = torch.nonzero(~torch.isfinite(outcome)).flatten()
    if bad.numel():
        row = int(bad[0])
        raise ValueError(f"{outcome_name} of row {row} is {outcome[row].item()}; outcome rewards must be finite")
    bad = torch.nonzero((thinking < 0) | (thinking > 1)).flatten()  # NaN compares False: allowed (missing)
    if bad.numel():
        row = int(bad[0])
        raise ValueError(f"{thinking_name} of row {row} is {thinking[row].item()}; it must be in [0, 1] or NaN")


def _api_inputs(
    function: str, outcome: Any, thinking: Any, index: Any, **options: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Validated float64 R^o, R^t, group ids and group count for a public function, errors naming the argument.

    ``options`` are checked by :class:`TrustGRPOConfig`, the estimator's own validation (``ConfigError``
    is a ``ValueError``).
    """
    TrustGRPOConfig(**options, _prefix=function)
    outcome64, thinking64 = _as_float64(outcome, "outcome"), _as_float64(thinking, "thinking")
    _check_rewards(outcome64, thinking64, "outcome", "thinking")
    return outcome64, thinking64, *_group_ids(index)


def group_trust(
    outcome: torch.Tensor | np.ndarray | Sequence[float],
    thinking: torch.Tensor | np.ndarray | Sequence[float | None],
    index: np.ndarray | Sequence[Any],
    *,
    correct_threshold: float = 0.5,
    uniform_groups: str = "skip",
    use_trust_weight: bool = True,
) -> GroupTrust:
    """μ_c, μ_w, whether the group is mixed and untrusted, and γ (Eq. 1-3) of every group.

    Arguments as :func:`trust_weighted_rewards`. Groups are numbered in order of first appearance in
    ``index``.

    Returns:
        :class:`GroupTrust` of float64 / bool CPU tensors of shape (num_groups,).
    """
    outcome64, thinking64, group, num_groups = _api_inputs(
        "group_trust", outcome, thinking, index, correct_threshold=correct_threshold,
        uniform_groups=uniform_groups, use_trust_weight=use_trust_weight,
    )
    return _group_trust(outcome64, thinking64, group, num_groups, correct_threshold=correct_threshold,
                        uniform_groups=uniform_groups, use_trust_weight=use_trust_weight)


def trust_weighted_rewards(
    outcome: torch.Tensor | np.ndarray | Sequence[float],
    thinking: torch.Tensor | np.ndarray | Sequence[float | None],
    index: np.ndarray | Sequence[Any],
    *,
    alpha: float,
    anneal: float = 1.0,
    correct_threshold: float = 0.5,
    uniform_groups: str = "skip",
    use_trust_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trust-weighted reward of every response (Eq. 1-5), vectorised over the batch.

    Inputs are validated as the registered estimator validates the reward extra info; computation is in
    float64 whatever the input dtype.

    Args:
        outcome: `(torch.Tensor | np.ndarray | list)` shape (bs,). Outcome rewards R^o, finite.
        thinking: `(torch.Tensor | np.ndarray | list)` shape (bs,). Thinking rewards R^t in [0, 1]; NaN
            (or ``None`` in a list) marks a missing one, which is excluded from μ_c and μ_w and adds
            nothing to its response's reward.
        index: `(np.ndarray | list)` shape (bs,). Group id of each response (verl's ``uid`` array).
        alpha: Weight α of the thinking reward (0.3 in the paper), finite and >= 0.
        anneal: The annealing factor of the current step, e.g. e^(-step/T), finite and >= 0.
        correct_threshold: R^o at or above this counts as correct, in (0, 1].
        uniform_groups: For a group without at least one scored correct and one scored wrong
            response: ``"skip"`` (no thinking term) or ``"trust"`` (γ = 1).
        use_trust_weight: ``False`` sets γ = 1 everywhere (the "w/o trust weight" ablations).

    Returns:
        rewards: `(torch.Tensor)` shape (bs,). R_i of Eq. 5, in ``outcome``'s dtype and device when it
            is a floating-point tensor, else float64 on the CPU.
        gamma: `(torch.Tensor)` shape (bs,), same dtype and device. The multiplier applied to each
            response's thinking reward: its group's γ, 0 for a skipped group.

    Raises:
        ValueError: On a non-finite R^o, an R^t outside [0, 1], a missing group id, inputs of different
            lengths, or an invalid option; the message names the row or the argument.
    """
    if not (isinstance(anneal, (int, float)) and math.isfinite(anneal) and anneal >= 0):
        raise ValueError(f"trust_weighted_rewards.anneal must be a finite number >= 0, got {anneal!r}")
    outcome64, thinking64, group, num_groups = _api_inputs(
        "trust_weighted_rewards", outcome, thinking, index, alpha=alpha, correct_threshold=correct_threshold,
        uniform_groups=uniform_groups, use_trust_weight=use_trust_weight,
    )
    term, gamma, _ = _thinking_terms(
        outcome64,
        thinking64,
        group,
        num_groups,
        alpha=alpha,
        anneal=anneal,
        correct_threshold=correct_threshold,
        uniform_groups=uniform_groups,
        use_trust_weight=use_trust_weight,
    )
    floating = isinstance(outcome, torch.Tensor) and outcome.is_floating_point()
    base = outcome if floating else outcome64
    return _add_term(base, term), gamma.to(device=base.device, dtype=base.dtype)


def group_normalized_advantage(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    response_mask: torch.Tensor | np.ndarray,
    index: np.ndarray | Sequence[Any],
    *,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantage from one scalar score per response (Eq. 6), vectorised.

    Same contract and values as verl's ``compute_grpo_outcome_advantage`` given per-response scores:
    a one-response group has mean 0 and std 1; the std is the unbiased one; the result is float32.

    Args:
        scores: `(torch.Tensor | np.ndarray | list)` shape (bs,). Per-response rewards R_i, finite.
        response_mask: `(torch.Tensor | np.ndarray)` shape (bs, response_length).
        index: `(np.ndarray | list)` shape (bs,). Group id of each response.
        norm_by_std: Divide by the group std (GRPO) or not (Dr.GRPO), as verl's
            ``norm_adv_by_std_in_grpo``.
        epsilon: Added to the std, finite and >= 0.

    Returns:
        advantages: `(torch.Tensor)` shape (bs, response_length), float32, on ``scores``' device.
        returns: `(torch.Tensor)` shape (bs, response_length), equal to ``advantages``.

    Raises:
        ValueError: On a non-finite score (naming its row), mismatched shapes or an invalid option.
    """
    TrustGRPOConfig(epsilon=epsilon, _prefix="group_normalized_advantage")
    if not isinstance(scores, torch.Tensor):
        scores = _as_float64(scores, "scores")
    bad = torch.nonzero(~torch.isfinite(scores.detach())).flatten()
    if bad.numel():
        raise ValueError(f"scores of row {int(bad[0])} is {scores[int(bad[0])].item()}; scores must be finite")
    response_mask = torch.as_tensor(response_mask, device=scores.device)
    group, _ = _group_ids(index)
    if scores.ndim != 1 or response_mask.ndim != 2 or not len(scores) == len(response_mask) == len(group):
        raise ValueError(
            f"scores (bs,), response_mask (bs, response_length) and index (bs,) must agree, got "
            f"{tuple(scores.shape)}, {tuple(response_mask.shape)}, {tuple(group.shape)}"
        )
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
    return _as_float64(values, f"reward extra info {key!r}")


def _read_rewards(
    non_tensor_batch: dict[str, Any] | None, scores: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """R^o and R^t of every response from the reward extra info, validated row by row."""
    if non_tensor_batch is None:
        from sophiavl_verl.verl_adapter import adapter_missing_reason

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
    _check_rewards(outcome, thinking, OUTCOME_KEY, THINKING_KEY)
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
        kinds = Counter(str(kind) for kind in list(non_tensor_batch[TRM_FAILURE_KEY]) if kind)
        metrics.update({f"trm/failed_{kind}": float(n) for kind, n in sorted(kinds.items())})
    for _, key, metric in TRM_COST_COLUMNS:
        if key in non_tensor_batch:
            metrics[metric] = float(np.nansum(_column(non_tensor_batch, key, len(thinking)).numpy()))
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
