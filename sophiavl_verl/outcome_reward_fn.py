"""verl ``custom_reward_function`` that computes SophiaVL-R1's outcome reward.

Use it from a recipe with::

    reward:
      custom_reward_function:
        path: pkg://sophiavl_verl.outcome_reward_fn
        name: compute_score
        reward_kwargs: {require_format: true}   # optional

The problem type is read from ``extra_info["problem_type"]`` (written by ``sophiavl-verl data rl``).
"""

from __future__ import annotations

from typing import Any

from sophiavl_verl.rewards import PROBLEM_TYPES, canonical_problem_type, outcome_reward

__all__ = ["VERL_PATH", "compute_score"]

#: The value for ``reward.custom_reward_function.path`` that selects this function.
VERL_PATH = "pkg://sophiavl_verl.outcome_reward_fn"


def _problem_type(data_source: Any, extra_info: Any) -> str:
    problem_type = extra_info.get("problem_type") if isinstance(extra_info, dict) else None
    if problem_type is not None:
        return problem_type
    try:
        return canonical_problem_type(data_source)
    except ValueError:
        raise ValueError(
            f'no problem type for this sample: extra_info["problem_type"] is missing and data_source '
            f"{data_source!r} is not a known problem type ({', '.join(PROBLEM_TYPES)}); "
            "prepare the data with `sophiavl-verl data rl`, which writes extra_info.problem_type"
        ) from None


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    require_format: bool = True,
    **kwargs: Any,
) -> float:
    """Outcome reward of one response, in verl's ``compute_score`` calling convention.

    Args:
        data_source: The row's ``data_source``; used as the problem type only if it is one and
            ``extra_info`` has none.
        solution_str: The decoded response.
        ground_truth: ``reward_model.ground_truth`` of the row.
        extra_info: The row's ``extra_info``; ``extra_info["problem_type"]`` routes the grader.
        require_format: Score 0 unless the response is ``<think>...</think><answer>...</answer>``.
        **kwargs: Other arguments verl passes (ignored).

    Returns:
        The outcome reward in [0, 1].

    Raises:
        ValueError: If no known problem type can be found for the sample.
    """
    problem_type = _problem_type(data_source, extra_info)
    return outcome_reward(problem_type, solution_str, ground_truth, require_format=require_format)
