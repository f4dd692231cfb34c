"""The recipe run for real: verl's own ``main_ppo`` on the CPU backend, checked from its logs and dumps.

``scripts/train_cpu.sh`` (the quick start's main job) runs once for the module: data prep with a system prompt,
the TRM trained by the recipe's SFT path, a tiny policy, 2 Trust-GRPO steps + validation + a checkpoint with the
TRM in hosting mode A (verl serves it as a reward model behind its router), a resumed run to step 3, the audit
and plots. Every check recomputes its value independently from what the run wrote (``run.json``, verl's file
logger and rollout dumps, the reward replica's server log). Two shorter runs follow in hosting mode B: the TRM
server killed after step 1, and verl's legacy trainer.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from support.paper_reference import reference_rewards

ROOT = Path(__file__).resolve().parents[1]
RECIPE = OmegaConf.load(ROOT / "recipes" / "sophiavl_r1" / "sophiavl_r1_tiny_cpu.yaml")
BASE = OmegaConf.load(ROOT / "recipes" / "sophiavl_r1" / "sophiavl_r1_7b_base.yaml")
T = RECIPE.algorithm.trust_grpo.anneal_steps
ALPHA = BASE.algorithm.trust_grpo.alpha
THRESHOLD = BASE.algorithm.trust_grpo.correct_threshold
UNIFORM = BASE.algorithm.trust_grpo.uniform_groups
GROUP_WAIT_S = RECIPE.reward.reward_kwargs.group_wait_s
RESPONSES_PER_STEP = RECIPE.data.train_batch_size * BASE.actor_rollout_ref.rollout.n

pytestmark = pytest.mark.timeout(1800)


def _train_cpu(out: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m sophiavl_verl.tools.train_cpu`` as scripts/train_cpu.sh runs it (the venv is already set up here)."""
    return subprocess.run(
        [sys.executable, "-m", "sophiavl_verl.tools.train_cpu", "--out", str(out), *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )


def _check(result: subprocess.CompletedProcess, out: Path) -> None:
    if result.returncode:
        logs = "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted((out / "runs").glob("*.log")))
        pytest.fail(f"train_cpu exited with {result.returncode}\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}{logs}")


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_cpu") / "out"
    result = _train_cpu(out)
    _check(result, out)
    return out, result


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


def _dump(out: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts" / f"{step}.jsonl").read_text().splitlines()]


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by prompt: the dump's ``uid`` is verl's TransferQueue key ``{uid}_{rollout}_{output}``."""
    groups = defaultdict(list)
    for row in rows:
        groups[row["uid"].rsplit("_", 2)[0]].append(row)
    return groups


def test_outputs_and_progress(main_run):
    out, result = main_run
    for name in ("metrics.jsonl", "report.md"):
        assert (out / name).is_file()
    assert list((out / "plots").glob("*.png")) and list((out / "audit").glob("*.png"))
    for stage in ("[1/6] data", "[2/6] trm", "[3/6] policy", "[4/6] train", "[5/6] resume", "[6/6] audit"):
        assert stage in result.stdout
    assert str(out / "report.md") in result.stdout
    report = (out / "report.md").read_text()
    assert "3 training steps (2 + 1 after resuming" in report and "## Audit of the run's own rollouts" in report
    assert sorted(_metrics(out)) == [1, 2, 3]
    assert (out / "checkpoints" / "global_step_2").is_dir() and (out / "checkpoints" / "global_step_3").is_dir()


def test_run_json_says_what_ran(main_run):
    from sophiavl_verl.tools.trm_sft import SFT_MODULE, sft_losses

    out, _ = main_run
    record = json.loads((out / "run.json").read_text())
    assert list(record["stages"]) == ["data", "trm", "policy", "train", "resume", "audit"]
    assert record["wall_s"] >= sum(record["stages"].values()) - 1
    trm = record["trm"]
    assert trm["trained_by"] == SFT_MODULE and Path(trm["model_dir"]) == Path(trm["checkpoint"]) / "huggingface"
    losses = sft_losses(Path(trm["checkpoint"]).parents[1] / "sft.jsonl")  # verl's own SFT log
    assert (trm["steps"], trm["first_loss"], trm["last_loss"]) == (max(losses), losses[1], losses[max(losses)])
    assert trm["last_loss"] < trm["first_loss"]
    assert record["training_steps"] == [1, 2, 3] and record["final_step"] == 3 and record["trainer"] == "v1"
    assert record["hosting"]["mode"] == "A" and set(record["hosting"]["runs"]) == {"train", "resume"}
    assert trm["labels"] == "hackable" and Path(trm["model_dir"]).parts[-4] == "embedded_trm_sft_hackable"
    report = (out / "report.md").read_text()
    assert "hosting mode A" in report and SFT_MODULE in report and "labelled by the `hackable` set" in report


def test_report_shows_the_trust_weight_on_the_runs_own_rollouts_with_kinds(main_run):
    from sophiavl_verl.tools.response_kinds import KINDS

    out, _ = main_run
    groups = json.loads((out / "audit" / "report.json").read_text())["groups"]
    untrusted = sorted((g for g in groups if g["mixed"] and g["untrusted"]), key=lambda g: g["gamma"])
    section = (out / "report.md").read_text().split("## The trust weight on this run's own rollouts")[1]
    section = section.split("\n## ")[0]
    if not untrusted:
        assert "No mixed group is untrusted" in section
        return
    assert f"{len(untrusted)} of {sum(g['mixed'] for g in groups)} mixed groups" in section
    assert f"γ = {untrusted[0]['gamma']:.3f}" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| kind")]
    assert len(rows) == len(untrusted[0]["responses"]) and all(row.split(" | ")[0][2:] in KINDS for row in rows)


def test_mode_a_thinking_rewards_went_through_verls_router_to_the_replica(main_run):
    """The manager's endpoint is the router verl handed it (not the replica), and the replica verl started from
    the SFT checkpoint answered every request: its own server log counts them."""
    out, _ = main_run
    record = json.loads((out / "run.json").read_text())
    metrics = _metrics(out)
    # Under skip_uniform a step asks the TRM only for its mixed groups' responses, and a step may draw none.
    assert sum(metrics[step]["trm/http_requests"] for step in (1, 2, 3)) > 0
    for name, steps in (("train", (1, 2)), ("resume", (3,))):
        endpoints = record["hosting"]["runs"][name]
        manager, (replica,) = endpoints["manager"], endpoints["replicas"]
        assert manager["mode"] == "A"
        router = manager["base_url"].removeprefix("http://").removesuffix("/v1")
        assert router != replica["address"]  # the manager never talked to the replica directly
        console = (out / "runs" / f"{name}.log").read_text()
        assert f"transformers serve for {record['trm']['model_dir']} at {replica['address']}" in console
        served = Path(replica["log"]).read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
        sent = sum(metrics[step]["trm/http_requests"] for step in steps)
        # Validation's requests (a validation response never waits for its group: always sent) reach the replica
        # too; the training steps' are all there.
        assert served >= sent and served > 0, (name, served, sent)
        for step in steps:
            m = metrics[step]
            responses = m["trm/requests"] + m["trm/skipped"]
            assert m["trm/requests"] == round(m["trust_grpo/mixed_group_frac"] * responses), (step, m)
            assert m["trm/http_requests"] >= m["trm/requests"] and m["trm/failed"] == 0, (step, m)


def test_system_prompt_reaches_the_policy_and_the_trm_is_asked(main_run):
    out, _ = main_run
    rows = [row for step in (1, 2, 3) for row in _dump(out, step)]
    assert all(row["input"].startswith("system\nYou are a helpful assistant.\nuser\n") for row in rows)
    # Before the fix of raw_prompt shapes, every request with a system message raised: nothing was scored.
    assert any(row["sophiavl_trm_status"] == "scored" for row in rows)


def test_anneal_follows_the_schedule_across_the_resume(main_run):
    out, _ = main_run
    for step, row in _metrics(out).items():
        assert row["trust_grpo/anneal"] == pytest.approx(math.exp(-step / T), rel=1e-12), step


def test_trm_requests_are_the_responses_of_mixed_groups(main_run):
    out, _ = main_run
    for step, row in _metrics(out).items():
        rows = _dump(out, step)
        assert len(rows) == RESPONSES_PER_STEP
        assert row["trm/requests"] + row["trm/skipped"] == RESPONSES_PER_STEP
        assert row["trm/failed"] == 0
        for members in _groups(rows).values():
            correct = [r["sophiavl_outcome_reward"] >= THRESHOLD for r in members]
            uniform = all(correct) or not any(correct)
            statuses = {r["sophiavl_trm_status"] for r in members}
            assert statuses == ({"skipped"} if uniform else {"scored"}), (step, correct, statuses)
        assert row["trm/skipped"] == sum(r["sophiavl_trm_status"] == "skipped" for r in rows)
    assert sum(row["trm/requests"] for row in _metrics(out).values()) > 0, "no mixed group in the whole run"


def test_trust_grpo_metrics_recomputed_from_the_dumps(main_run):
    out, _ = main_run
    for step, row in _metrics(out).items():
        rows = _dump(out, step)
        outcome = [r["sophiavl_outcome_reward"] for r in rows]
        thinking = [math.nan if r["sophiavl_thinking_reward"] is None else r["sophiavl_thinking_reward"] for r in rows]
        index = [r["uid"].rsplit("_", 2)[0] for r in rows]
        anneal = math.exp(-step / T)
        rewards, gammas = reference_rewards(outcome, thinking, index, alpha=ALPHA, anneal=anneal,
                                            threshold=THRESHOLD, uniform_groups=UNIFORM)
        terms = [r - o for r, o in zip(rewards, outcome, strict=True)]
        assert row["trust_grpo/thinking_term_mean"] == pytest.approx(sum(terms) / len(terms), abs=1e-6)
        groups = _groups(rows)
        mixed = [
            uid for uid, members in groups.items()
            if {r["sophiavl_outcome_reward"] >= THRESHOLD for r in members if r["sophiavl_trm_status"] == "scored"}
            == {True, False}
        ]
        assert row["trust_grpo/mixed_group_frac"] == pytest.approx(len(mixed) / len(groups), abs=1e-12)
        if mixed:
            gamma_of = {index[i]: gammas[i] for i in range(len(rows))}
            expected = sum(gamma_of[uid] for uid in mixed) / len(mixed)
            assert row["trust_grpo/gamma_mean"] == pytest.approx(expected, abs=1e-6)
        else:
            assert "trust_grpo/gamma_mean" not in row


def test_validation_does_not_wait_for_groups(main_run):
    out, _ = main_run
    for step, row in _metrics(out).items():
        if "timing_s/testing" in row:
            # Validation samples have val_kwargs.n = 1 response per prompt, never rollout.n: the group board
            # must not hold them for group_wait_s.
            assert row["timing_s/testing"] < GROUP_WAIT_S / 2, (step, row["timing_s/testing"])
    assert {2, 3} <= {step for step, row in _metrics(out).items() if "timing_s/testing" in row}


def test_a_trm_outage_is_counted_never_read_as_bad_reasoning(tmp_path):
    out = tmp_path / "outage"
    # query_policy=all: every response asks the TRM, so every step after the outage has failed requests.
    result = _train_cpu(out, "--steps", "3", "--resume-steps", "0", "--no-validation", "--no-audit", "--trm-hosting",
                        "B", "--trm-outage-after-step", "1", "--", "reward.reward_kwargs.query_policy=all")
    _check(result, out)
    assert "stopping the TRM server after step 1" in result.stdout
    manager = json.loads((out / "run.json").read_text())["hosting"]["runs"]["train"]["manager"]
    assert manager["mode"] == "B" and manager["base_url"].startswith("http://127.0.0.1:")
    metrics = _metrics(out)
    assert sorted(metrics) == [1, 2, 3]
    for step in (2, 3):
        row, rows = metrics[step], _dump(out, step)
        failed = [r for r in rows if r["sophiavl_trm_status"] == "failed"]
        assert row["trm/requests"] == RESPONSES_PER_STEP and row["trm/failed"] == len(failed) > 0
        assert row["trust_grpo/thinking_missing_frac"] == pytest.approx(len(failed) / RESPONSES_PER_STEP)
        assert all(math.isnan(r["sophiavl_thinking_reward"]) for r in failed)  # missing, never 0
    # The server is stopped within a second of step 1's log line: step 2 may still have had a few answers.
    assert metrics[3]["trm/failed"] == RESPONSES_PER_STEP and metrics[3]["trust_grpo/thinking_term_mean"] == 0.0
    assert metrics[1]["trm/failed"] == 0 and metrics[1]["trust_grpo/thinking_missing_frac"] < 1.0


def test_legacy_trainer_one_step(tmp_path):
    out = tmp_path / "legacy"
    result = _train_cpu(out, "--trainer", "legacy", "--steps", "1", "--resume-steps", "0", "--no-validation",
                        "--no-audit", "--trm-hosting", "B")
    _check(result, out)
    (row,) = _metrics(out).values()
    assert row["trust_grpo/anneal"] == pytest.approx(math.exp(-1 / T), rel=1e-12)
    assert row["trm/requests"] + row["trm/skipped"] == RESPONSES_PER_STEP
