"""The kind classifier against the embedded sample's labels (``response_kinds``) and a few hand-written texts."""

from __future__ import annotations

import json

import pytest

from sophiavl_verl.tools.response_kinds import KINDS, classify_response
from sophiavl_verl.tools.trm_sft import EMBEDDED

# The only disagreements: misreadings written as plain readings ("Reading the bars: A = 9, ..."), which the text
# alone cannot tell from a correct reading (only the image can), so the rule calls them slips.
DISAGREEMENTS = {("bar_02", 0): ("misread", "slip"), ("bar_06", 4): ("misread", "slip")}


def test_it_agrees_with_the_labels_of_the_sample_but_for_two_silent_misreadings():
    total, disagreements = 0, {}
    for line in (EMBEDDED / "groups.jsonl").open(encoding="utf-8"):
        group = json.loads(line)
        for i, (text, kind) in enumerate(zip(group["responses"], group["response_kinds"], strict=True)):
            total += 1
            got = classify_response(text, group["ground_truth"], group["problem_type"])
            assert got in KINDS
            if got != kind:
                disagreements[group["id"], i] = (kind, got)
    assert total == 256
    assert disagreements == DISAGREEMENTS


@pytest.mark.parametrize(("text", "kind"), [
    ("", "malformed"),
    ("The answer is 10.", "malformed"),  # no tags
    ("<think>6 + 4 = 10</think>\n<answer>10</answer>", "terse"),
    ("<think>Reading each bar against the gridlines: A = 4, B = 6", "malformed"),  # truncated
    ("<think>6 + 4 = 10\n<answer>10</answer>", "malformed"),  # </think> never closed
    ("<think> </think><answer>10</answer>", "malformed"),  # no reasoning
    ("<think>Bar A is 4 and bar B is 6, and adding the two bars gives 4 + 6 = 10, the value asked for.</think>"
     "<answer>10</answer>", "sound"),
    ("<think>Both bars are probably around five each, so maybe ten.</think><answer>10</answer>", "lucky"),
    ("<think>1. Read A = 4.\n2. Read B = 6.\n3. Add them: 12.\n4. Verified.</think><answer>12</answer>", "fluent"),
    ("<think>Bar B reaches 7, so 4 + 7 = 11.</think><answer>11</answer>", "misread"),
    ("<think>4 + 6 = 11.</think><answer>11</answer>", "slip"),
])
def test_hand_written_numerical_responses(text, kind):
    assert classify_response(text, "10", "numerical") == kind


def test_a_partly_right_answer_is_other():
    text = ("<think>The sign has two lines of capitals. Line one: FRESH BREAD. Line two: BAKED DAILY.</think>"
            "<answer>FRESH BREAD BAKED DAILY</answer>")
    assert classify_response(text, "FRESH BREAD BAKED DAILY", "OCR") == "sound"
    half = text.replace("BAKED DAILY", "NAKED OAILY")  # WER 0.5: exp(-0.5) = 0.61
    assert classify_response(half, "FRESH BREAD BAKED DAILY", "OCR") == "other"
