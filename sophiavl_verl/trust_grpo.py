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
or per group). This module needs torch, numpy and pandas only, never verl: the registered estimator
``trust_grpo`` (:mod:`sophiavl_verl.integration.estimator`) reads R^o and R^t from the reward extra
info and calls :func:`trust_grpo_advantages`; ``sophiavl-verl audit`` calls the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from sophiavl_verl.config import TrustGRPOConfig

__all__ = [
    "TIE_TOLERANCE",
    "GroupTrust",
    "TrustGRPOResult",
    "as_float64_column",
    "check_rewards",
    "group_trust",
    "trust_weighted_rewards",
    "group_normalized_advantage",
    "trust_grpo_advantages",
]

#: μ_c below μ_w by at most this is a tie (γ = 1): float rounding of the means, not a judgement.
TIE_TOLERANCE = 1e-9


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


def _group_ids(index: np.ndarray | Sequence[Any]) -> tuple[torch.Tensor, int]:
    """Group ids 0..G-1 of shape (bs,) for verl's uid array, by hashing (pandas.factorize).

    Raises:
        ValueError: Naming the row of the first uid that is missing or not hashable (a list, a dict).
    """
    # verl's uid column is a 1-D array; anything else becomes one entry per row (lists of equal length included).
    uids = index if isinstance(index, np.ndarray) and index.ndim == 1 else pd.Series(list(index), dtype=object)
    try:
        codes, uniques = pd.factorize(uids, use_na_sentinel=True)
    except TypeError:
        row, uid = next((row, uid) for row, uid in enumerate(uids) if not _hashable(uid))
        raise ValueError(f"the group index (uid) of row {row} is a {type(uid).__name__}, {uid!r:.80}; "
                         "a uid must be a hashable id such as a string") from None
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"the group index (uid) of row {row} is missing")
    return torch.from_numpy(codes.astype(np.int64, copy=False)), len(uniques)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


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

    ``outcome`` and ``thinking`` are validated float64 CPU tensors (see :func:`check_rewards`).
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


def as_float64_column(values: Any, name: str) -> torch.Tensor:
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


def _require_finite(values: torch.Tensor, name: str, kind: str) -> None:
    """Raise ``ValueError`` naming the first row of ``values`` that is NaN or infinite."""
    bad = torch.nonzero(~torch.isfinite(values.detach())).flatten()
    if bad.numel():
        row = int(bad[0])
        raise ValueError(f"{name} of row {row} is {values[row].item()}; {kind} must be finite")


def check_rewards(outcome: torch.Tensor, thinking: torch.Tensor, outcome_name: str, thinking_name: str) -> None:
    """R^o must be finite and R^t in [0, 1] or NaN (missing); errors name the row."""
    _require_finite(outcome, outcome_name, "outcome rewards")
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
    outcome64, thinking64 = as_float64_column(outcome, "outcome"), as_float64_column(thinking, "thinking")
    check_rewards(outcome64, thinking64, "outcome", "thinking")
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
        alpha: Weight α of the thinking reward (0.3 in the paper), in [0, ``config.MAX_ALPHA``].
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
        scores = as_float64_column(scores, "scores")
    _require_finite(scores, "scores", "scores")
    response_mask = torch.as_tensor(response_mask, device=scores.device)
    group, num_groups = _group_ids(index)
    if scores.ndim != 1 or response_mask.ndim != 2 or not len(scores) == len(response_mask) == len(group):
        raise ValueError(
            f"scores (bs,), response_mask (bs, response_length) and index (bs,) must agree, got "
            f"{tuple(scores.shape)}, {tuple(response_mask.shape)}, {tuple(group.shape)}"
        )
    return _normalize(scores, response_mask, group, num_groups, norm_by_std=norm_by_std, epsilon=epsilon)


def _group_mean_std(scores: torch.Tensor, group: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and unbiased std of float32 ``scores`` (shape (bs,)), each of shape (num_groups,).

    verl's GRPO statistics: a one-response group has mean 0 and std 1 (its advantage is its score).
    """
    count = torch.zeros(num_groups, dtype=scores.dtype, device=scores.device).index_add_(
        0, group, torch.ones_like(scores))
    total = torch.zeros_like(count).index_add_(0, group, scores)
    mean = total / count.clamp_min(1.0)
    centred = scores - mean[group]
    squares = torch.zeros_like(count).index_add_(0, group, centred * centred)
    std = torch.sqrt(squares / (count - 1.0).clamp_min(1.0))
    single = count <= 1.0
    return mean.masked_fill(single, 0.0), std.masked_fill(single, 1.0)


def _normalize(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    *,
    norm_by_std: bool,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 given group ids; see :func:`group_normalized_advantage`."""
    with torch.no_grad():
        scores = scores.float()  # verl's GRPO works in float32
        group = group.to(scores.device)
        mean, std = _group_mean_std(scores, group, num_groups)
        centred = scores - mean[group]
        scalars = centred / (std[group] + epsilon) if norm_by_std else centred
        advantages = scalars.unsqueeze(-1) * response_mask
    return advantages, advantages


class TrustGRPOResult(NamedTuple):
    """What :func:`trust_grpo_advantages` computes for a batch: the advantages and every quantity behind them."""

    advantages: torch.Tensor  # (bs, response_length), float32 (Eq. 6)
    returns: torch.Tensor  # (bs, response_length), equal to advantages
    rewards: torch.Tensor  # (bs,) R_i of Eq. 5, in the scores' dtype and device
    thinking_term: torch.Tensor  # (bs,) float64 γ·α·anneal·R^t (0 where R^t is missing or the group skipped)
    group: torch.Tensor  # (bs,) int64 group id of each response, 0..num_groups-1 in order of first appearance
    trust: GroupTrust  # per-group μ_c, μ_w, mixed, untrusted, γ (Eq. 1-3)


def trust_grpo_advantages(
    scores: torch.Tensor,
    outcome: torch.Tensor | np.ndarray | Sequence[float],
    thinking: torch.Tensor | np.ndarray | Sequence[float | None],
    response_mask: torch.Tensor | np.ndarray,
    index: np.ndarray | Sequence[Any],
    *,
    config: TrustGRPOConfig,
    anneal: float,
    norm_by_std: bool = True,
    names: tuple[str, str] = ("outcome", "thinking"),
) -> TrustGRPOResult:
    """Trust-GRPO advantages of a batch (Eq. 1-6), with the group statistics behind them.

    The correct/wrong split uses R^o; the thinking term is added to ``scores``, verl's base score (R^o, or
    R^o minus the KL penalty with ``use_kl_in_reward``).

    Args:
        scores: `(torch.Tensor)` shape (bs,). Each response's base score, finite.
        outcome: `(torch.Tensor | np.ndarray | list)` shape (bs,). R^o, finite.
        thinking: `(torch.Tensor | np.ndarray | list)` shape (bs,). R^t in [0, 1]; NaN = missing.
        response_mask: `(torch.Tensor | np.ndarray)` shape (bs, response_length).
        index: `(np.ndarray | list)` shape (bs,). Group id of each response (verl's ``uid``).
        config: The estimator's options (α, threshold, uniform groups, trust weight, ε).
        anneal: The step's annealing factor, e^(-step/T) of Eq. 5 (:mod:`sophiavl_verl.annealing`).
        norm_by_std: Divide by the group std (GRPO) or not (Dr.GRPO).
        names: How errors name R^o and R^t (the estimator names its reward extra-info keys).

    Returns:
        :class:`TrustGRPOResult`.

    Raises:
        ValueError: On a non-finite score or R^o, an R^t outside [0, 1], a missing group id or mismatched
            lengths; the message names the row.
    """
    outcome64, thinking64 = as_float64_column(outcome, names[0]), as_float64_column(thinking, names[1])
    check_rewards(outcome64, thinking64, *names)
    group, num_groups = _group_ids(index)
    term, _, trust = _thinking_terms(
        outcome64,
        thinking64,
        group,
        num_groups,
        alpha=config.alpha,
        anneal=anneal,
        correct_threshold=config.correct_threshold,
        uniform_groups=config.uniform_groups,
        use_trust_weight=config.use_trust_weight,
    )
    rewards = _add_term(scores, term)
    _require_finite(rewards, "the score", "scores")
    response_mask = torch.as_tensor(response_mask, device=scores.device)
    advantages, returns = _normalize(rewards, response_mask, group, num_groups, norm_by_std=norm_by_std,
                                     epsilon=config.epsilon)
    return TrustGRPOResult(advantages, returns, rewards, term, group, trust)
