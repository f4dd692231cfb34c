"""Rule-based outcome rewards of SophiaVL-R1 (paper §3.3).

Every reward lies in [0, 1] and is routed by the row's ``problem_type``:

* ``numerical``: 1.0 if ``mathruler.grader.grade_answer`` accepts the answer (``\\frac{1}{2}`` equals ``0.5``).
* ``multiple choice``: 1.0 if the set of option letters equals the ground truth's (``A, C`` equals ``C,A``, and
  the ground truth ``AC``, written without separators, as in the reference code).
* ``OCR``: ``exp(-WER)`` with the word error rate of ``jiwer``. The paper says "negative WER"; the authors'
  code uses ``exp(-WER)``, which stays in (0, 1] (WER itself can exceed 1).
* ``free-form`` (and ``text``, routed the same way by the reference code): the mean of the ROUGE-1, ROUGE-2
  and ROUGE-L F-measures of ``rouge-score`` (Porter stemmer on, as the reference).

This module only extracts answers and routes them; grading is done by those libraries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache

__all__ = [
    "PROBLEM_TYPES",
    "canonical_problem_type",
    "extract_answer",
    "format_reward",
    "outcome_reward",
    "unwrap_answer",
]

PROBLEM_TYPES: tuple[str, ...] = ("numerical", "multiple choice", "OCR", "free-form", "text")
"""Known values of ``problem_type``; ``text`` is graded like ``free-form``."""

# The reference regex (fullmatch, DOTALL), plus leading whitespace.
_FORMAT_RE = re.compile(r"\s*<think>.*?</think>.*<answer>.*?</answer>.*", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# One option: "B", "B.", "B)", "B: text", "B. 40", "(B)", "[B] 40". A bare letter followed by a space
# ("A cat") is not an option.
_OPTION_RE = re.compile(r"[(\[]\s*([A-Z])\s*[)\]].*|([A-Z])(?:[.:)].*)?", re.DOTALL)
_OPTION_SEPARATORS = re.compile(r"[,;]")
# A ground truth written without separators, "AC": two or more capital option letters.
_OPTION_LETTER_RUN = re.compile(r"[A-Z]{2,}")


def _normalize_type_key(value: str) -> str:
    return re.sub(r"[\s_-]+", " ", value.strip().lower())


_TYPE_BY_KEY = {_normalize_type_key(name): name for name in PROBLEM_TYPES}


def canonical_problem_type(problem_type: str) -> str:
    """Return the canonical spelling of a problem type.

    Case, ``_``/``-`` and repeated spaces are ignored, so ``"Multiple_Choice"`` gives ``"multiple choice"``
    and ``"ocr"`` gives ``"OCR"``.

    Args:
        problem_type: The value of a row's ``problem_type`` field.

    Returns:
        One of :data:`PROBLEM_TYPES`.

    Raises:
        ValueError: If the value is not a known problem type; the message names the value and the known ones.
    """
    key = _normalize_type_key(problem_type) if isinstance(problem_type, str) else None
    if key not in _TYPE_BY_KEY:
        raise ValueError(f"unknown problem_type {problem_type!r}; known problem types: {', '.join(PROBLEM_TYPES)}")
    return _TYPE_BY_KEY[key]


def format_reward(response: str) -> float:
    """Check the R1 response format ``<think>...</think>`` then ``<answer>...</answer>``.

    Text between the two blocks and after the answer is allowed, as in the reference regex.

    Args:
        response: The decoded model response.

    Returns:
        1.0 if the response has the format, else 0.0.
    """
    return 1.0 if _FORMAT_RE.fullmatch(response) else 0.0


def extract_answer(response: str) -> str | None:
    """Return the stripped content of the last ``<answer>...</answer>`` block, or None if there is none.

    The last block is taken so that an ``<answer>`` tag quoted inside the reasoning does not win.
    """
    matches = _ANSWER_RE.findall(response)
    return matches[-1].strip() if matches else None


def unwrap_answer(text: str) -> str:
    """Return the content of the first ``<answer>...</answer>`` in ``text`` (stripped), else ``text`` stripped.

    SophiaVL-R1-130k stores some ground truths as ``<answer>B</answer>``.
    """
    match = _ANSWER_RE.search(text)
    return (match.group(1) if match else text).strip()


def _option_letters(answer: str) -> frozenset[str] | None:
    """Parse ``"A, C"`` / ``"(B)"`` / ``"B. 40"`` into a set of option letters; None if any part is not an option."""
    letters = set()
    for part in _OPTION_SEPARATORS.split(answer):
        match = _OPTION_RE.fullmatch(part.strip())
        if match is None:
            return None
        letters.add(match.group(1) or match.group(2))
    return frozenset(letters)


def _grade_numerical(answer: str, ground_truth: str) -> float:
    from mathruler.grader import grade_answer

    return 1.0 if grade_answer(answer, ground_truth) else 0.0


def _expected_options(ground_truth: str) -> frozenset[str] | None:
    """The option letters of a ground truth: as :func:`_option_letters` reads an answer (case-insensitive),
    or written without separators (``"AC"``: distinct capital letters), which the reference credits ``A, C``."""
    letters = _option_letters(ground_truth.upper())
    if letters is None and _OPTION_LETTER_RUN.fullmatch(ground_truth) and len(set(ground_truth)) == len(ground_truth):
        letters = frozenset(ground_truth)
    return letters


def _grade_multiple_choice(answer: str, ground_truth: str) -> float:
    predicted = _option_letters(answer)
    return 1.0 if predicted is not None and predicted == _expected_options(ground_truth) else 0.0


def _grade_ocr(answer: str, ground_truth: str) -> float:
    from jiwer import wer

    return math.exp(-wer(reference=ground_truth, hypothesis=answer))


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _grade_free_form(answer: str, ground_truth: str) -> float:
    # rouge-score's signature is score(target, prediction).
    scores = _rouge_scorer().score(ground_truth.replace("\n", " "), answer.replace("\n", " "))
    return sum(score.fmeasure for score in scores.values()) / len(scores)


_GRADERS: dict[str, Callable[[str, str], float]] = {
    "numerical": _grade_numerical,
    "multiple choice": _grade_multiple_choice,
    "OCR": _grade_ocr,
    "free-form": _grade_free_form,
    "text": _grade_free_form,
}


def outcome_reward(problem_type: str, response: str, ground_truth: str, *, require_format: bool = True) -> float:
    """Rule-based outcome reward R^o of one response.

    Args:
        problem_type: One of :data:`PROBLEM_TYPES` (spelling variants accepted, see
            :func:`canonical_problem_type`).
        response: The decoded model response, ``<think>...</think><answer>...</answer>``.
        ground_truth: The reference answer, bare or wrapped in ``<answer>...</answer>``.
        require_format: If True (the reference behaviour), a response without the format of
            :func:`format_reward` scores 0. If False, a response without ``<answer>`` tags is graded whole.

    Returns:
        The reward in [0, 1]. An empty extracted answer scores 0 for every type.

    Raises:
        ValueError: If ``problem_type`` is unknown or the ground truth is empty.
    """
    grader = _GRADERS[canonical_problem_type(problem_type)]
    # The reference removes "$" (LaTeX math delimiters) from both sides before grading.
    ground_truth = unwrap_answer(ground_truth).replace("$", "").strip()
    if not ground_truth:
        raise ValueError("empty ground truth")
    if require_format and not format_reward(response):
        return 0.0
    answer = extract_answer(response)
    answer = (response if answer is None else answer).replace("$", "").strip()
    if not answer:
        return 0.0
    return min(1.0, max(0.0, float(grader(answer, ground_truth))))
