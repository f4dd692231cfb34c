"""What the TRM reads and answers: the Table-4 prompt, the two request layouts on the wire, the score parser."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image

from sophiavl_verl.thinking_reward import TRM_INSTRUCTION, ThinkingRewardItem, build_trm_prompt, parse_score

from support.fault_injection import FaultInjectionServer
from support.images import encoded
from support.trm import b64, png_bytes, rgb_image, score_once

pytestmark = pytest.mark.timeout(600)


def test_prompt_is_table_4_with_question_and_response():
    prompt = build_trm_prompt("What is {x}?", "<think>x = 2</think><answer>2</answer>")
    assert prompt.startswith(TRM_INSTRUCTION)
    for wording in (
        "You are an expert reasoning evaluator. I will give you a multimodal question and an answer.",
        "You should focus on whether the reasoning process is good rather than whether the final answer is correct.",
        "1. Logical Soundness: Does each step follow logically from the previous one?",
        "3. Error Identification: Are there logical flaws, unsupported assumptions, or incorrect steps?",
        "5. Redundancy: Is the reasoning concise, avoiding repetition or irrelevant steps?",
        "Provide a single score from {0, 0.1, 0.2, ..., 1.0} based on the reasoning quality",
        "(e.g., 0.3 for significant flaws, 0.7 for minor errors)",
        "Be strict, reward the good process and punish the bad one.",
        "You should only output the score without any explanation.",
    ):
        assert wording in prompt
    assert "Question: What is {x}?\nReasoning process: <think>x = 2</think><answer>2</answer>\n" in prompt
    assert prompt.endswith("Your response format: <answer>your_score</answer>")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>0.7</answer>", 0.7),
        ("<answer> 1 </answer>", 1.0),
        ("<ANSWER>0.30</ANSWER>", 0.3),
        ("<answer>0.75</answer>", 0.75),  # not snapped to the 0.1 grid
        ("\\boxed{0.3}", 0.3),
        ("\\box{1}", 1.0),
        ("The score is \\boxed{0.4}.", 0.4),
        ("<think>solid</think> 0.6", 0.6),
        ("<think>solid</think><answer>0.6</answer>", 0.6),
        ("Score: 0.9", 0.9),
        ("0.8", 0.8),
        ("**0.8**", 0.8),
        ("0.8.", 0.8),
        ("0.8\nThe reasoning is fine.", 0.8),
        (".5", 0.5),
        ("1.7", 1.0),  # clipped like the reference
        ("<answer>-0.2</answer>", 0.0),
        ("<answer>x</answer>", None),
        ("lorem ipsum", None),
        ("I think step 3 is wrong", None),  # no score shape: unparseable, not 1.0
        ("", None),
        ("   ", None),
        ("<answer>nan</answer>", None),
        # more than one distinct number after the reasoning, or another scale: ambiguous, so unparseable
        ("The final score is 1 out of 10.", None),
        ("Score: 0.8/10", None),
        ("Score: 0-1 scale, I give 0.3", None),
        ("8/10", None),
        ("Score: 1/1", None),
        ("<answer>0.7</answer><answer>0.2</answer>", None),
        ("<answer>0.7</answer>\nStep 3 is weak.", None),
        ("Score: 0.8 (step 2 is weak)", None),
        ("1. Logical soundness: fine\n2. Redundancy: some\nScore: 0.7", None),
        # the reasoning's own numbers are no candidates; one number, stated as a score, is
        ("<think>Steps 1 and 2 hold, step 3 does not.</think><answer>0.6</answer>", 0.6),
        ("Step 2 misreads the chart.</think>\n<answer>0.4</answer>", 0.4),  # no opening tag (Qwen's template)
        ("<think>Step 1 is wrong</think> 0.6", 0.6),
        ("**Score:** 0.7", 0.7),
        ("<answer>0.7</answer> <answer>0.70</answer>", 0.7),  # the same value twice
        ("1" * 500, None),  # not a finite number
    ],
)
def test_parse_score(text, expected):
    value = parse_score(text)
    assert value == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("text", ["1" + " " * 2**16 + "x", "score" + " " * 2**16 + "*" * 2**16 + "x",
                                  "**" * 2**16, "<answer>" + " " * 2**16, "\\boxed{" + " " * 2**16, "1 " * 2**16,
                                  "1" + " *" * 2**16 + "x"], ids=lambda text: repr(text[:10]))
def test_parsing_a_hostile_reply_takes_linear_time(text):
    """The patterns cannot backtrack on a megabyte of spaces (the bare-number one took 5 s on 1000 spaces, cubic)."""
    start = time.perf_counter()
    assert parse_score(text) is None
    assert time.perf_counter() - start < 1.0


def _grid_replies() -> list[str]:
    """The replies the paper's and the reference's prompts ask for, every grid value in every accepted shape."""
    values = ["0", "1", "1.0", *(f"0.{k}" for k in range(10))]
    shapes = ("<answer>{}</answer>", "<answer> {} </answer>",
              "<think>Steps one and two hold.</think><answer>{}</answer>", "<think>ok</think>\n<answer>{}</answer>",
              "\\boxed{{{}}}", "\\box{{{}}}", "\\boxes{{{}}}", "{}", "**{}**", "{}.", "{}\nThe reasoning is sound.",
              "Score: {}", "The score is {}", "<think>ok</think> {}")
    return [shape.format(value) for shape in shapes for value in values]


def test_the_authors_replies_parse_as_their_parser_reads_them():
    """The peer check against the authors' own parser: every reply in the requested shapes gets the score theirs
    reads; where theirs takes the wrong number of an ambiguous reply, this parser finds none."""
    from support.paper_reference import authors_score

    for reply in _grid_replies():
        assert parse_score(reply) is not None and parse_score(reply) == pytest.approx(authors_score(reply)), reply
    for reply, theirs in (("The final score is 1 out of 10.", 1.0), ("Score: 0.8/10", 0.8),
                          ("Score: 0-1 scale, I give 0.3", 0.0), ("Score: 0.3, not 1", 0.3)):
        assert authors_score(reply) == theirs and parse_score(reply) is None, reply


def test_request_shape_images_first_then_the_table_4_prompt(tmp_path):
    path = tmp_path / "img.png"
    rgb_image().save(path)
    images = (rgb_image(), png_bytes(), str(path))
    item = ThinkingRewardItem("How many cubes?", "<think>3 cubes</think><answer>3</answer>", images)
    with FaultInjectionServer(lambda n, body: "<answer>0.6</answer>") as server:
        score_once(server.base_url, [item], max_tokens=16)
        (body,) = server.bodies
    assert body["model"] == "trm" and body["temperature"] == 0 and body["max_tokens"] == 16
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    *image_parts, text = user["content"]
    assert [part["type"] for part in image_parts] == ["image_url"] * 3  # every image, not only the first
    assert all(part["image_url"]["url"].startswith("data:image/png;base64,") for part in image_parts)
    assert text == {"type": "text", "text": build_trm_prompt(item.question, item.response)}


LAYOUT_ITEM_IMAGES = (rgb_image((10, 20, 30)), png_bytes((40, 50, 60)))


LAYOUT_ITEM = ThinkingRewardItem(
    " How many cubes, at $2 each? ", "<think>I count $3$ cubes {so 3}.</think><answer>3</answer>\n", LAYOUT_ITEM_IMAGES
)


PAPER_TEXT = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is to "
    "judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning process is "
    "good rather than whether the final answer is correct.\nEvaluation Criteria:\n"
    "1. Logical Soundness: Does each step follow logically from the previous one?\n"
    "2. Correct Reasoning: Are the methods and steps used appropriate and valid? Are the facts and lemmas "
    "correctly stated and applied?\n"
    "3. Error Identification: Are there logical flaws, unsupported assumptions, or incorrect steps?\n"
    "4. Language Consistency: Is the reasoning process conducted in a single, consistent language without mixing "
    "different languages?\n"
    "5. Redundancy: Is the reasoning concise, avoiding repetition or irrelevant steps?\n"
    "Provide a single score from {0, 0.1, 0.2, ..., 1.0} based on the reasoning quality, where:\n"
    "- 0: Completely flawed reasoning.\n- 1: Perfectly sound reasoning.\n"
    "- Intermediate: Reflect partial correctness or minor errors (e.g., 0.3 for significant flaws, 0.7 for minor "
    "errors).\nBe strict, reward the good process and punish the bad one. You should only output the score "
    "without any explanation.\n"
    "Question: How many cubes, at $2 each?\n"
    "Reasoning process: <think>I count $3$ cubes {so 3}.</think><answer>3</answer>\n"
    "Your response format: <answer>your_score</answer>"
)


REFERENCE_TEXT = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is to "
    "judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning process is "
    "good rather than whether the final answer is correct.### Evaluation Criteria:\n"
    "- **Logical Soundness**: Does each step follow logically from the previous one?\n"
    "- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas "
    "correctly stated and applied?\n"
    "- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?\n"
    "- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without "
    "mixing different languages?\n"
    "- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?\n"
    "Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:\n"
    " - **0**: Completely flawed reasoning\n- **1**: Perfectly sound reasoning\n"
    "- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score without any "
    "explanation.\n"
    "    Question: <image>  How many cubes, at $2 each? \n"
    "    Reasoning process: <think>I count 3 cubes {so 3}.</think><answer>3</answer>\n\n"
    "    Your response format: <answer>your_score</answer>\n    "
)


def _png_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + b64(encoded(image, "PNG"))


@pytest.mark.parametrize("layout", ["paper", "reference"])
def test_request_body_byte_for_byte(layout):
    """The exact JSON body the client POSTs to a server on 127.0.0.1, in each layout."""
    urls = [_png_data_url(LAYOUT_ITEM_IMAGES[0]), "data:image/png;base64," + b64(LAYOUT_ITEM_IMAGES[1])]
    system = {"role": "system", "content": "You are a helpful assistant."}
    if layout == "paper":  # every image, then Table 4; max_tokens bounds the reply
        content = [*({"type": "image_url", "image_url": {"url": url}} for url in urls),
                   {"type": "text", "text": PAPER_TEXT}]
        expected = {"model": "trm", "messages": [system, {"role": "user", "content": content}],
                    "temperature": 0.0, "max_tokens": 32}
    else:  # the authors' text, then their one image; no max_tokens
        content = [{"type": "text", "text": REFERENCE_TEXT}, {"type": "image_url", "image_url": {"url": urls[0]}}]
        expected = {"model": "trm", "messages": [system, {"role": "user", "content": content}], "temperature": 0.0}
    with FaultInjectionServer(lambda n, body: "<answer>0.6</answer>") as server:
        scores, _, _ = score_once(server.base_url, [LAYOUT_ITEM], trm_prompt=layout)
    assert scores == [0.6]
    assert server.raw_bodies == [json.dumps(expected).encode()]
