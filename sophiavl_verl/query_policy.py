"""Which responses cost a thinking-reward request: the query policies (``reward.reward_kwargs.query_policy``).

``all`` (the paper) asks the thinking reward model about every response. ``skip_uniform`` skips groups
whose responses are all correct or all wrong: under ``uniform_groups=skip`` they get no thinking term,
so their requests change nothing. ``official`` reproduces the authors' reward code. The rule is applied
per response by the ``sophiavl`` reward manager during training and by ``sophiavl-verl audit``; this is
its one definition. No verl import.
"""

from __future__ import annotations

from collections.abc import Sequence

from sophiavl_verl.config import QUERY_POLICIES

__all__ = ["QUERY_POLICIES", "OFFICIAL_UNIFORM_HIGH", "OFFICIAL_UNIFORM_LOW", "OFFICIAL_MIN_OUTCOME",
           "thinking_reward_decision"]

#: The reference code skips a group whose outcomes are all >= 0.9 or all <= 0.1 ...
OFFICIAL_UNIFORM_HIGH, OFFICIAL_UNIFORM_LOW = 0.9, 0.1
#: ... and gives R^t = 0, without a request, to responses with R^o below this.
OFFICIAL_MIN_OUTCOME = 0.2


def thinking_reward_decision(
    policy: str, outcome: float, group_outcomes: Sequence[float] | None, correct_threshold: float
) -> str:
    """Whether a response is sent to the thinking reward model.

    Args:
        policy: ``all``, ``skip_uniform`` or ``official`` (see ``SophiaVLRewardConfig.query_policy``).
        outcome: This response's R^o.
        group_outcomes: R^o of every response of its group, or ``None`` if the group did not complete.
        correct_threshold: R^o at or above this is correct (``algorithm.trust_grpo.correct_threshold``).

    Returns:
        ``"query"`` (ask the TRM), ``"skip"`` (no request; R^t missing) or ``"zero"`` (no request;
        R^t = 0, the reference code's rule for R^o < 0.2 under ``official``).
    """
    if policy == "all":
        return "query"
    if policy == "skip_uniform":
        if group_outcomes is None:
            return "query"
        correct = [o >= correct_threshold for o in group_outcomes]
        return "skip" if all(correct) or not any(correct) else "query"
    if policy == "official":
        if group_outcomes is not None and (
            all(o >= OFFICIAL_UNIFORM_HIGH for o in group_outcomes)
            or all(o <= OFFICIAL_UNIFORM_LOW for o in group_outcomes)
        ):
            return "skip"
        return "zero" if outcome < OFFICIAL_MIN_OUTCOME else "query"
    raise ValueError(f"unknown query policy {policy!r}")
