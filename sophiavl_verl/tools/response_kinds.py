"""The kind of a response, from its text alone: what a run reports as the share of each kind among its rollouts.

The kinds are those of the embedded sample (``tools/embedded/groups.jsonl``, ``response_kinds``, written by
``scripts/make_embedded_sample.py``). :func:`classify_response` applies one deterministic rule, in this order:

1. ``malformed``: the response fails the R1 format (:func:`sophiavl_verl.rewards.format_reward`: no tags, no
   ``<answer>``, ``</think>`` never closed, truncated, empty) or its ``<think>`` block is empty.
2. The answer is graded by the package's outcome reward (:func:`sophiavl_verl.rewards.outcome_reward`):
   *right* at :data:`RIGHT_MIN` or more, *wrong* below :data:`WRONG_BELOW`, and ``other`` in between (a partly
   right OCR or free-form answer, which no kind describes).
3. A right answer is ``lucky`` if its reasoning hedges (:data:`HEDGES`: "guess", "roughly", "about", "probably",
   "looks like", ...), else ``terse`` if its reasoning has fewer than :data:`TERSE_BELOW_WORDS` words, else
   ``sound``.
4. A wrong answer is ``fluent`` if its reasoning is long (:data:`FLUENT_MIN_LINES` lines or more, as numbered or
   paragraph steps are written, or :data:`FLUENT_MIN_WORDS` words or more), else ``misread`` if the reasoning
   rests on something it claims to see or reinterprets in the figure (:data:`PERCEPTION_CLAIMS`: "looks",
   "reaches", "I can see", "partly hidden", "supplementary", ...), else ``slip`` (a method that looks right and
   goes wrong in a step).

The rule reads text only, so a misreading stated without any such claim (bar values simply written down wrong) is
indistinguishable from a correct reading and counts as a ``slip``: on the sample, the only disagreements with
``response_kinds`` are of that sort (``tests/test_response_kinds.py`` lists them).
"""

from __future__ import annotations

import re

from sophiavl_verl.rewards import format_reward, outcome_reward

__all__ = ["KINDS", "classify_response"]

#: Every value :func:`classify_response` returns: the sample's kinds, then ``other``.
KINDS = ("sound", "terse", "lucky", "slip", "misread", "fluent", "malformed", "other")
#: Outcome reward at or above which an answer is right (an OCR answer with one word wrong of four scores 0.78).
RIGHT_MIN = 0.75
#: Outcome reward below which an answer is wrong (an OCR answer with two words wrong of four scores 0.61).
WRONG_BELOW = 0.5
#: Reasoning shorter than this many words is terse ("8-2=6", "House, tree, car, sky.").
TERSE_BELOW_WORDS = 12
#: Wrong reasoning with this many lines or more is fluent (step-by-step, each step on its own line).
FLUENT_MIN_LINES = 4
#: Wrong reasoning with this many words or more is fluent.
FLUENT_MIN_WORDS = 60
#: Words of a reasoning that admits it is guessing or estimating.
HEDGES = re.compile(
    r"\b(guess\w*|roughly|about|probably|perhaps|maybe|eyeball\w*|usually|typical\w*|i think|looks? like|"
    r"cannot make)\b", re.IGNORECASE)
#: Words of a reasoning that rests on something it claims to see in the image, or a reinterpretation of the figure.
PERCEPTION_CLAIMS = re.compile(
    r"\b(looks|reach\w*|can see|partly hidden|clearly|from the figure|supplementary|splits|at or above|only|hmm|"
    r"looking again)\b", re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def classify_response(text: str, ground_truth: str, problem_type: str) -> str:
    """The kind of one response, by the rule of this module's docstring.

    Args:
        text: The decoded response.
        ground_truth: The reference answer, as the outcome reward takes it.
        problem_type: The row's problem type (one of :data:`sophiavl_verl.rewards.PROBLEM_TYPES`).

    Returns:
        One of :data:`KINDS`.
    """
    think = _THINK.search(text)
    reasoning = think.group(1).strip() if think else ""
    if not format_reward(text) or not reasoning:
        return "malformed"
    score = outcome_reward(problem_type, text, ground_truth)
    words = len(reasoning.split())
    if score >= RIGHT_MIN:
        if HEDGES.search(reasoning):
            return "lucky"
        return "terse" if words < TERSE_BELOW_WORDS else "sound"
    if score >= WRONG_BELOW:
        return "other"
    if len(reasoning.splitlines()) >= FLUENT_MIN_LINES or words >= FLUENT_MIN_WORDS:
        return "fluent"
    return "misread" if PERCEPTION_CLAIMS.search(reasoning) else "slip"
