"""Output records: the RL prompt (the authors' template) and row, the TRM SFT row, and their parquet schemas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa

from sophiavl_verl.config import SPLIT_KEY
from sophiavl_verl.rewards import canonical_problem_type, unwrap_answer
from sophiavl_verl.tools.data.images import ImageGuard, _load_images
from sophiavl_verl.tools.data.rows import (
    RL_FIELDS,
    TRM_FIELDS,
    _describe_value,
    _image_sources,
    _missing,
    _RowError,
    _text,
)

# The RL prompt of the authors' training code (verl/utils/dataset.py of kxfan2002/SophiaVL-R1); the paper
# does not print it. Their inference script says "between the <think> and </think> tags"; we keep the
# wording the policy was trained with.
QUESTION_TEMPLATE = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer "
    "between the <answer> </answer> tags."
)
TYPE_TEMPLATE = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
    "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
    "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "text": " Please provide the short text answer within the <answer> </answer> tags.",
}
IMAGE_PLACEHOLDER = "<image>"  # what verl's datasets replace by the row's images, in order

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_IMAGES = pa.list_(pa.struct([("bytes", pa.binary())]))
RL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", _MESSAGES),
        ("images", _IMAGES),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("problem_type", pa.string()),
                    ("question", pa.string()),
                    ("index", pa.int64()),
                    ("data_type", pa.string()),
                    (SPLIT_KEY, pa.string()),
                ]
            ),
        ),
    ]
)
TRM_SCHEMA = pa.schema(
    [("messages", _MESSAGES), ("images", _IMAGES), ("extra_info", pa.struct([("index", pa.int64())]))]
)


def _with_placeholders(text: str, num_images: int, field_name: str) -> str:
    """Put one ``<image>`` per image in front of ``text``, unless the text already places them all."""
    present = text.count(IMAGE_PLACEHOLDER)
    if present == 0:
        return IMAGE_PLACEHOLDER * num_images + text
    if present != num_images:
        raise _RowError(field_name, f"has {present} {IMAGE_PLACEHOLDER} placeholder(s) for {num_images} image(s)")
    return text


def build_rl_prompt(question: str, problem_type: str, num_images: int = 0) -> str:
    """The user message of an RL row: image placeholders, question, reasoning template, answer instruction.

    Args:
        question: The question (with its options for multiple choice).
        problem_type: One of :data:`sophiavl_verl.rewards.PROBLEM_TYPES`.
        num_images: Number of images; one ``<image>`` each goes in front of the question, unless the
            question already contains them.

    Raises:
        ValueError: If the question has ``<image>`` placeholders but not ``num_images`` of them, or the
            problem type is unknown.
    """
    question = _with_placeholders(question, num_images, "problem")
    return QUESTION_TEMPLATE.format(Question=question) + TYPE_TEMPLATE[canonical_problem_type(problem_type)]


def _required_text(row: dict, aliases: Sequence[str], what: str) -> str:
    """The row's text (:func:`_text`); an empty one rejects the row, blaming the first alias.

    Raises:
        _RowError: If the text is empty ("empty ``what``").
    """
    text = _text(row, aliases)
    if not text:
        raise _RowError(aliases[0], f"empty {what}")
    return text


def _rl_record(
    row: dict, index: int, guard: ImageGuard, data_source: str, system_prompt: str | None
) -> tuple[dict, str]:
    question = _required_text(row, RL_FIELDS["question"], "question")
    raw_type = _text(row, RL_FIELDS["problem_type"])
    try:
        problem_type = canonical_problem_type(raw_type)
    except ValueError as exc:
        raise _RowError("problem_type", str(exc)) from None
    answer = unwrap_answer(_text(row, RL_FIELDS["answer"], numbers=True))
    if not answer:
        raise _RowError("solution", "empty answer")
    data_type = _text(row, ("data_type",)).lower()
    if data_type == "video":
        raise _RowError("data_type", "video rows are not supported")
    options = row.get("options")
    if not _missing(options) and not (
        isinstance(options, list | tuple)
        and all(isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options)
    ):
        raise _RowError("options", f"must be a list of strings, got {_describe_value(options)}")
    has_images = bool(_image_sources(row))  # types checked for every row, images read only for image rows
    images = [] if data_type == "text" else _load_images(row, guard)
    if data_type == "image" and not has_images:
        raise _RowError("path", "data_type is 'image' but the row has no image path", "missing")
    if problem_type == "multiple choice" and options:
        # The reference appends the options to the question (many questions already contain them).
        question = f"{question}\n" + "; ".join(map(str, options))
    record = {
        "data_source": data_source,
        "prompt": [{"role": "system", "content": system_prompt}] * bool(system_prompt)
        + [{"role": "user", "content": build_rl_prompt(question, problem_type, len(images))}],
        "images": images,
        "ability": problem_type,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "problem_type": problem_type,
            "question": question.replace(IMAGE_PLACEHOLDER, "").strip(),
            "index": index,
            "data_type": "image" if images else "text",
            SPLIT_KEY: None,  # "train" / "val" once --val-size splits the rows (see _finalize)
        },
    }
    return record, problem_type


def _trm_record(row: dict, index: int, guard: ImageGuard) -> tuple[dict, None]:
    question = _required_text(row, TRM_FIELDS["question"], "question")
    response = _required_text(row, TRM_FIELDS["response"], "response")
    raw_score = _text(row, TRM_FIELDS["score"], numbers=True)
    try:
        score = float(unwrap_answer(raw_score))
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 1.0:
        raise _RowError("score", f"score must be a number in [0, 1], got {raw_score!r}" if raw_score else "empty score")
    images = _load_images(row, guard)
    from sophiavl_verl.thinking_reward import TRM_SYSTEM_PROMPT, build_trm_prompt  # aiohttp: not for --help

    # Same layout as ThinkingRewardClient's requests: images first, then the Table-4 prompt.
    prompt = IMAGE_PLACEHOLDER * len(images) + build_trm_prompt(question.replace(IMAGE_PLACEHOLDER, ""), response)
    messages = [
        {"role": "system", "content": TRM_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": f"<answer>{score}</answer>"},
    ]
    return {"messages": messages, "images": images, "extra_info": {"index": index}}, None
