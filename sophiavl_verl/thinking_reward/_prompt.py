"""What the thinking reward model reads and answers: the Table-4 prompt, the reference layout, the score parser."""

from __future__ import annotations

import math
import re

__all__ = [
    "REFERENCE_TRM_INSTRUCTION",
    "TRM_INSTRUCTION",
    "TRM_RESPONSE_FORMAT",
    "TRM_SYSTEM_PROMPT",
    "build_reference_trm_prompt",
    "build_trm_prompt",
    "parse_score",
]

# Table 4 (Appendix B) of arXiv 2505.17018, wording kept verbatim: the released TRM was trained on it.
# The table lists the inputs ({Image}, {Question}, {Model Response}) but not their layout; the
# "Question:" / "Reasoning process:" / "Your response format:" lines are the reference code's.
TRM_INSTRUCTION = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. "
    "Your goal is to judge a reward process and give a score between 0 and 1. You should focus on "
    "whether the reasoning process is good rather than whether the final answer is correct.\n"
    "Evaluation Criteria:\n"
    "1. Logical Soundness: Does each step follow logically from the previous one?\n"
    "2. Correct Reasoning: Are the methods and steps used appropriate and valid? Are the facts and "
    "lemmas correctly stated and applied?\n"
    "3. Error Identification: Are there logical flaws, unsupported assumptions, or incorrect steps?\n"
    "4. Language Consistency: Is the reasoning process conducted in a single, consistent language "
    "without mixing different languages?\n"
    "5. Redundancy: Is the reasoning concise, avoiding repetition or irrelevant steps?\n"
    "Provide a single score from {0, 0.1, 0.2, ..., 1.0} based on the reasoning quality, where:\n"
    "- 0: Completely flawed reasoning.\n"
    "- 1: Perfectly sound reasoning.\n"
    "- Intermediate: Reflect partial correctness or minor errors (e.g., 0.3 for significant flaws, "
    "0.7 for minor errors).\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score "
    "without any explanation."
)
TRM_RESPONSE_FORMAT = "Your response format: <answer>your_score</answer>"
# The reference sends this system message; Qwen2.5-VL's chat template inserts the same one by default.
TRM_SYSTEM_PROMPT = "You are a helpful assistant."


def build_trm_prompt(question: str, response: str) -> str:
    """Build the thinking-reward-model prompt (paper Table 4) for one response.

    Args:
        question: The question shown to the policy (plain text; images are sent separately).
        response: The policy's whole decoded response (reasoning and final answer).

    Returns:
        The user-message text. The images go in front of it as separate ``image_url`` parts.
    """
    # Concatenation, not str.format: questions and responses may contain braces.
    return (
        f"{TRM_INSTRUCTION}\n"
        f"Question: {question.strip()}\n"
        f"Reasoning process: {response.strip()}\n"
        f"{TRM_RESPONSE_FORMAT}"
    )


# What the authors' RL run sent instead (kxfan2002/SophiaVL-R1 at a818494, verl/workers/reward/custom.py,
# get_process_reward): a markdown variant of Table 4, with "Question:" etc. indented by their f-string.
REFERENCE_TRM_INSTRUCTION = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is "
    "to judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning "
    "process is good rather than whether the final answer is correct.### Evaluation Criteria:\n"
    "- **Logical Soundness**: Does each step follow logically from the previous one?\n"
    "- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas "
    "correctly stated and applied?\n"
    "- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?\n"
    "- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without "
    "mixing different languages?\n"
    "- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?\n"
    "Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:\n"
    " - **0**: Completely flawed reasoning\n"
    "- **1**: Perfectly sound reasoning\n"
    "- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score without any "
    "explanation."
)


def build_reference_trm_prompt(question: str, response: str, has_image: bool) -> str:
    """Build the text the authors' code sends the TRM (the ``reference`` layout) for one response.

    Args:
        question: The text shown as the question; the reference sends the policy's whole decoded prompt.
        response: The policy's whole decoded response; ``$`` is removed, as the reference does before
            scoring and asking the TRM.
        has_image: Whether an image goes with the request: ``<image> `` then precedes the question,
            unless it already contains ``<image>``.

    Returns:
        The text part of the user message (the image goes after it).
    """
    if has_image and "<image>" not in question:
        question = f"<image> {question}"
    return (
        f"{REFERENCE_TRM_INSTRUCTION}\n    Question: {question}\n    Reasoning process: {response.replace('$', '')}\n"
        f"    {TRM_RESPONSE_FORMAT}\n    "
    )



_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))"
#: A complete ``<answer>x</answer>``: the only shape a reply cut at ``max_tokens`` may still be scored by.
ANSWER = re.compile(r"<answer>\s*" + _NUM + r"\s*</answer>", re.IGNORECASE)
#: Where a reply states its score, besides its first line alone (``_BARE``): ``<answer>x</answer>``, ``\boxed{x}``
#: (``\box``, ``\boxes``), after ``score``. No two adjacent quantifiers can match the same characters, so that a
#: hostile reply (a number, then a megabyte of spaces) cannot make them backtrack for hours.
_SCORE_PATTERNS = (
    ANSWER,
    re.compile(r"\\box(?:ed|es)?\s*\{\s*" + _NUM + r"\s*\}"),
    re.compile(r"\bscore\b(?:\s*(?:is|of|=|:))?[\s*`\"']*" + _NUM, re.IGNORECASE),
)
#: The first line of a reply when it is a number alone (markdown emphasis and a final period allowed).
_BARE = re.compile(r"[*`\"']*\s*" + _NUM + r"\s*[*`\"']*\.?")
_ANY_NUMBER = re.compile(_NUM)
#: A score given on another scale: ``8/10``, ``8 out of 10``.
_OTHER_SCALE = re.compile(r"\d\s*/\s*\d|\bout\s+of\b", re.IGNORECASE)
_THINK_END = "</think>"


def parse_raw_score(text: str) -> float | None:
    """The score ``text`` states unambiguously, unclipped; None when there is none (see :func:`parse_score`)."""
    if not isinstance(text, str):
        return None
    end = text.lower().rfind(_THINK_END)
    reply = text if end < 0 else text[end + len(_THINK_END):]  # the reasoning's own numbers are no candidates
    values = {float(number) for number in _ANY_NUMBER.findall(reply)}
    stated = _BARE.fullmatch(reply.strip().split("\n", 1)[0].strip()) or any(p.search(reply) for p in _SCORE_PATTERNS)
    if len(values) != 1 or _OTHER_SCALE.search(reply) or not stated:
        return None
    (value,) = values
    return value if math.isfinite(value) else None


def parse_score(text: str) -> float | None:
    """Parse the TRM's reply into a score in [0, 1].

    The rule: after the last ``</think>`` (the whole reply when there is none), the reply must hold exactly
    one distinct number, stated as ``<answer>0.7</answer>``, ``\\boxed{0.7}`` (``\\box{0.7}``,
    ``\\boxes{0.7}``), ``Score: 0.7``, or alone on its first line (``0.7``, ``**0.7**``, ``0.7.``); a reply
    with two or more distinct numbers there, a fraction (``0.8/10``) or ``out of`` is unparseable. So the
    paper's replies (``<answer>0.7</answer>``, with or without a ``<think>`` block before) parse, and
    ``The final score is 1 out of 10.`` or ``Score: 0-1 scale, I give 0.3`` do not. Values are not snapped
    to the 0.1 grid. Out-of-range values are clipped to [0, 1] as the reference does (``1.7`` -> 1.0,
    ``-0.2`` -> 0.0); the client does not clip unless asked (``clip_scores``): by
    default such a reply is a failure of kind ``out_of_range``. The client also refuses a reply cut at
    ``max_tokens`` (``finish_reason: "length"``) without a complete ``<answer>x</answer>``: ``truncated``.

    Unlike the reference, a reply without a score is not scored 0, and neither the first digit found in a
    sentence nor the first of several numbers is taken as the score: it is unparseable.

    Args:
        text: The assistant message content.

    Returns:
        The score in [0, 1], or None when no score can be parsed.
    """
    value = parse_raw_score(text)
    if value is None:
        return None
    return min(1.0, max(0.0, value))
