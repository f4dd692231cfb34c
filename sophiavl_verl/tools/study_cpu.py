"""Trust-GRPO at work: the paper's Table 3 in miniature, from real ``main_ppo`` runs on CPU.

``scripts/study_cpu.sh [--out DIR] [--quick]`` (``python -m sophiavl_verl.tools.study_cpu``) trains the same
format-taught tiny policy under several *arms* — a shipped preset of ``recipes/sophiavl_r1`` with the tiny CPU
recipe's overrides and a thinking reward model (TRM) — for several seeds, and compares them step by step:

- **arms** (:data:`ARMS`): GRPO (``ablation_grpo``, no TRM), and with the *hackable* TRM (fluent, confident reasoning
  scored above careful reasoning whatever the answer) Trust-GRPO (``sophiavl_r1_7b``), without the trust weight
  (``ablation_no_trust``) and without trust weight and annealing (``ablation_no_trust_no_anneal``); with the
  *honest* TRM, Trust-GRPO. Both TRMs are trained by the recipe's SFT path (:mod:`sophiavl_verl.tools.trm_sft`);
- **the policy**: the tiny Qwen2.5-VL of the quick start, taught the answer format on the sample's responses of up to
  :data:`POLICY_MAX_RESPONSE_TOKENS` tokens for :data:`POLICY_SFT_STEPS` steps, so that it writes every kind of
  reasoning from the first step, ``fluent`` included;
- **each run**: ``python -m verl.trainer.main_ppo`` on a config that composes the arm's preset on the tiny CPU recipe
  (``DIR/configs/<arm>.yaml``: the tiny recipe, then the preset's own keys), with the study's settings
  (:data:`STUDY_OVERRIDES`, chosen before any run, see ``docs/experiments.md``) and the seed on the command line.
  The TRMs are served once for the whole study by ``transformers serve`` on 127.0.0.1 (hosting mode B) and every run
  talks to the same server;
- **per step**, from verl's own file log and dumps: validation accuracy (held-out prompts, sampled), the share of each
  response kind (:func:`sophiavl_verl.tools.response_kinds.classify_response`) on validation and training rollouts,
  γ (mean, untrusted share), the thinking term, the training score.

``DIR`` ends with ``study.json`` (settings; per arm, seed and step the metrics above; wall times), ``study.md`` (the
same in words, with the claims' numbers: mean and spread over seeds) and one figure per claim (``claim1_*.png``,
``claim2_*.png``, arms side by side), plus every run's own output under ``runs/<arm>/seed<k>/``. A run whose
``result.json`` exists is not run again: an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sophiavl_verl.errors import InputError
from sophiavl_verl.tools.model_cache import fingerprint

__all__ = ["ARMS", "FULL", "QUICK", "Arm", "Settings", "arm_config", "main", "run_metrics"]

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "sophiavl_r1"
#: The policy warm-up learns from the sample's responses of at most this many tokens: all kinds, fluent included.
POLICY_MAX_RESPONSE_TOKENS = 256
#: Optimizer steps of the warm-up: enough that sampling at temperature 1 writes the sample's kinds in about the sample's
#: shares (at 400 steps, as the quick start's policy, 42 % of its samples were malformed; docs/experiments.md).
POLICY_SFT_STEPS = 2400


@dataclass(frozen=True)
class Arm:
    """One arm of the study.

    Attributes:
        name: The arm's name (its folder under ``runs/``).
        preset: The shipped recipe (a config of ``recipes/sophiavl_r1``) the arm runs.
        trm: The label set of its TRM (``trm_sft.LABEL_SETS``), or None for an arm without one.
    """

    name: str
    preset: str
    trm: str | None


ARMS = (
    Arm("grpo", "ablation_grpo", None),
    Arm("trust_grpo_hackable", "sophiavl_r1_7b", "hackable"),
    Arm("no_trust_hackable", "ablation_no_trust", "hackable"),
    Arm("no_trust_no_anneal_hackable", "ablation_no_trust_no_anneal", "hackable"),
    Arm("trust_grpo_honest", "sophiavl_r1_7b", "honest"),
)
_ARM = {arm.name: arm for arm in ARMS}


@dataclass(frozen=True)
class Settings:
    """How much of the study runs.

    Attributes:
        arms: Names of the arms (of :data:`ARMS`).
        seeds: Seeds of each arm (``data.seed`` and the rollout's ``seed``).
        steps: Training steps of each run (also T of the annealing: the recipe's ``anneal_steps: null``).
        test_freq: Validation every this many steps (and before training).
    """

    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    test_freq: int


FULL = Settings(arms=tuple(arm.name for arm in ARMS), seeds=(1, 2, 3), steps=40, test_freq=5)
#: CI's run: one seed, the arms its assertions need (GRPO, and Trust-GRPO and no-trust on the hackable TRM).
QUICK = Settings(arms=("grpo", "trust_grpo_hackable", "no_trust_hackable"), seeds=(1,), steps=3, test_freq=3)

#: The study's settings, the same in every arm, on top of the tiny CPU recipe (why each: docs/experiments.md).
STUDY_OVERRIDES = (
    "algorithm.trust_grpo.alpha=1.0",  # the thinking term on the scale of the outcome reward
    "algorithm.trust_grpo.anneal_steps=null",  # T = the run's steps, the paper's definition
    "actor_rollout_ref.actor.optim.lr=1e-3",  # the tiny policy learns within tens of steps (SPEC §3)
    f"data.max_response_length={POLICY_MAX_RESPONSE_TOKENS}",
    "actor_rollout_ref.rollout.val_kwargs.n=8",  # validation: 8 sampled responses per held-out prompt
    "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
    "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
    "trainer.save_freq=-1",
    "trainer.resume_mode=disable",
)
#: Validation accuracy as verl logs it (the data source of ``sophiavl-verl data rl``, 8 samples per prompt).
VAL_ACC = "val-core/sophiavl_r1/acc/mean@8"
#: Training metrics kept per step (verl's names).
STEP_METRICS = (
    "critic/score/mean", "trust_grpo/gamma_mean", "trust_grpo/untrusted_group_frac", "trust_grpo/mixed_group_frac",
    "trust_grpo/thinking_term_mean", "trust_grpo/anneal", "trm/requests", "trm/failed", "timing_s/step",
    "timing_s/gen",
)


def _say(message: str) -> None:
    print(f"[study_cpu] {message}", flush=True)


# -------------------------------------------------------------------------------------------------- runs


def arm_config(arm: Arm, configs_dir: Path) -> Path:
    """``configs_dir/<arm>.yaml``: the 7B base recipe, then the tiny CPU recipe's keys, then the preset's own keys
    (each file's keys but its ``hydra`` and ``defaults``: Hydra takes a search path from the launched config only),
    so that the preset changes the base recipe exactly as it does on a cluster."""
    from omegaconf import OmegaConf

    from sophiavl_verl.tools.train_cpu import RECIPE_NAME

    def own_keys(name: str):
        config = OmegaConf.load(RECIPE_DIR / f"{name}.yaml")
        for key in ("hydra", "defaults"):
            config.pop(key, None)
        return config

    keys = OmegaConf.merge(own_keys(RECIPE_NAME), own_keys(arm.preset))
    config = OmegaConf.create({"hydra": {"searchpath": ["pkg://verl.trainer.config", f"file://{RECIPE_DIR}"]},
                               "defaults": ["sophiavl_r1_7b_base", "_self_"]})
    path = configs_dir / f"{arm.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Study arm {arm.name} (written by study_cpu): sophiavl_r1_7b_base.yaml, then the keys of "
              f"{RECIPE_NAME}.yaml, then those of {arm.preset}.yaml, all from {RECIPE_DIR}.\n")
    path.write_text(header + OmegaConf.to_yaml(OmegaConf.merge(config, keys)), encoding="utf-8")
    return path


def run_overrides(arm: Arm, seed: int, settings: Settings, inputs: dict[str, str], run_dir: Path) -> list[str]:
    """The Hydra overrides of one run: inputs, the study's settings, the seed, the TRM (hosting mode B)."""
    from sophiavl_verl.tools.train_cpu import hosting_overrides

    trm = hosting_overrides("B", inputs[f"trm_{arm.trm}"], inputs[f"trm_url_{arm.trm}"]) if arm.trm else []
    return [
        f"data.train_files={inputs['train']}", f"data.val_files={inputs['val']}",
        f"actor_rollout_ref.model.path={inputs['policy']}", *trm, *STUDY_OVERRIDES,
        f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
        f"trainer.total_training_steps={settings.steps}", f"trainer.test_freq={settings.test_freq}",
        f"trainer.experiment_name=study_{arm.name}_seed{seed}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}", f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
        f"trainer.validation_data_dir={run_dir / 'validation'}", f"hydra.run.dir={run_dir / 'hydra'}",
    ]


def _kind_shares(dump: Path, dataset: Path) -> dict[str, Any]:
    """Shares of each kind among a dump's responses, and of ``sound`` among its right answers."""
    from sophiavl_verl.rewards import outcome_reward
    from sophiavl_verl.tools.audit.inputs import load_verl_dump
    from sophiavl_verl.tools.response_kinds import KINDS, RIGHT_MIN, classify_response

    groups, _ = load_verl_dump(dump, dataset=dataset)
    kinds, right = Counter(), Counter()
    for group in groups:
        for text in group.responses:
            kind = classify_response(text, group.ground_truth, group.problem_type)
            kinds[kind] += 1
            if outcome_reward(group.problem_type, text, group.ground_truth) >= RIGHT_MIN:
                right[kind] += 1
    total, total_right = sum(kinds.values()), sum(right.values())
    return {"responses": total, "kinds": {k: kinds[k] / total for k in KINDS},
            "right": total_right / total, "sound_among_right": right["sound"] / total_right if total_right else None}


def _logged_steps(path: Path) -> dict[int, dict[str, Any]]:
    """Every row of a verl file-logger JSONL merged by step (validation rows included)."""
    from sophiavl_verl.tools.training_log import file_logger_rows

    steps: dict[int, dict[str, Any]] = {}
    for step, data in file_logger_rows(path):
        steps.setdefault(step, {}).update(data)
    return steps


def run_metrics(run_dir: Path, train: Path, val: Path) -> dict[str, Any]:
    """Per step of one finished run: :data:`STEP_METRICS` from verl's file log and the kinds of its training dump
    (``train``: its dataset), and at validation steps :data:`VAL_ACC` and the kinds of its validation dump."""
    steps: dict[int, dict[str, Any]] = {}
    for step, data in _logged_steps(run_dir / "verl.jsonl").items():
        row: dict[str, Any] = {key: data[key] for key in STEP_METRICS if key in data}
        if VAL_ACC in data:
            row["val_acc"] = data[VAL_ACC]
            row["val_kinds"] = _kind_shares(run_dir / "validation" / f"{step}.jsonl", val)
        train_dump = run_dir / "rollouts" / f"{step}.jsonl"
        if train_dump.exists():
            row["train_kinds"] = _kind_shares(train_dump, train)
        steps[step] = row
    return {str(step): steps[step] for step in sorted(steps)}


def median_step_s(result: dict[str, Any]) -> float:
    """The median of verl's ``timing_s/step`` over a run's steps after the first (which includes warm-up)."""
    times = [row["timing_s/step"] for step, row in result["steps"].items() if int(step) > 1 and "timing_s/step" in row]
    return statistics.median(times) if times else math.nan


def _run_one(arm: Arm, seed: int, settings: Settings, inputs: dict[str, str], out: Path, bar: Any) -> dict[str, Any]:
    """One run of ``main_ppo`` (skipped when its ``result.json`` is there with the same settings)."""
    from sophiavl_verl.tools.main_ppo import launch_main_ppo

    run_dir = out / "runs" / arm.name / f"seed{seed}"
    overrides = run_overrides(arm, seed, settings, inputs, run_dir)
    # What the run computes: not the TRM server's port, which changes when an interrupted study starts again.
    settled = [o for o in overrides if not o.startswith("reward.reward_kwargs.trm_base_url=")]
    run_fingerprint = fingerprint([asdict(arm), settled, inputs["fingerprint"]])
    result_path = run_dir / "result.json"
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
        if result["fingerprint"] == run_fingerprint:
            bar.update(settings.steps)
            return result
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(run_dir, ignore_errors=True)  # a run interrupted half-way starts again
    run_dir.mkdir(parents=True)
    started, seen = time.monotonic(), []

    def on_step(step: int) -> None:  # the log is polled every second: the rate is rough, study.md has verl's timing
        seen.append(time.monotonic())
        rate = (seen[-1] - seen[0]) / (len(seen) - 1) if len(seen) > 1 else math.nan
        bar.set_postfix_str(f"{arm.name} seed {seed} step {step}/{settings.steps}, {rate:.1f} s/step")
        bar.update(1)

    launch_main_ppo(["--config-path", str(out / "configs"), "--config-name", arm.name, *overrides],
                    console=run_dir / "main_ppo.log", log_jsonl=run_dir / "verl.jsonl", cwd=run_dir, on_step=on_step)
    wall = time.monotonic() - started
    result = {"arm": arm.name, "preset": arm.preset, "trm": arm.trm, "seed": seed, "fingerprint": run_fingerprint,
              "overrides": overrides, "wall_s": round(wall, 1),
              "steps": run_metrics(run_dir, Path(inputs["train"]), Path(inputs["val"]))}
    result_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    _say(f"{arm.name} seed {seed}: {settings.steps} steps in {wall:.0f} s (median step {median_step_s(result):.1f} s)")
    return result


# ------------------------------------------------------------------------------------------ the claims


def _at(*path: str) -> Callable[[dict], float | None]:
    """A measure: the value at ``path`` in one step's row (keys of the row, then of its nested dicts), or None
    where the step has none (e.g. no validation at that step)."""

    def measure(row: dict) -> float | None:
        value: Any = row
        for key in path:
            if key not in value:
                return None
            value = value[key]
        return value

    return measure


#: Each measure, a function of one step's row (:func:`run_metrics`).
MEASURES = {
    "validation accuracy": _at("val_acc"),
    "fluent share (validation)": _at("val_kinds", "kinds", "fluent"),
    "sound share among right answers (validation)": _at("val_kinds", "sound_among_right"),
    "fluent share (training rollouts)": _at("train_kinds", "kinds", "fluent"),
    "sound share among right answers (training rollouts)": _at("train_kinds", "sound_among_right"),
    "γ mean (mixed groups)": _at("trust_grpo/gamma_mean"),
    "untrusted share of mixed groups": _at("trust_grpo/untrusted_group_frac"),
}
#: What each figure and claim compares: (title, arms, measures named in :data:`MEASURES`).
CLAIMS = {
    "claim1": ("Claim 1, hackable TRM: without the trust weight the policy drifts toward fluent-wrong reasoning and "
               "ends below Trust-GRPO in accuracy",
               ("grpo", "trust_grpo_hackable", "no_trust_hackable", "no_trust_no_anneal_hackable"),
               ("validation accuracy", "fluent share (validation)", "fluent share (training rollouts)")),
    "claim2": ("Claim 2, honest TRM: Trust-GRPO ends with a larger share of sound reasoning among right answers than "
               "GRPO, at no loss of accuracy",
               ("grpo", "trust_grpo_honest"),
               ("validation accuracy", "sound share among right answers (validation)",
                "sound share among right answers (training rollouts)")),
    "trust": ("The trust weight per step (arms with a TRM)",
              ("trust_grpo_hackable", "no_trust_hackable", "trust_grpo_honest"),
              ("γ mean (mixed groups)", "untrusted share of mixed groups")),
}


def curve(results: list[dict], measure: str) -> dict[int, list[float]]:
    """``{step: [value of each seed]}`` of one measure over one arm's runs (steps where every seed has it)."""
    values: dict[int, list[float]] = {}
    for result in results:
        for step, row in result["steps"].items():
            value = MEASURES[measure](row)
            if value is not None and math.isfinite(value):
                values.setdefault(int(step), []).append(value)
    return {step: v for step, v in sorted(values.items()) if len(v) == len(results)}


def end_of_run(results: list[dict], measure: str, last: int = 2) -> tuple[float, float, list[float]] | None:
    """A measure at the end of each run (the mean of its ``last`` logged values), then mean and standard deviation
    over the runs (seeds): ``(mean, sd, per-seed values)``; None when a run never logged it."""
    per_seed = []
    for result in results:
        values = [MEASURES[measure](row) for _, row in sorted(result["steps"].items(), key=lambda kv: int(kv[0]))]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None
        per_seed.append(statistics.fmean(values[-last:]))
    sd = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    return statistics.fmean(per_seed), sd, per_seed


def draw_claim(name: str, by_arm: dict[str, list[dict]], out: Path) -> Path | None:
    """``out/<name>.png``: one panel per measure of the claim, the arms side by side (mean over seeds, band from the
    lowest to the highest seed)."""
    from sophiavl_verl.tools.output import pyplot, save_png

    title, arms, measures = CLAIMS[name]
    arms = [arm for arm in arms if by_arm.get(arm)]
    if not arms:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 4.0), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        for arm in arms:
            points = curve(by_arm[arm], measure)
            if not points:
                continue
            steps = list(points)
            ax.plot(steps, [statistics.fmean(points[s]) for s in steps], marker="o", markersize=3,
                    label=f"{arm} ({len(by_arm[arm])} seeds)")
            ax.fill_between(steps, [min(points[s]) for s in steps], [max(points[s]) for s in steps], alpha=0.15)
        ax.set_title(measure, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, out / f"{name}.png")


def write_study(out: Path, settings: Settings, results: list[dict], record: dict[str, Any]) -> Path:
    """``study.json``, the figures and ``study.md``; returns ``study.md``."""
    by_arm: dict[str, list[dict]] = {}
    for result in results:
        by_arm.setdefault(result["arm"], []).append(result)
    claims = {}
    for name, (title, arms, measures) in CLAIMS.items():
        figure = draw_claim(name, by_arm, out)
        claims[name] = {
            "title": title, "figure": figure.name if figure else None,
            "end_of_run": {arm: {m: end_of_run(by_arm[arm], m) for m in measures} for arm in arms if by_arm.get(arm)},
        }
    study = {**record, "settings": asdict(settings), "study_overrides": list(STUDY_OVERRIDES),
             "arms": {arm.name: asdict(arm) for arm in ARMS if arm.name in settings.arms},
             "claims": claims, "runs": results}
    (out / "study.json").write_text(json.dumps(study, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Trust-GRPO on CPU: the study", "",
        f"{len(results)} runs of verl's `main_ppo` ({len(settings.arms)} arms × {len(settings.seeds)} seeds "
        f"{list(settings.seeds)}), {settings.steps} steps each, validation every {settings.test_freq} steps; "
        f"{record['wall_s'] / 60:.1f} min in all. Settings on top of each preset and the tiny CPU recipe: "
        + ", ".join(f"`{o}`" for o in STUDY_OVERRIDES) + ".", "",
        "End of run = the mean of a run's last two logged values; then mean ± standard deviation over seeds "
        "(per-seed values in brackets).", "",
    ]
    for name, claim in claims.items():
        lines += [f"## {claim['title']}", ""]
        if claim["figure"]:
            lines += [f"![{name}]({claim['figure']})", ""]
        measures = CLAIMS[name][2]
        lines += ["| arm | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
        for arm, values in claim["end_of_run"].items():
            cells = [f"{v[0]:.3f} ± {v[1]:.3f} [{', '.join(f'{x:.2f}' for x in v[2])}]" if v else "–"
                     for v in (values[m] for m in measures)]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Runs", "", "| arm | preset | TRM | seed | wall (s) | median step (s, verl's `timing_s/step`) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['preset']} | {r['trm'] or '–'} | {r['seed']} | {r['wall_s']} | "
              f"{median_step_s(r):.2f} |" for r in results]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- main


def run_study(out: Path, settings: Settings) -> Path:
    """Build (or reuse) the data, the TRMs and the policy, run every arm and seed, write the study."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer
    from sophiavl_verl.tools.audit import default_cache_dir
    from sophiavl_verl.tools.train_cpu import TINY_POLICY_MARKER, make_tiny_policy, prepare_data
    from sophiavl_verl.tools.trm_sft import make_embedded_trm

    wall = time.monotonic()
    cache = default_cache_dir()
    arms = [_ARM[name] for name in settings.arms]
    labels = sorted({arm.trm for arm in arms if arm.trm})
    _say(f"data, TRMs {labels} and the policy (built once, cached in {cache})")
    train, val = prepare_data(out)
    trms = {label: make_embedded_trm(cache, progress=_say, labels=label) for label in labels}
    policy = make_tiny_policy(cache, POLICY_MAX_RESPONSE_TOKENS, POLICY_SFT_STEPS)
    inputs = {"train": str(train), "val": str(val), "policy": str(policy)}
    # What the TRM builds recorded (losses, wall time), not only their folders: a rebuilt TRM runs the arms again.
    inputs["fingerprint"] = fingerprint([(policy / TINY_POLICY_MARKER).read_text(),
                                         *(asdict(t) for t in trms.values())])
    for arm in arms:
        arm_config(arm, out / "configs")
    results = []
    with ExitStack() as stack:
        for label, trm in trms.items():
            server = stack.enter_context(LocalOpenAIServer(trm.model_dir, log_path=out / f"trm_server_{label}.log",
                                                           progress=_say))
            inputs[f"trm_{label}"], inputs[f"trm_url_{label}"] = trm.model_dir, server.base_url
        runs = [(arm, seed) for seed in settings.seeds for arm in arms]
        _say(f"{len(runs)} runs of main_ppo ({len(arms)} arms x {len(settings.seeds)} seeds, {settings.steps} steps)")
        with tqdm(total=len(runs) * settings.steps, unit="step", desc="study", file=sys.stdout, mininterval=5) as bar:
            for arm, seed in runs:
                results.append(_run_one(arm, seed, settings, inputs, out, bar))
    record = {"wall_s": round(time.monotonic() - wall, 1),
              "trms": {label: {"model_dir": t.model_dir, "steps": t.steps, "last_loss": t.last_loss}
                       for label, t in trms.items()},
              "policy": {"model_dir": str(policy), "max_response_tokens": POLICY_MAX_RESPONSE_TOKENS,
                         "sft_steps": POLICY_SFT_STEPS}}
    return write_study(out, settings, results, record)


def _parser() -> argparse.ArgumentParser:
    from sophiavl_verl.tools.command import OneLineErrorParser, set_command

    parser = OneLineErrorParser(prog="study_cpu", description="Trust-GRPO against its ablations on verl's own trainer, "
                                "on CPU (the paper's Table 3 in miniature).")
    parser.add_argument("--out", type=Path, default=Path("study_cpu_out"), help="output folder (a study resumes in it)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{len(QUICK.arms)} arms, {len(QUICK.seeds)} seed, {QUICK.steps} steps (CI's run)")
    set_command(parser, _run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/study_cpu.sh``; returns the exit status (2, one line, on a bad argument)."""
    from sophiavl_verl.tools.command import run_command

    return run_command(_parser(), list(sys.argv[1:] if argv is None else argv))


def _run(args: argparse.Namespace) -> int:
    from sophiavl_verl.tools.train_cpu import output_folder, say_outputs

    out = output_folder(args.out)
    settings = QUICK if args.quick else FULL
    marker = out / "settings.json"
    if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) != json.loads(json.dumps(asdict(settings))):
        raise InputError(f"--out {out} holds a study with other settings ({marker}); use another folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(asdict(settings)) + "\n", encoding="utf-8")
    report = run_study(out, settings)
    _say(f"done: {out}")
    say_outputs(_say, {"study": out / "study.json", "report": report}, out.glob("*.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
