"""The SophiaVL-R1 recipe run for real on a CPU-only machine: the quick start's main job.

``scripts/train_cpu.sh [--out DIR]`` (``python -m sophiavl_verl.tools.train_cpu``) runs every stage of the
recipe, stage by stage:

1. **data**: ``sophiavl-verl data rl`` turns the embedded sample into verl parquet (train + validation), with a
   system prompt in each chat;
2. **trm**: the thinking reward model trained by the recipe's SFT path (:mod:`sophiavl_verl.tools.trm_sft`:
   ``sophiavl-verl data trm`` -> ``run_trm_sft_3b.sh`` -> ``verl.trainer.sft_trainer``; cached) on the sample's
   responses labelled by the hackable set (:data:`TRM_LABELS`), so that the report shows the trust weight at work;
3. **policy**: a tiny Qwen2.5-VL, first taught the ``<think>...</think><answer>...</answer>`` format on the
   sample's responses so that sampling gives mixed groups from the first step (cached);
4. **train**: ``python -m verl.trainer.main_ppo`` on ``recipes/sophiavl_r1/sophiavl_r1_tiny_cpu.yaml`` (the 7B
   recipe with tiny-model and CPU overrides) on sophiavl_verl's CPU backend: validation, 2 Trust-GRPO steps,
   validation, a checkpoint. The TRM is hosted as the 7B recipe's default, mode A: verl starts it as a reward
   model (the CPU backend serves it with ``transformers serve``) behind its own router, whose address it hands
   the ``sophiavl`` manager; ``--trm-hosting B`` serves it on 127.0.0.1 beside the run instead;
5. **resume**: the same command again, which resumes from the checkpoint and runs step 3 (the schedule goes on);
6. **audit** + **plot**: ``sophiavl-verl audit`` on the run's own rollout dumps (the TRM served on 127.0.0.1),
   ``sophiavl-verl plot`` on its log.

DIR ends with ``run.json`` (what ran, machine-readable: per stage its wall time; the TRM's training; the hosting
mode and the address the manager used; the steps), ``metrics.jsonl`` (one JSON object per training step, keys as
verl logs them, with ``step``), ``report.md`` (the same in words + the audit of the run's rollouts), PNG plots,
and everything the run wrote (``runs/``: verl's logs and file-logger JSONL; ``rollouts/``, ``checkpoints/``,
``data/``, ``audit/``).

Options for tests and experiments: ``--trainer legacy`` (verl's deprecated ``RayPPOTrainer``), ``--steps`` /
``--resume-steps``, ``--trm-hosting A|B``, ``--trm-outage-after-step K`` (mode B: the TRM server is killed once
step K is logged: later steps must go on with missing thinking rewards), ``--no-validation``, ``--no-audit``.
Extra Hydra overrides after ``--``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_verl.errors import InputError
from sophiavl_verl.tools.main_ppo import launch_main_ppo, read_step_metrics, trm_endpoints

__all__ = [
    "RUN_SYSTEM_PROMPT", "TRM_HOSTING_MODES", "TinyRun", "hosting_overrides", "main", "make_tiny_policy",
    "prepare_data",
]

TOOLS = Path(__file__).resolve().parent
RECIPE_DIR = TOOLS.parents[1] / "recipes" / "sophiavl_r1"  # the repository's recipes (the quick start uses a checkout)
RECIPE_NAME = "sophiavl_r1_tiny_cpu"
EMBEDDED = TOOLS / "embedded"
#: The system message of every chat of the run (what many verl datasets carry).
RUN_SYSTEM_PROMPT = "You are a helpful assistant."
VAL_ROWS = 8
#: The policy warm-up learns from the sample's responses of at most this many tokens (short responses keep
#: the CPU rollout fast; the sample's groups stay mixed).
POLICY_MAX_RESPONSE_TOKENS = 80
POLICY_SFT_STEPS = 400
POLICY_LR = 1e-2
POLICY_SEED = 1
#: The marker of the tiny policy's cache folder (what its build recorded; the study fingerprints it).
TINY_POLICY_MARKER = "sophiavl_tiny_policy.json"
#: The label set of the quick start's TRM (``trm_sft.LABEL_SETS``): the hackable one, which scores fluent, confident
#: reasoning above careful reasoning whatever the answer, so that the run's own report shows the trust weight
#: catching groups where the TRM favours wrong answers. (The audit's default TRM is the honest one.)
TRM_LABELS = "hackable"
#: Hosting modes of the thinking reward model: A, verl serves it in the cluster (the recipes' default); B, an
#: external OpenAI-compatible server (here ``transformers serve`` on 127.0.0.1).
TRM_HOSTING_MODES = ("A", "B")


def _recipe_anneal_steps() -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.load(RECIPE_DIR / f"{RECIPE_NAME}.yaml").algorithm.trust_grpo.anneal_steps)


def _say(message: str) -> None:
    print(f"[train_cpu] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ stages


def write_rl_source(out: Path) -> Path:
    """The embedded sample as SophiaVL-R1-130k rows (``problem``, ``solution``, ``path``, ...) for data prep."""
    path = out / "embedded_rl_rows.jsonl"
    with open(EMBEDDED / "groups.jsonl", encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for line in src:
            group = json.loads(line)
            row = {
                "id": group["id"],
                "problem": group["question"],
                "solution": group["ground_truth"],
                "problem_type": group["problem_type"],
                "path": group["images"][0] if group["images"] else None,
                "data_type": "image" if group["images"] else "text",
            }
            dst.write(json.dumps(row) + "\n")
    return path


def prepare_data(out: Path) -> tuple[Path, Path]:
    """Stage 1: ``sophiavl-verl data rl`` on the embedded sample, with a system prompt and a validation split."""
    source = write_rl_source(out)
    train = out / "data" / "train.parquet"
    command = [
        sys.executable, "-m", "sophiavl_verl.tools.cli", "data", "rl", str(source), "-o", str(train),
        "--image-root", str(EMBEDDED), "--val-size", str(VAL_ROWS), "--system-prompt", RUN_SYSTEM_PROMPT, "--strict",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return train, train.with_name("val.parquet")


def _policy_examples(tokenizer: Any, max_response_tokens: int) -> list[tuple[list[dict], list[Any], str]]:
    """The sample's responses of at most ``max_response_tokens`` tokens, each with its chat as verl's dataset renders
    it (system + images + text)."""
    from PIL import Image

    from sophiavl_verl.tools.data import IMAGE_PLACEHOLDER, build_rl_prompt

    examples = []
    with open(EMBEDDED / "groups.jsonl", encoding="utf-8") as f:
        groups = [json.loads(line) for line in f]
    for group in groups:
        images = [Image.open(EMBEDDED / p).convert("RGB") for p in group["images"]]
        text = build_rl_prompt(group["question"], group["problem_type"], len(images)).replace(IMAGE_PLACEHOLDER, "")
        messages = [
            {"role": "system", "content": RUN_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]},
        ]
        examples += [
            (messages, images, response) for response in group["responses"]
            if len(tokenizer(response)["input_ids"]) <= max_response_tokens
        ]
    return examples


def make_tiny_policy(cache_dir: Path, max_response_tokens: int = POLICY_MAX_RESPONSE_TOKENS,
                     sft_steps: int = POLICY_SFT_STEPS) -> Path:
    """Stage 3: a tiny Qwen2.5-VL taught the answer format on the embedded sample (built once, then cached).

    Args:
        cache_dir: The model cache.
        max_response_tokens: The warm-up learns from the sample's responses of at most this many tokens (the study
            of :mod:`sophiavl_verl.tools.study_cpu` takes longer ones, so that its policy writes every kind).
        sft_steps: Optimizer steps of the warm-up.

    Returns:
        The model folder (``cache_dir / "tiny_policy"``; ``tiny_policy_<tokens>_<steps>`` for other settings),
        rebuilt when the model code, the sample or the warm-up settings change.
    """

    from transformers import AutoTokenizer

    from sophiavl_verl.tools.model_cache import build_once, fingerprint
    from sophiavl_verl.tools.tiny_vl import build_tiny_qwen2_5_vl, finetune_policy, recipe_fingerprint

    default = (max_response_tokens, sft_steps) == (POLICY_MAX_RESPONSE_TOKENS, POLICY_SFT_STEPS)
    out = cache_dir / ("tiny_policy" if default else f"tiny_policy_{max_response_tokens}_{sft_steps}")
    recipe = [recipe_fingerprint(sft_steps), (EMBEDDED / "groups.jsonl").read_text(encoding="utf-8"),
              RUN_SYSTEM_PROMPT, max_response_tokens, POLICY_LR, POLICY_SEED]

    def build(folder: Path) -> dict[str, Any]:
        build_tiny_qwen2_5_vl(folder, seed=POLICY_SEED)
        examples = _policy_examples(AutoTokenizer.from_pretrained(folder), max_response_tokens)
        result = finetune_policy(folder, examples, steps=sft_steps, lr=POLICY_LR, seed=POLICY_SEED)
        return {"examples": len(examples), **result}

    build_once(out, fingerprint(recipe), build, marker=TINY_POLICY_MARKER)
    return out


@dataclass
class TinyRun:
    """One run of the recipe on CPU (the options of ``scripts/train_cpu.sh``)."""

    out: Path
    trainer: str = "v1"
    steps: int = 2
    resume_steps: int = 1
    validation: bool = True
    trm_outage_after_step: int | None = None
    trm_hosting: str = "A"
    audit: bool = True
    overrides: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _run_main_ppo(run: TinyRun, name: str, total_steps: int, inputs: dict[str, str], *,
                  on_step: Callable[[int], None]) -> Path:
    """``python -m verl.trainer.main_ppo`` on the tiny CPU recipe (``on_step`` called per logged step); returns its
    file-logger JSONL."""
    runs = run.out / "runs"
    log_jsonl = runs / f"{name}.jsonl"
    hosting = hosting_overrides(run.trm_hosting, inputs["trm"], inputs.get("trm_url"))
    launch_main_ppo([
        "--config-path", str(RECIPE_DIR), "--config-name", RECIPE_NAME,
        f"data.train_files={inputs['train']}", f"data.val_files={inputs['val']}",
        f"actor_rollout_ref.model.path={inputs['policy']}", *hosting,
        f"trainer.default_local_dir={run.out / 'checkpoints'}", f"trainer.rollout_data_dir={run.out / 'rollouts'}",
        f"trainer.total_training_steps={total_steps}", f"trainer.save_freq={run.steps}",
        f"trainer.test_freq={run.steps if run.validation else -1}",
        f"trainer.val_before_train={run.validation and name == 'train'}",
        f"trainer.use_v1={run.trainer == 'v1'}", f"hydra.run.dir={runs / name}",
        *run.overrides,
    ], console=runs / f"{name}.log", log_jsonl=log_jsonl, cwd=run.out, on_step=on_step)
    return log_jsonl


def hosting_overrides(mode: str, trm: str, trm_url: str | None = None) -> list[str]:
    """Hydra overrides of the TRM's hosting mode on the tiny CPU recipe, whose keys are mode A's with the TRM to serve
    unset: ``trm`` is the model folder, ``trm_url`` the external server's ``/v1`` URL in mode B."""
    if mode == "A":
        return [f"reward.reward_model.model_path={trm}"]
    return [f"reward.reward_kwargs.trm_base_url={trm_url}", f"reward.reward_kwargs.trm_model={trm}",
            "reward.reward_model.enable=false", "reward.reward_model.enable_resource_pool=false",
            "reward.reward_model.model_path=null"]


def _merge_metrics(run: TinyRun, logs: list[Path]) -> Path:
    """``metrics.jsonl``: one object per training step across the runs (``{"step": N, <verl's keys>...}``)."""
    steps: dict[int, dict[str, Any]] = {}
    for log in logs:
        steps.update(read_step_metrics(log))
    path = run.out / "metrics.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for step in sorted(steps):
            f.write(json.dumps({"step": step, **steps[step]}, default=_json_default) + "\n")
    combined = run.out / "runs" / "file_logger.jsonl"  # both runs' file-logger rows, for `sophiavl-verl plot`
    combined.write_text("".join(log.read_text(encoding="utf-8") for log in logs), encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def _cli(*args: str, log: Path) -> None:
    """Run a ``sophiavl-verl`` subcommand as a user would, its output in ``log``."""
    with open(log, "w", encoding="utf-8") as f:
        result = subprocess.run([sys.executable, "-m", "sophiavl_verl.tools.cli", *args], stdout=f,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"sophiavl-verl {args[0]} exited with {result.returncode}; its output: {log}")


def _stage(run: TinyRun, name: str, started: float) -> None:
    run.timings[name] = time.monotonic() - started
    _say(f"  {name}: {run.timings[name]:.0f} s")


def run_tiny(run: TinyRun) -> Path:
    """All stages of the module docstring; returns ``report.md`` (``run.json`` beside it)."""
    from sophiavl_verl.tools.audit import default_cache_dir
    from sophiavl_verl.tools.trm_sft import make_embedded_trm

    (run.out / "runs").mkdir(parents=True, exist_ok=True)
    wall = time.monotonic()
    cache = default_cache_dir()
    stages = 6 if run.audit else 5

    t = time.monotonic()
    _say(f"[1/{stages}] data: the embedded sample -> verl parquet (sophiavl-verl data rl, system prompt, validation)")
    train, val = prepare_data(run.out)
    _stage(run, "data", t)

    t = time.monotonic()
    _say(f"[2/{stages}] trm: the thinking reward model by the recipe's SFT path (sophiavl-verl data trm -> "
         f"run_trm_sft_3b.sh -> verl.trainer.sft_trainer), labels {TRM_LABELS!r}; built once, cached in {cache}")
    trm = make_embedded_trm(cache, progress=_say, labels=TRM_LABELS)
    _say(f"  {trm.steps} SFT steps, loss {trm.first_loss:.3f} -> {trm.last_loss:.3f}: {trm.model_dir}")
    _stage(run, "trm", t)

    t = time.monotonic()
    _say(f"[3/{stages}] policy: a tiny Qwen2.5-VL taught the answer format (built once, cached in {cache})")
    policy = make_tiny_policy(cache)
    _stage(run, "policy", t)

    inputs = {"train": str(train), "val": str(val), "policy": str(policy), "trm": trm.model_dir}
    with _trm_server(run, trm.model_dir, "trm_server") if run.trm_hosting == "B" else _no_server() as server:
        if server is not None:
            inputs["trm_url"] = server.base_url

        def outage(step: int) -> None:
            _say(f"  step {step} logged")
            if run.trm_outage_after_step is not None and step >= run.trm_outage_after_step and server.running:
                _say(f"  stopping the TRM server after step {step} (--trm-outage-after-step)")
                server.stop()

        t = time.monotonic()
        hosting = ("mode A: verl serves it as a reward model behind its router" if run.trm_hosting == "A"
                   else f"mode B: transformers serve at {inputs['trm_url']}")
        _say(f"[4/{stages}] train: verl.trainer.main_ppo, {run.trainer} trainer, steps 1-{run.steps} (+ validation, "
             f"checkpoint); the TRM in hosting {hosting}")
        logs = [_run_main_ppo(run, "train", run.steps, inputs, on_step=outage)]
        _stage(run, "train", t)
        if run.resume_steps:
            t = time.monotonic()
            total = run.steps + run.resume_steps
            _say(f"[5/{stages}] resume: the same command from the checkpoint, steps {run.steps + 1}-{total}")
            logs.append(_run_main_ppo(run, "resume", total, inputs, on_step=outage))
            _stage(run, "resume", t)
    metrics = _merge_metrics(run, logs)
    _cli("plot", str(run.out / "runs" / "file_logger.jsonl"), "--out", str(run.out / "plots"),
         log=run.out / "runs" / "plot.log")
    if run.audit:
        t = time.monotonic()
        _say(f"[6/{stages}] audit: sophiavl-verl audit on the run's rollout dumps (the TRM on 127.0.0.1), plot on "
             "its log")
        with _trm_server(run, trm.model_dir, "audit_trm_server") as server:
            _cli("audit", str(run.out / "rollouts"), "--dataset", str(train), "--trm-url", server.base_url,
                 "--trm-model", server.model, "--out", str(run.out / "audit"), "--query-policy", "skip_uniform",
                 "--anneal-steps", str(_recipe_anneal_steps()), "--no-progress", log=run.out / "runs" / "audit.log")
        _stage(run, "audit", t)
    run.timings["total"] = time.monotonic() - wall
    write_run_json(run, trm, metrics)
    return write_report(run, metrics)


def _trm_server(run: TinyRun, model_dir: str, name: str):
    """The TRM behind ``transformers serve`` on 127.0.0.1 (mode B, and the audit), its log in ``runs/``."""
    from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer

    return LocalOpenAIServer(model_dir, log_path=run.out / "runs" / f"{name}.log", progress=_say)


@contextlib.contextmanager
def _no_server():
    yield None


def write_run_json(run: TinyRun, trm: Any, metrics_path: Path) -> Path:
    """``run.json``: what ran, per stage, machine-readable (the quick start's record; its report says the same)."""
    from dataclasses import asdict

    steps = sorted(json.loads(line)["step"] for line in metrics_path.read_text(encoding="utf-8").splitlines())
    endpoints = {name: trm_endpoints(run.out / "runs" / f"{name}.log") for name in ("train", "resume")
                 if (run.out / "runs" / f"{name}.log").exists()}
    for name, found in endpoints.items():
        for replica in found["replicas"]:  # the reward replica's server log (in the temp folder) joins the run's
            kept = run.out / "runs" / f"{name}_reward_server_{replica['rank']}.log"
            with contextlib.suppress(OSError):
                shutil.copyfile(replica["log"], kept)
                replica["log"] = str(kept)
    record = {
        "stages": {name: round(seconds, 1) for name, seconds in run.timings.items() if name != "total"},
        "wall_s": round(run.timings["total"], 1),
        "trm": {**asdict(trm), "labels": TRM_LABELS, "wall_s": round(trm.wall_s, 1)},
        "hosting": {"mode": run.trm_hosting, "runs": endpoints},
        "trainer": run.trainer,
        "training_steps": steps,
        "final_step": steps[-1] if steps else None,
    }
    path = run.out / "run.json"
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


#: Columns of the per-step table of ``report.md``.
REPORT_METRICS = (
    "critic/score/mean", "trm/requests", "trm/skipped", "trm/failed", "trust_grpo/mixed_group_frac",
    "trust_grpo/untrusted_group_frac", "trust_grpo/gamma_min", "trust_grpo/thinking_term_mean", "trust_grpo/anneal",
    "timing_s/step",
)


def write_report(run: TinyRun, metrics_path: Path) -> Path:
    """``report.md``: the run summary (``run.json`` in words, per-step metrics, artefacts) + the audit."""
    steps = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines()]
    out = run.out
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    trm = record["trm"]
    lines = [
        "# SophiaVL-R1 on CPU: run report",
        "",
        f"verl's own `main_ppo` ({run.trainer} trainer) on `recipes/sophiavl_r1/{RECIPE_NAME}.yaml` with the CPU "
        f"backend: {len(steps)} training steps ({run.steps} + {run.resume_steps} after resuming from the checkpoint), "
        f"{run.timings['total']:.0f} s in all.",
        "",
        "Wall time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items() if k != "total") + ".",
        "",
        f"Thinking reward model: trained by `{trm['trained_by']}` through `recipes/sophiavl_r1/run_trm_sft_3b.sh` "
        f"(`trm_sft_tiny_cpu.yaml`) on {trm['rows']} rows of `sophiavl-verl data trm` labelled by the "
        f"`{trm['labels']}` set of `sophiavl_verl/tools/trm_sft.py`, {trm['steps']} SFT steps, "
        f"loss {trm['first_loss']:.3f} -> {trm['last_loss']:.3f} ({trm['wall_s']:.0f} s when built); served from "
        f"`{trm['model_dir']}`.",
        "",
        *(_hosting_sentence(name, endpoints) for name, endpoints in record["hosting"]["runs"].items()),
        "",
        "| step | " + " | ".join(f"`{m}`" for m in REPORT_METRICS) + " |",
        "|---" * (len(REPORT_METRICS) + 1) + "|",
    ]
    for row in steps:
        cells = [f"{row[m]:.4g}" if isinstance(row.get(m), (int, float)) else "–" for m in REPORT_METRICS]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    plots = sorted(p.relative_to(out).as_posix() for p in (out / "plots").glob("*.png"))
    lines += [
        "",
        "Artefacts (relative to this folder): `metrics.jsonl` (one object per training step), `runs/` (console logs,"
        " verl's file-logger JSONL, the TRM server's log), `rollouts/` (verl's rollout dumps), `checkpoints/`,"
        " `data/` (the parquet), `audit/` (`report.json`).",
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
    ]
    lines += _trust_weight_section(out / "audit" / "report.json")
    audit_md = out / "audit" / "report.md"
    if audit_md.exists():
        audit = re.sub(r"\]\((?!https?:)([^)]+\.png)\)", r"](audit/\1)", audit_md.read_text(encoding="utf-8"))
        lines += ["", "## Audit of the run's own rollouts (`sophiavl-verl audit`)", "", audit.split("\n", 1)[1]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _trust_weight_section(audit_json: Path) -> list[str]:
    """The trust weight on the run's own rollouts, from the audit: untrusted groups, and the least trusted group's
    responses with their kinds (:func:`sophiavl_verl.tools.response_kinds.classify_response`)."""
    from sophiavl_verl.tools.response_kinds import classify_response

    if not audit_json.exists():
        return []
    groups = json.loads(audit_json.read_text(encoding="utf-8"))["groups"]
    mixed = [g for g in groups if g["mixed"]]
    untrusted = sorted((g for g in mixed if g["untrusted"]), key=lambda g: g["gamma"])
    lines = ["", "## The trust weight on this run's own rollouts (the audit's scores)", ""]
    if not untrusted:
        return lines + [f"No mixed group is untrusted (of {len(mixed)} mixed groups, {len(groups)} in all): the "
                        "thinking rewards never favoured the wrong answers of a group."]
    lines.append(f"{len(untrusted)} of {len(mixed)} mixed groups ({len(groups)} in all) are untrusted: their wrong "
                 "answers got the higher mean thinking reward, so γ = e^(μ_c − μ_w) < 1 scales their thinking term "
                 "down.")
    worst = untrusted[0]
    lines += ["", f"The least trusted group (step {worst['step']}, {worst['problem_type']}, γ = {worst['gamma']:.3f}, "
              f"μ_c = {worst['mu_correct']:.3f}, μ_w = {worst['mu_wrong']:.3f}), ground truth "
              f"`{worst['ground_truth']}`, its responses by kind:", "",
              "| kind | correct | R^t | reward | advantage | GRPO's advantage | response |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(worst["responses"], key=lambda r: -(r["thinking_reward"] if r["thinking_reward"] is not None
                                                         else -1)):
        kind = classify_response(r["response"], str(worst["ground_truth"]), worst["problem_type"])
        cells = [f"{r[k]:.3f}" if isinstance(r[k], (int, float)) else "–"
                 for k in ("thinking_reward", "reward", "advantage", "advantage_grpo")]
        text = " ".join(r["response"].split()).replace("|", "\\|")
        lines.append(f"| {kind} | {'yes' if r['correct'] else 'no'} | " + " | ".join(cells)
                     + f" | {text[:90] + ('…' if len(text) > 90 else '')} |")
    return lines


def _hosting_sentence(name: str, endpoints: dict[str, Any]) -> str:
    manager, replicas = endpoints["manager"] or {}, endpoints["replicas"]
    if manager.get("mode") == "A":
        served = ", ".join(f"replica {r['rank']} at {r['address']}" for r in replicas) or "no replica line found"
        return (f"- `{name}`: hosting mode A: verl served the TRM as a reward model ({served}, `transformers serve` on "
                f"the CPU backend) behind its router; the `sophiavl` manager used `{manager['base_url']}`.")
    if manager.get("mode") == "B":
        return f"- `{name}`: hosting mode B: the `sophiavl` manager used the external server `{manager['base_url']}`."
    return f"- `{name}`: the log names no TRM endpoint."


def _parser() -> argparse.ArgumentParser:
    from sophiavl_verl.tools.command import OneLineErrorParser, at_least, set_command

    parser = OneLineErrorParser(
        prog="train_cpu", description="The SophiaVL-R1 recipe on verl's own trainer, on CPU (the quick start).",
        epilog="Arguments after -- are passed to main_ppo as Hydra overrides.",
    )
    parser.add_argument("--out", type=Path, default=Path("train_cpu_out"), help="output folder")
    parser.add_argument("--trainer", choices=("v1", "legacy"), default="v1", help="verl's v1 trainer or RayPPOTrainer")
    parser.add_argument("--steps", type=at_least(1), default=2, help="steps of the first run (then a checkpoint)")
    parser.add_argument("--resume-steps", type=at_least(0), default=1, help="steps of the resumed run (0: none)")
    parser.add_argument("--no-validation", action="store_true", help="no validation passes")
    parser.add_argument("--no-audit", action="store_true", help="skip the audit of the rollouts")
    parser.add_argument("--trm-hosting", choices=TRM_HOSTING_MODES, default="A",
                        help="A: verl serves the TRM in the cluster behind its router (the recipes' default); "
                             "B: an external server on 127.0.0.1")
    parser.add_argument("--trm-outage-after-step", type=at_least(1), default=None,
                        help="stop the TRM server once this step is logged (an outage test; needs --trm-hosting B)")
    set_command(parser, _run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/train_cpu.sh``; returns the exit status (2, one line, on a bad argument)."""
    from sophiavl_verl.tools.command import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = _parser()
    parser.set_defaults(overrides=argv[split + 1:])
    return run_command(parser, argv[:split])


def output_folder(path: Path) -> Path:
    """``--out`` made absolute; an :class:`InputError` when it names something other than a folder."""
    out = path.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    return out


def say_outputs(say: Callable[[str], None], outputs: dict[str, Path], figures: Iterable[Path]) -> None:
    """What a command wrote, one ``say`` line each with the labels aligned: ``outputs``, then every figure."""
    lines = [*outputs.items(), *(("figure", png) for png in sorted(figures))]
    width = max(len(label) for label, _ in lines) + 1
    for label, path in lines:
        say(f"  {label + ':':<{width}} {path}")


def _run(args: argparse.Namespace) -> int:
    out = output_folder(args.out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty (a fresh folder keeps runs apart: verl would resume from it)")
    if args.trm_outage_after_step is not None and args.trm_hosting != "B":
        raise InputError("--trm-outage-after-step stops the external TRM server: it needs --trm-hosting B")
    run = TinyRun(out=out, trainer=args.trainer, steps=args.steps, resume_steps=args.resume_steps,
                  validation=not args.no_validation, trm_outage_after_step=args.trm_outage_after_step,
                  trm_hosting=args.trm_hosting, audit=not args.no_audit, overrides=args.overrides)
    report = run_tiny(run)
    _say(f"done in {run.timings['total']:.0f} s")
    say_outputs(_say, {"run": out / "run.json", "metrics": out / "metrics.jsonl", "report": report},
                out.glob("**/*.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
