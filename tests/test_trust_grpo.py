"""Trust-GRPO values: Eq. 1-5 against an independent per-group computation, Eq. 6 against verl's GRPO."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos, ray_trainer

from sophiavl_verl.integration import trainer_step
from sophiavl_verl.keys import OUTCOME_KEY, THINKING_KEY, TRM_LATENCY_KEY, TRM_STATUS_KEY
from sophiavl_verl.trust_grpo import (
    group_normalized_advantage,
    group_trust,
    trust_weighted_rewards,
)

from support.paper_reference import reference_advantage, reference_rewards


def random_batch(rng: np.random.Generator, *, missing: float, binary: bool, max_group: int = 10):
    sizes = rng.integers(1, max_group + 1, size=rng.integers(1, 30))
    index = np.array([f"uid-{g}" for g, size in enumerate(sizes) for _ in range(size)], dtype=object)
    rng.shuffle(index)  # groups need not be contiguous
    n = len(index)
    outcome = rng.integers(0, 2, size=n).astype(float) if binary else rng.random(n)
    thinking = np.round(rng.random(n), 1)  # the TRM answers in {0, 0.1, ..., 1}
    thinking[rng.random(n) < missing] = np.nan
    return outcome, thinking, index


@pytest.mark.parametrize("seed", range(40))
def test_trust_weighted_rewards_match_independent_eq_1_to_5(seed):
    rng = np.random.default_rng(seed)
    outcome, thinking, index = random_batch(rng, missing=rng.choice([0.0, 0.2, 0.6]), binary=bool(seed % 2))
    options = dict(
        alpha=float(rng.choice([0.0, 0.3, 1.0])),
        anneal=float(rng.random()),
        threshold=float(rng.choice([0.5, 0.3, 0.9, 1.0])),
        uniform_groups=("skip", "trust")[seed % 3 == 0],
        use_trust_weight=seed % 7 != 0,
    )
    expected_rewards, expected_gamma = reference_rewards(outcome, thinking, index, **options)

    rewards, gamma = trust_weighted_rewards(
        torch.tensor(outcome, dtype=torch.float64),
        torch.tensor(thinking, dtype=torch.float64),
        index,
        alpha=options["alpha"],
        anneal=options["anneal"],
        correct_threshold=options["threshold"],
        uniform_groups=options["uniform_groups"],
        use_trust_weight=options["use_trust_weight"],
    )
    np.testing.assert_allclose(rewards.numpy(), expected_rewards, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gamma.numpy(), expected_gamma, rtol=0, atol=1e-12)


def test_paper_figure_9_group_gets_gamma_e_to_minus_0_8():
    # Figure 9: the correct response (more complete) got R^t = 0.0, the wrong one 0.8 -> γ = e^(-0.8) ≈ 0.45.
    outcome = torch.tensor([0.31, 0.72], dtype=torch.float64)  # free-form ROUGE outcomes: wrong, correct
    thinking = torch.tensor([0.8, 0.0], dtype=torch.float64)
    rewards, gamma = trust_weighted_rewards(outcome, thinking, np.array(["q", "q"], dtype=object), alpha=0.3)
    assert gamma.tolist() == pytest.approx([math.exp(-0.8)] * 2)
    assert round(gamma[0].item(), 2) == 0.45
    assert rewards.tolist() == pytest.approx([0.31 + math.exp(-0.8) * 0.3 * 0.8, 0.72])


def test_missing_thinking_reward_is_excluded_never_zero():
    index = np.array(["g"] * 4, dtype=object)
    outcome = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # The NaN (failed) correct response must not pull μ_c down as a 0 would (0.9 vs 0.45 -> γ = 1 vs < 1).
    thinking = torch.tensor([0.9, math.nan, 0.6, 0.6])
    rewards, gamma = trust_weighted_rewards(outcome, thinking, index, alpha=1.0)
    assert gamma.tolist() == [1.0] * 4
    assert rewards.tolist() == pytest.approx([1.9, 1.0, 0.6, 0.6])


@pytest.mark.parametrize(
    ("thinking", "uniform_groups", "expected_gamma"),
    [
        ([0.2, 0.4, math.nan], "skip", 0.0),  # the only wrong response is unscored: not mixed
        ([0.2, 0.4, math.nan], "trust", 1.0),
        ([0.2, 0.4, 0.9], "skip", math.exp((0.2 + 0.4) / 2 - 0.9)),
    ],
)
def test_uniform_group_policies(thinking, uniform_groups, expected_gamma):
    outcome = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    _, gamma = trust_weighted_rewards(
        outcome, torch.tensor(thinking, dtype=torch.float64), np.array([7, 7, 7]), alpha=0.3,
        uniform_groups=uniform_groups,
    )
    assert gamma.tolist() == pytest.approx([expected_gamma] * 3)


def _verl_grpo(scores: torch.Tensor, mask: torch.Tensor, index: np.ndarray, norm_by_std: bool):
    token_level = torch.zeros_like(mask, dtype=torch.float32)
    last = mask.sum(-1).long() - 1
    token_level[torch.arange(len(scores)), last] = scores
    return core_algos.compute_grpo_outcome_advantage(token_level, mask, index, norm_adv_by_std_in_grpo=norm_by_std)


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_group_normalized_advantage_equals_verl_grpo(seed, norm_by_std):
    rng = np.random.default_rng(100 + seed)
    outcome, _, index = random_batch(rng, missing=0, binary=bool(seed % 2))  # includes one-response groups
    scores = torch.tensor(outcome, dtype=torch.float32)
    lengths = torch.tensor(rng.integers(1, 9, size=len(scores)))
    mask = (torch.arange(8)[None, :] < lengths[:, None]).float()

    ours, our_returns = group_normalized_advantage(scores, mask, index, norm_by_std=norm_by_std)
    verl_adv, _ = _verl_grpo(scores.clone(), mask, index, norm_by_std)
    torch.testing.assert_close(ours, verl_adv, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours, our_returns)
    expected = torch.tensor(reference_advantage(outcome, index, norm_by_std=norm_by_std), dtype=torch.float32)
    torch.testing.assert_close(ours, expected[:, None] * mask, rtol=1e-5, atol=1e-6)


def _data_proto(outcome, thinking, index, *, lengths, extra=None) -> DataProto:
    bs, width = len(outcome), int(max(lengths))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
    token_level = torch.zeros(bs, width)
    token_level[torch.arange(bs), torch.tensor(lengths) - 1] = torch.tensor(outcome, dtype=torch.float32)
    non_tensor = {"uid": np.asarray(index, dtype=object), OUTCOME_KEY: np.asarray(outcome, dtype=float),
                  THINKING_KEY: np.asarray(thinking, dtype=float), **(extra or {})}
    return DataProto.from_dict(
        tensors={"token_level_rewards": token_level, "response_mask": mask}, non_tensors=non_tensor
    )


def _algorithm(**trust_grpo):
    return OmegaConf.create({"adv_estimator": "trust_grpo", "norm_adv_by_std_in_grpo": True, "trust_grpo": trust_grpo})


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("case", ["alpha_zero", "no_thinking_rewards_skip"])
def test_trust_grpo_equals_verl_grpo_through_compute_advantage(seed, case):
    rng = np.random.default_rng(200 + seed)
    outcome, thinking, index = random_batch(rng, missing=0.3, binary=True)
    alpha = 0.0 if case == "alpha_zero" else 0.3
    if case == "no_thinking_rewards_skip":
        thinking[:] = np.nan
    lengths = rng.integers(1, 6, size=len(outcome))
    norm = bool(seed % 2)
    algorithm = _algorithm(alpha=alpha, uniform_groups="skip")
    algorithm.norm_adv_by_std_in_grpo = norm

    grpo = ray_trainer.compute_advantage(
        _data_proto(outcome, thinking, index, lengths=lengths), "grpo", norm_adv_by_std_in_grpo=norm,
        config=OmegaConf.create({"adv_estimator": "grpo"}),
    )
    with trainer_step(global_step=3, total_training_steps=10):
        ours = ray_trainer.compute_advantage(
            _data_proto(outcome, thinking, index, lengths=lengths), "trust_grpo", norm_adv_by_std_in_grpo=norm,
            config=algorithm,
        )
    torch.testing.assert_close(ours.batch["advantages"], grpo.batch["advantages"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.batch["returns"], grpo.batch["returns"], rtol=1e-5, atol=1e-6)


def test_full_estimator_values_and_metrics():
    # Three groups of four: trusted mixed (γ=1), distrusted mixed (γ=e^-0.5), all-correct (skipped).
    index = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    outcome = [1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1]
    thinking = [0.9, 0.7, 0.2, math.nan, 0.1, 0.6, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5]
    status = ["scored"] * 3 + ["failed"] + ["scored"] * 4 + ["skipped"] * 4
    latency = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] + [math.nan] * 4
    data = _data_proto(outcome, thinking, index, lengths=[3] * 12,
                       extra={TRM_STATUS_KEY: np.array(status, dtype=object), TRM_LATENCY_KEY: np.array(latency)})
    metrics: dict = {}
    step, total = 50, 200
    with trainer_step(global_step=step, total_training_steps=total, metrics=metrics):
        out = ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm(alpha=0.3, schedule="exp"))

    anneal = math.exp(-step / total)
    rewards, gammas = reference_rewards(
        outcome, thinking, index, alpha=0.3, anneal=anneal, threshold=0.5, uniform_groups="skip"
    )
    assert gammas[4] == pytest.approx(math.exp(0.1 - 0.6))
    expected = torch.tensor(reference_advantage(rewards, index), dtype=torch.float32)
    torch.testing.assert_close(out.batch["advantages"][:, -1], expected, rtol=1e-5, atol=1e-6)

    assert metrics["trust_grpo/anneal"] == pytest.approx(anneal)
    assert metrics["trust_grpo/mixed_group_frac"] == pytest.approx(2 / 3)
    assert metrics["trust_grpo/gamma_mean"] == pytest.approx((1 + math.exp(-0.5)) / 2)
    assert metrics["trust_grpo/gamma_min"] == pytest.approx(math.exp(-0.5))
    assert metrics["trust_grpo/untrusted_group_frac"] == pytest.approx(0.5)
    assert metrics["trust_grpo/mu_correct"] == pytest.approx((0.8 + 0.1) / 2)
    assert metrics["trust_grpo/mu_wrong"] == pytest.approx((0.2 + 0.6) / 2)
    assert metrics["trust_grpo/thinking_missing_frac"] == pytest.approx(1 / 12)
    expected_term = np.mean([r - o for r, o in zip(rewards, outcome, strict=True)])
    assert metrics["trust_grpo/thinking_term_mean"] == pytest.approx(expected_term)
    assert metrics["trm/requests"] == 8 and metrics["trm/skipped"] == 4 and metrics["trm/failed"] == 1
    assert metrics["trm/latency_p50_s"] == pytest.approx(0.45)
    assert metrics["trm/latency_p95_s"] == pytest.approx(np.percentile(latency[:8], 95))
    assert metrics["trm/thinking_reward_correct_mean"] == pytest.approx(np.mean([0.9, 0.7, 0.1, 0.5, 0.5, 0.5, 0.5]))
    assert metrics["trm/thinking_reward_wrong_mean"] == pytest.approx(np.mean([0.2, 0.6, 0.6, 0.6]))


def test_bad_reward_extra_info_fails_naming_the_row_or_key():
    index = ["a", "a"]
    with trainer_step(global_step=1, total_training_steps=10):
        with pytest.raises(ValueError, match=rf"{THINKING_KEY} of row 1 is 1.5"):
            ray_trainer.compute_advantage(_data_proto([1, 0], [0.2, 1.5], index, lengths=[2, 2]), "trust_grpo",
                                          config=_algorithm())
        with pytest.raises(ValueError, match=rf"{OUTCOME_KEY} of row 0 is nan"):
            ray_trainer.compute_advantage(_data_proto([math.nan, 0], [0.2, 0.5], index, lengths=[2, 2]),
                                          "trust_grpo", config=_algorithm())
        data = _data_proto([1, 0], [0.2, 0.5], index, lengths=[2, 2])
        data.non_tensor_batch[THINKING_KEY] = np.array([0.2, "error"], dtype=object)
        with pytest.raises(ValueError, match=rf"{THINKING_KEY}' of row 1 is 'error', not a number"):
            ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm())
        del data.non_tensor_batch[THINKING_KEY]
        with pytest.raises(KeyError, match="reward.reward_manager.name=sophiavl"):
            ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm())


def test_outside_a_trainer_the_estimator_says_what_is_missing():
    data = _data_proto([1, 0], [0.2, 0.5], ["a", "a"], lengths=[2, 2])
    with pytest.raises(RuntimeError, match="trainer_step"):
        ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm())
    # verl 0.9.1's own call convention (no extra inputs) is refused loudly, not computed wrongly.
    with pytest.raises(RuntimeError, match="without its inputs"):
        core_algos.get_adv_estimator_fn("trust_grpo")(
            token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
            config=_algorithm(), index=data.non_tensor_batch["uid"],
        )


def test_other_estimators_go_to_verl_untouched():
    data = _data_proto([1, 0, 1], [0.2, 0.5, 0.1], ["a", "a", "b"], lengths=[2, 2, 2])
    assert ray_trainer.compute_advantage.__sophiavl_wrapped__ is not ray_trainer.compute_advantage
    expected = ray_trainer.compute_advantage.__sophiavl_wrapped__(
        _data_proto([1, 0, 1], [0.2, 0.5, 0.1], ["a", "a", "b"], lengths=[2, 2, 2]), "rloo",
        config=OmegaConf.create({"adv_estimator": "rloo"}),
    )
    out = ray_trainer.compute_advantage(data, "rloo", config=OmegaConf.create({"adv_estimator": "rloo"}))
    assert torch.equal(out.batch["advantages"], expected.batch["advantages"])


def test_equal_rewards_give_zero_advantage_in_any_dtype():
    scores = torch.full((8,), 0.3 + 0.3 * math.exp(-0.1), dtype=torch.float64)
    advantages, _ = group_normalized_advantage(scores, torch.ones(8, 3), np.array(["g"] * 8, dtype=object))
    assert advantages.dtype == torch.float32 and torch.count_nonzero(advantages) == 0


# ------------------------------------------------------------------------ ties and the public API's inputs


def _constant_trm_batch(value: float):
    """Every (n_correct, n_wrong) split of groups up to 16 responses, all thinking rewards equal to ``value``."""
    index, outcome = [], []
    for n_correct in range(1, 9):
        for n_wrong in range(1, 9):
            uid = f"{n_correct}-{n_wrong}"
            index += [uid] * (n_correct + n_wrong)
            outcome += [1.0] * n_correct + [0.0] * n_wrong
    return np.array(index, dtype=object), np.array(outcome), np.full(len(outcome), value)


@pytest.mark.parametrize("value", [round(0.1 * k, 1) for k in range(11)])
def test_a_constant_thinking_reward_model_trusts_every_group_exactly(value):
    # 3 x 0.7 / 3 = 0.6999999999999998 < 0.7 = 5 x 0.7 / 5 in float64: equal scores must still mean γ = 1.
    index, outcome, thinking = _constant_trm_batch(value)
    rewards, gamma = trust_weighted_rewards(outcome, thinking, index, alpha=0.3, anneal=0.5)
    assert gamma.tolist() == [1.0] * len(index)
    assert rewards.tolist() == [o + 0.3 * 0.5 * value for o in outcome]
    trust = group_trust(outcome, thinking, index)
    assert bool(trust.mixed.all()) and not bool(trust.untrusted.any())

    data = _data_proto(outcome, thinking, index, lengths=[2] * len(index))
    metrics: dict = {}
    with trainer_step(global_step=1, total_training_steps=10, metrics=metrics):
        ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm())
    assert metrics["trust_grpo/untrusted_group_frac"] == 0.0
    assert metrics["trust_grpo/gamma_min"] == metrics["trust_grpo/gamma_mean"] == 1.0


def test_a_real_difference_just_above_the_tie_tolerance_still_distrusts():
    index = np.array(["g"] * 4, dtype=object)
    thinking = [0.5, 0.5, 0.5 + 1e-6, 0.5 + 1e-6]
    _, gamma = trust_weighted_rewards([1.0, 1.0, 0.0, 0.0], thinking, index, alpha=0.3)
    assert gamma[0].item() == pytest.approx(math.exp(-1e-6), rel=1e-12) and gamma[0].item() < 1
    assert group_trust([1.0, 1.0, 0.0, 0.0], thinking, index).untrusted.tolist() == [True]


@pytest.mark.parametrize(
    ("outcome", "thinking", "options", "message"),
    [
        ([1.0, math.nan], [0.5, 0.5], {}, r"^outcome of row 1 is nan; outcome rewards must be finite"),
        ([1.0, math.inf], [0.5, 0.5], {}, r"^outcome of row 1 is inf"),
        ([1.0, 0.0], [0.5, 1.5], {}, r"^thinking of row 1 is 1.5; it must be in \[0, 1\] or NaN"),
        ([1.0, 0.0], [-0.1, 0.5], {}, r"^thinking of row 0 is -0.1"),
        ([1.0, 0.0], [0.5, math.inf], {}, r"^thinking of row 1 is inf"),
        ([1.0, 0.0], [0.5, "0.5"], {}, r"^thinking of row 1 is '0.5', not a number"),
        ([1.0, 0.0, 1.0], [0.5, 0.5], {}, r"must be 1-D of one length"),
        ([1.0, 0.0], [0.5, 0.5], {"alpha": math.nan}, r"^trust_weighted_rewards.alpha must be a finite number"),
        ([1.0, 0.0], [0.5, 0.5], {"alpha": math.inf}, r"^trust_weighted_rewards.alpha must be a finite number"),
        ([1.0, 0.0], [0.5, 0.5], {"anneal": math.nan}, r"^trust_weighted_rewards.anneal must be a finite number"),
        ([1.0, 0.0], [0.5, 0.5], {"uniform_groups": "bogus"}, r"^trust_weighted_rewards.uniform_groups must be one"),
        ([1.0, 0.0], [0.5, 0.5], {"correct_threshold": 0.0}, r"^trust_weighted_rewards.correct_threshold must be"),
        ([1.0, 0.0], [0.5, 0.5], {"use_trust_weight": "no"}, r"^trust_weighted_rewards.use_trust_weight must be"),
    ],
)
def test_trust_weighted_rewards_rejects_what_the_estimator_rejects(outcome, thinking, options, message):
    with pytest.raises(ValueError, match=message):
        trust_weighted_rewards(outcome, thinking, ["a", "a"], **{"alpha": 0.3, **options})


def test_trust_weighted_rewards_names_a_missing_group_id():
    with pytest.raises(ValueError, match="uid\\) of row 1 is missing"):
        trust_weighted_rewards([1.0, 0.0], [0.5, 0.5], ["a", None], alpha=0.3)


def test_any_input_type_computes_in_floating_point():
    # One distrusted group (γ = e^(0.2 - 0.9)): integer outcomes must not truncate the thinking term or γ.
    index = ["a", "a", "a"]
    outcome, thinking = [1, 0, 0], [0.2, 0.9, 0.9]
    gamma = math.exp(0.2 - 0.9)
    want = [1 + gamma * 0.3 * 0.2, gamma * 0.3 * 0.9, gamma * 0.3 * 0.9]
    inputs = {
        "float64 tensor": (torch.tensor(outcome, dtype=torch.float64), torch.tensor(thinking, dtype=torch.float64)),
        "int64 tensor": (torch.tensor(outcome), torch.tensor(thinking, dtype=torch.float64)),
        "bool tensor": (torch.tensor(outcome, dtype=torch.bool), torch.tensor(thinking, dtype=torch.float64)),
        "numpy": (np.array(outcome), np.array(thinking)),
        "lists": (outcome, thinking),
        "object array": (np.array(outcome, dtype=object), np.array(thinking, dtype=object)),
    }
    for name, (o, t) in inputs.items():
        rewards, gammas = trust_weighted_rewards(o, t, np.array(index), alpha=0.3)
        assert rewards.dtype == gammas.dtype == torch.float64, name
        np.testing.assert_allclose(rewards.numpy(), want, rtol=0, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(gammas.numpy(), [gamma] * 3, rtol=0, atol=1e-15, err_msg=name)
    # A float32 tensor keeps its dtype, as verl's scores do; None in a list is a missing thinking reward.
    rewards, _ = trust_weighted_rewards(torch.tensor(outcome, dtype=torch.float32), thinking, index, alpha=0.3)
    assert rewards.dtype == torch.float32
    rewards, _ = trust_weighted_rewards([1, 0, 0], [0.2, None, 0.9], index, alpha=0.3)
    assert rewards.tolist() == pytest.approx([1 + gamma * 0.3 * 0.2, 0.0, gamma * 0.3 * 0.9])


def test_group_normalized_advantage_validates_and_accepts_arrays():
    index = ["a", "a", "b", "b"]
    want, _ = group_normalized_advantage(torch.tensor([1.0, 0.0, 0.5, 0.25]), torch.ones(4, 2), index)
    got, _ = group_normalized_advantage([1, 0, 0.5, 0.25], np.ones((4, 2)), np.array(index))
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="scores of row 2 is nan"):
        group_normalized_advantage([1.0, 0.0, math.nan, 0.0], torch.ones(4, 2), index)
    with pytest.raises(ValueError, match="must agree"):
        group_normalized_advantage([1.0, 0.0, 0.5, 0.0], torch.ones(3, 2), index)
    with pytest.raises(ValueError, match="group_normalized_advantage.epsilon must be a finite number"):
        group_normalized_advantage([1.0, 0.0, 0.5, 0.0], torch.ones(4, 2), index, epsilon=math.nan)


def test_bf16_token_rewards_are_read_exactly_never_rounded_to_bf16():
    # Issue 18: the base score was summed and the Eq. 5 reward kept in bf16 (1 + 0.27 -> 1.2734375), so the
    # advantages were off by ~6e-4. The float64 of the incoming bf16 values is the score.
    index = ["a"] * 4 + ["b"] * 4
    outcome = [1, 0, 1, 0, 1, 1, 0, 0]
    thinking = [0.9, 0.3, 0.7, 0.2, 0.1, 0.6, 0.65, 0.8]
    data = _data_proto(outcome, thinking, index, lengths=[3] * 8)
    kl = torch.tensor([[0.013, -0.021, 0.0]] * 8)  # a per-token penalty, as with use_kl_in_reward
    data.batch["token_level_rewards"] = (data.batch["token_level_rewards"] + kl).to(torch.bfloat16)
    with trainer_step(global_step=1, total_training_steps=1000):
        out = ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm(alpha=0.3, schedule="constant"))

    scores = [sum(float(x) for x in row) for row in data.batch["token_level_rewards"].tolist()]
    rewards, _ = reference_rewards(outcome, thinking, index, alpha=0.3, anneal=1.0, threshold=0.5,
                                   uniform_groups="skip")
    # the thinking term on the bf16 score
    rewards = [s + (r - o) for s, r, o in zip(scores, rewards, outcome, strict=True)]
    expected = torch.tensor(reference_advantage(rewards, index), dtype=torch.float32)
    torch.testing.assert_close(out.batch["advantages"][:, 0].float(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("uid", [["p", 0], {"prompt": 0}, np.array([1, 2])])
def test_an_unhashable_uid_is_one_error_naming_uid_and_row(uid):
    index = np.empty(4, dtype=object)
    index[:] = ["a", "a", "b", "b"]
    index[2] = uid
    data = _data_proto([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], ["a"] * 4, lengths=[2] * 4)
    data.non_tensor_batch["uid"] = index
    with trainer_step(global_step=1, total_training_steps=10):
        with pytest.raises(ValueError, match=rf"the group index \(uid\) of row 2 is a {type(uid).__name__}, "):
            ray_trainer.compute_advantage(data, "trust_grpo", config=_algorithm())
    with pytest.raises(ValueError, match=r"\(uid\) of row 0 is a list"):  # a list of equal-length lists too
        group_normalized_advantage([1.0, 0.0], torch.ones(2, 1), [["a"], ["b"]])


def test_alpha_up_to_its_bound_gives_the_float64_advantages():
    # α = 1e20 made the float32 group std overflow (every advantage 0); it is refused (tests/test_config.py),
    # and the largest α accepted still computes exactly.
    from sophiavl_verl.config import MAX_ALPHA

    index = ["a"] * 4
    outcome, thinking = [1, 0, 1, 0], [0.9, 0.3, 0.7, 0.2]
    with trainer_step(global_step=1, total_training_steps=10):
        out = ray_trainer.compute_advantage(_data_proto(outcome, thinking, index, lengths=[2] * 4), "trust_grpo",
                                            config=_algorithm(alpha=MAX_ALPHA, schedule="constant"))
        with pytest.raises(ValueError, match=r"algorithm.trust_grpo.alpha must be a finite number in \[0, 1000\]"):
            ray_trainer.compute_advantage(_data_proto(outcome, thinking, index, lengths=[2] * 4), "trust_grpo",
                                          config=_algorithm(alpha=1e20))
    rewards, _ = reference_rewards(outcome, thinking, index, alpha=MAX_ALPHA, anneal=1.0, threshold=0.5,
                                   uniform_groups="skip")
    expected = torch.tensor(reference_advantage(rewards, index), dtype=torch.float32)
    torch.testing.assert_close(out.batch["advantages"][:, 0], expected, rtol=1e-5, atol=1e-6)
    assert expected.abs().min() > 0.1
