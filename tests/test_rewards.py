"""Outcome rewards (sophiavl_verl.rewards) and the verl custom_reward_function shim."""

import math

import pytest

from sophiavl_verl.outcome_reward_fn import compute_score
from sophiavl_verl.rewards import (
    PROBLEM_TYPES,
    canonical_problem_type,
    extract_answer,
    format_reward,
    outcome_reward,
    unwrap_answer,
)


def respond(answer: str) -> str:
    return f"<think>let me think</think>\n<answer>{answer}</answer>"


@pytest.mark.parametrize(
    ("answer", "ground_truth", "expected"),
    [
        (r"\frac{1}{2}", "0.5", 1.0),
        ("0.5", r"\frac{1}{2}", 1.0),
        ("42", "<answer>42</answer>", 1.0),
        ("$3.14$", "3.14", 1.0),
        (" 7 ", "7", 1.0),
        ("41", "42", 0.0),
        ("forty-two", "42", 0.0),
    ],
)
def test_numerical(answer, ground_truth, expected):
    assert outcome_reward("numerical", respond(answer), ground_truth) == expected


@pytest.mark.parametrize(
    ("answer", "ground_truth", "expected"),
    [
        ("B", "B", 1.0),
        ("(B)", "B", 1.0),
        ("B.", "B", 1.0),
        ("B. 40", "B", 1.0),
        ("[B] 40", "<answer>B</answer>", 1.0),
        ("B", "(B)", 1.0),
        ("A, C", "C,A", 1.0),
        ("C;A", "A, C", 1.0),
        ("A", "A,C", 0.0),
        ("A,C", "A", 0.0),
        ("C", "B", 0.0),
        ("A cat", "A", 0.0),
        ("AB", "A", 0.0),
        ("The answer is B", "B", 0.0),
        # A ground truth written without separators lists option letters (the reference credits "A, C").
        ("A, C", "AC", 1.0),
        ("C;A", "<answer>AC</answer>", 1.0),
        ("B, D, E", "BDE", 1.0),
        ("A", "AC", 0.0),
        ("A, C, D", "AC", 0.0),
        ("AC", "AC", 0.0),  # the answer still names its options one by one, as the reference requires
        ("A", "AA", 0.0),  # repeated letters: not a list of options
        ("C, A, T", "cat", 0.0),  # lower case: a word, not option letters
    ],
)
def test_multiple_choice(answer, ground_truth, expected):
    assert outcome_reward("multiple choice", respond(answer), ground_truth) == expected


@pytest.mark.parametrize(
    ("answer", "ground_truth", "wer"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 0.0),
        # reference 6 words; 1 substitution (sat->sit) + 1 deletion (the) = 2 errors -> WER 2/6
        ("the cat sit on mat", "the cat sat on the mat", 2 / 6),
        # 2 words, both substituted, 1 inserted -> WER 3/2 (> 1: exp keeps the reward positive)
        ("a b c", "hello world", 3 / 2),
    ],
)
def test_ocr_is_exp_minus_wer(answer, ground_truth, wer):
    assert outcome_reward("OCR", respond(answer), ground_truth) == pytest.approx(math.exp(-wer))


@pytest.mark.parametrize(
    ("answer", "ground_truth", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        # prediction 3 tokens, target 6: ROUGE-1 F = 2*1*(3/6)/(1+3/6) = 2/3; ROUGE-2: 2 of 5 target bigrams,
        # precision 2/2 -> F = 2*(2/5)/(1+2/5) = 4/7; ROUGE-L: LCS 3 -> F = 2/3.
        ("the cat sat", "the cat sat on the mat", (2 / 3 + 4 / 7 + 2 / 3) / 3),
        # stemming: "cats" and "cat" share the stem
        ("cats", "cat", (1.0 + 0.0 + 1.0) / 3),
        ("dog", "the cat", 0.0),
        ("line one\nline two", "line one line two", 1.0),
    ],
)
@pytest.mark.parametrize("problem_type", ["free-form", "text"])
def test_free_form_is_mean_rouge(problem_type, answer, ground_truth, expected):
    assert outcome_reward(problem_type, respond(answer), ground_truth) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>x</think><answer>1</answer>", 1.0),
        ("  <think>\nx\n</think>\n\n<answer> 1 </answer>\n", 1.0),
        ("<think>x</think> so: <answer>1</answer> done", 1.0),
        ("<answer>1</answer>", 0.0),
        ("<think>x</think>", 0.0),
        ("<answer>1</answer><think>x</think>", 0.0),
        ("prefix <think>x</think><answer>1</answer>", 0.0),
        ("<think>x<answer>1</answer>", 0.0),
        ("1", 0.0),
    ],
)
def test_format_reward(response, expected):
    assert format_reward(response) == expected


@pytest.mark.parametrize(
    ("response", "require_format", "expected"),
    [
        ("<answer>B</answer>", True, 0.0),
        ("<answer>B</answer>", False, 1.0),
        ("B", True, 0.0),
        ("B", False, 1.0),
        ("<think>x</think><answer>B</answer>", True, 1.0),
        ("<think>x</think><answer></answer>", True, 0.0),
    ],
)
def test_format_gates_outcome(response, require_format, expected):
    assert outcome_reward("multiple choice", response, "B", require_format=require_format) == expected


def test_empty_answer_scores_zero_for_every_type():
    for problem_type in PROBLEM_TYPES:
        assert outcome_reward(problem_type, respond("  "), "abc 1") == 0.0


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>a</think><answer> B </answer>", "B"),
        ("<think>I could write <answer>A</answer></think><answer>C</answer>", "C"),
        ("<answer>\nmulti\nline\n</answer>", "multi\nline"),
        ("no tags", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_unwrap_answer():
    assert unwrap_answer("<answer> Denali </answer>") == "Denali"
    assert unwrap_answer(" 42 ") == "42"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("Multiple Choice", "multiple choice"), ("multiple_choice", "multiple choice"), ("ocr", "OCR"),
     ("free_form", "free-form"), (" Numerical ", "numerical"), ("text", "text")],
)
def test_problem_type_spellings(spelling, canonical):
    assert canonical_problem_type(spelling) == canonical


def test_unknown_problem_type_error_names_value_and_known_types():
    with pytest.raises(ValueError) as info:
        outcome_reward("essay", respond("x"), "x")
    message = str(info.value)
    assert "'essay'" in message
    for name in PROBLEM_TYPES:
        assert name in message


def test_empty_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="empty ground truth"):
        outcome_reward("numerical", respond("1"), "<answer> </answer>")


def test_rewards_stay_in_unit_interval():
    for problem_type in PROBLEM_TYPES:
        for answer in ["x y z w v u t s r q", "1", "A"]:
            assert 0.0 <= outcome_reward(problem_type, respond(answer), "A") <= 1.0


# --- the verl custom_reward_function shim --------------------------------------------------------------


def _verl_loaded_compute_score(**reward_kwargs):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://sophiavl_verl.outcome_reward_fn",
                    "name": "compute_score",
                    "reward_kwargs": reward_kwargs,
                }
            }
        }
    )
    return get_custom_reward_fn(config)


def test_shim_loads_through_verl_and_routes_by_extra_info():
    fn = _verl_loaded_compute_score()
    assert fn is not None
    # the same keyword arguments verl's naive reward manager passes
    score = fn(
        data_source="sophiavl_r1",
        solution_str=respond("C,A"),
        ground_truth="<answer>A, C</answer>",
        extra_info={"problem_type": "multiple choice", "question": "q", "index": 0},
    )
    assert score == 1.0
    ocr = fn(data_source="sophiavl_r1", solution_str=respond("the cat sit on mat"),
             ground_truth="the cat sat on the mat", extra_info={"problem_type": "OCR"})
    assert ocr == pytest.approx(math.exp(-2 / 6))


def test_shim_reward_kwargs_reach_require_format():
    unformatted = dict(data_source="x", solution_str="B", ground_truth="B",
                       extra_info={"problem_type": "multiple choice"})
    assert _verl_loaded_compute_score()(**unformatted) == 0.0
    assert _verl_loaded_compute_score(require_format=False)(**unformatted) == 1.0


def test_shim_falls_back_to_data_source():
    assert compute_score("numerical", respond("0.5"), r"\frac{1}{2}", extra_info={}) == 1.0
    assert compute_score("numerical", respond("0.5"), "0.5") == 1.0


def test_shim_without_problem_type_names_the_key():
    with pytest.raises(ValueError) as info:
        compute_score("sophiavl_r1", respond("1"), "1", extra_info={"index": 3})
    assert 'extra_info["problem_type"]' in str(info.value)
    assert "'sophiavl_r1'" in str(info.value)


def test_shim_unknown_problem_type_in_extra_info():
    with pytest.raises(ValueError, match="unknown problem_type 'essay'"):
        compute_score("sophiavl_r1", respond("1"), "1", extra_info={"problem_type": "essay"})
