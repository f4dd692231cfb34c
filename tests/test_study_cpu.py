"""The trust-weight study (scripts/study_cpu.sh --quick): real main_ppo runs of the shipped presets, checked against
their own dumps and the paper's equations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from support.dicts import flat
from support.paper_reference import reference_rewards
from support.verl import compose_verl_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "sophiavl_r1"

pytestmark = pytest.mark.timeout(1800)


# ------------------------------------------------------------------------------ arm configs (no run)


INPUTS = ("data.train_files=/d/t.parquet", "data.val_files=/d/v.parquet", "actor_rollout_ref.model.path=/m")


@pytest.mark.parametrize("arm_name",
                         ["grpo", "trust_grpo_hackable", "no_trust_hackable", "no_trust_no_anneal_hackable"])
def test_an_arm_is_its_preset_with_the_tiny_cpu_recipes_keys_only(arm_name, tmp_path):
    """Against the preset as shipped, an arm's config differs only where the tiny CPU recipe sets a key (to the tiny
    recipe's value) or, where both set it, where the preset's value wins."""
    from sophiavl_verl.tools.study_cpu import _ARM, arm_config

    arm = _ARM[arm_name]
    path = arm_config(arm, tmp_path)
    def leaves(config_dir, config_name):  # empty mappings are no leaves: a recipe may fill one in
        return flat(compose_verl_config(INPUTS, config_dir=config_dir, config_name=config_name), empty_mappings=False)

    composed = leaves(tmp_path, path.stem)
    preset = leaves(RECIPES, arm.preset)
    tiny = leaves(RECIPES, "sophiavl_r1_tiny_cpu")
    base = leaves(RECIPES, "sophiavl_r1_7b")  # the base, launchable
    tiny_keys = {k for k in tiny if tiny[k] != base.get(k)}
    preset_keys = {k for k in preset if preset[k] != base.get(k)}
    for key in set(composed) | set(preset):
        if key in preset_keys:
            assert composed.get(key) == preset[key], key
        elif key in tiny_keys:
            assert composed.get(key) == tiny[key], key
        else:
            assert composed.get(key) == preset.get(key), key
    # the method's switches are the preset's
    for key in ("algorithm.adv_estimator", "algorithm.trust_grpo.use_trust_weight", "algorithm.trust_grpo.schedule",
                "reward.reward_manager.name"):
        assert composed[key] == preset[key]


# --------------------------------------------------------------------------------- the quick study


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    result = subprocess.run([sys.executable, "-m", "sophiavl_verl.tools.study_cpu", "--out", str(out), "--quick"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    if result.returncode:
        logs = "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted(out.glob("runs/*/*/main_ppo.log")))
        pytest.fail(f"study_cpu exited with {result.returncode}\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}{logs}")
    return out, result, json.loads((out / "study.json").read_text())


def _runs(study: dict) -> dict[str, dict]:
    return {run["arm"]: run for run in study["runs"]}


def _logged(out: Path, arm: str) -> dict[int, dict]:
    steps = defaultdict(dict)
    for line in (out / "runs" / arm / "seed1" / "verl.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["step"]].update(row["data"])
    return {step: data for step, data in steps.items() if "training/global_step" in data}


def _dump(out: Path, arm: str, step: int) -> list[dict]:
    return [json.loads(line)
            for line in (out / "runs" / arm / "seed1" / "rollouts" / f"{step}.jsonl").read_text().splitlines()]


def _prompt(row: dict) -> str:
    return row["uid"].rsplit("_", 2)[0]


def _verl_grpo_advantages(scores: list[float], index: list[str]) -> np.ndarray:
    """Per response, verl's own GRPO advantage of the scores (its compute_grpo_outcome_advantage)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards = torch.zeros(len(scores), 2)
    rewards[:, -1] = torch.tensor(scores)
    advantages, _ = compute_grpo_outcome_advantage(rewards, torch.ones(len(scores), 2), np.array(index, dtype=object))
    return advantages[:, -1].numpy()


def test_outputs_progress_and_resume(quick_study, tmp_path):
    from sophiavl_verl.tools.study_cpu import QUICK

    out, result, study = quick_study
    for name in ("study.json", "study.md", "claim1.png", "trust.png"):
        assert (out / name).is_file(), name
    assert sorted(_runs(study)) == sorted(QUICK.arms) and study["settings"]["steps"] == QUICK.steps
    assert "3 runs of main_ppo" in result.stdout and "s/step" in result.stdout
    for arm, run in _runs(study).items():
        assert sorted(int(s) for s in run["steps"]) == list(range(QUICK.steps + 1)), arm  # validation at step 0
        assert run["steps"]["0"]["val_acc"] == pytest.approx(run["steps"]["0"]["val_kinds"]["right"], abs=0.2)
    # Finished runs are not run again: the same command ends at once with the same study.
    again = subprocess.run([sys.executable, "-m", "sophiavl_verl.tools.study_cpu", "--out", str(out), "--quick"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ("main_ppo exited" not in again.stdout
            and json.loads((out / "study.json").read_text())["runs"] == study["runs"])


def test_each_arms_logged_metrics_agree_with_its_dumps(quick_study):
    """Trust-GRPO arms: the thinking term, γ mean and the advantages' range verl logged are the paper's equations (α
    and T as the study sets them; Eq. 6 as verl's GRPO) on the outcome and thinking rewards of the arm's own dumps."""
    from sophiavl_verl.tools.study_cpu import QUICK

    out, _, study = quick_study
    for arm in ("trust_grpo_hackable", "no_trust_hackable"):
        use_trust = arm == "trust_grpo_hackable"
        for step, row in _logged(out, arm).items():
            rows = _dump(out, arm, step)
            outcome = [r["sophiavl_outcome_reward"] for r in rows]
            thinking = [math.nan if r["sophiavl_thinking_reward"] is None else r["sophiavl_thinking_reward"]
                        for r in rows]
            index = [_prompt(r) for r in rows]
            rewards, gammas = reference_rewards(outcome, thinking, index, alpha=1.0,
                                                anneal=math.exp(-step / QUICK.steps), threshold=0.5,
                                                uniform_groups="skip", use_trust_weight=use_trust)
            assert row["trust_grpo/anneal"] == pytest.approx(math.exp(-step / QUICK.steps), rel=1e-12)
            terms = [r - o for r, o in zip(rewards, outcome, strict=True)]
            assert row["trust_grpo/thinking_term_mean"] == pytest.approx(sum(terms) / len(terms), abs=1e-6), (arm, step)
            advantages = _verl_grpo_advantages(rewards, index)
            assert row["critic/advantages/max"] == pytest.approx(advantages.max(), abs=1e-4)
            assert row["critic/advantages/min"] == pytest.approx(advantages.min(), abs=1e-4)
            correct = defaultdict(set)
            for r, uid in zip(rows, index, strict=True):
                if r["sophiavl_trm_status"] == "scored":
                    correct[uid].add(r["sophiavl_outcome_reward"] >= 0.5)
            mixed = [uid for uid, seen in correct.items() if seen == {True, False}]
            if mixed:
                gamma_of = dict(zip(index, gammas, strict=True))
                assert row["trust_grpo/gamma_mean"] == pytest.approx(sum(gamma_of[u] for u in mixed) / len(mixed),
                                                                     abs=1e-6)
            else:
                assert "trust_grpo/gamma_mean" not in row
    assert all(run["steps"][str(s)]["train_kinds"]["responses"] == 32 for run in study["runs"]
               for s in range(1, QUICK.steps + 1))


def test_grpo_arm_has_no_thinking_term_and_verls_grpo_advantages(quick_study):
    from sophiavl_verl.rewards import outcome_reward

    out, _, _ = quick_study
    dataset = {}
    import pandas as pd

    for row in pd.read_parquet(out / "data" / "train.parquet").to_dict("records"):
        dataset[row["reward_model"]["ground_truth"]] = row["extra_info"]["problem_type"]
    for step, row in _logged(out, "grpo").items():
        assert not any(key.startswith("trust_grpo/") for key in row)  # verl's grpo estimator, not ours
        rows = _dump(out, "grpo", step)
        scores = [r["score"] for r in rows]
        for r in rows:  # the score is the outcome reward alone: no thinking term
            assert r["score"] == pytest.approx(outcome_reward(dataset[r["gts"]], r["output"], r["gts"]), abs=1e-6)
        advantages = _verl_grpo_advantages(scores, [_prompt(r) for r in rows])
        assert row["critic/score/mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
        assert row["critic/advantages/max"] == pytest.approx(advantages.max(), abs=1e-4)
        assert row["critic/advantages/min"] == pytest.approx(advantages.min(), abs=1e-4)


def test_no_trust_arm_has_gamma_one_and_the_hackable_trust_grpo_arm_untrusted_groups(quick_study):
    out, _, _ = quick_study
    no_trust = _logged(out, "no_trust_hackable")
    assert any("trust_grpo/gamma_min" in row for row in no_trust.values()), "no mixed group in the no-trust arm"
    for step, row in no_trust.items():
        if "trust_grpo/gamma_min" in row:
            assert row["trust_grpo/gamma_min"] == row["trust_grpo/gamma_mean"] == 1.0, step
            assert row["trust_grpo/untrusted_group_frac"] == 0.0
    trust = _logged(out, "trust_grpo_hackable")
    assert sum(row.get("trust_grpo/untrusted_group_frac", 0.0) for row in trust.values()) > 0
    assert min(row.get("trust_grpo/gamma_min", 1.0) for row in trust.values()) < 1.0
