"""``sophiavl-verl``: the one command line of the plugin.

``sophiavl-verl audit [INPUT]``
    Score rollouts with a thinking reward model and show what Trust-GRPO would do with them (γ, rewards,
    advantages), without a GPU. No INPUT: the embedded sample and the embedded tiny TRM.
``sophiavl-verl plot LOG``
    Training curves of a verl run (outcome reward, γ metrics, thinking term, anneal factor, TRM service)
    from its console log or file-logger JSONL. Needs the ``plot`` extra (matplotlib).
``sophiavl-verl data rl|trm INPUT... -o OUT``
    Data preparation (:mod:`sophiavl_verl.tools.data`): SophiaVL-R1 rows -> verl RL parquet, or thinking reward
    model SFT parquet. ``sophiavl-verl-data`` is the same command
    under its old name.

Every command line of the package (these, ``python -m sophiavl_verl.tools.local_server`` and
``python -m sophiavl_verl.tools.train_cpu``) runs through :func:`sophiavl_verl.tools.command.run_command`, the one
place where a user error becomes one line ``<prog>: error: <message>`` on stderr and exit status 2. ``--help`` and
argument errors import no heavy module: each command imports its work when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path

from sophiavl_verl.errors import DataError
from sophiavl_verl.tools.command import OneLineErrorParser, at_least, run_command, set_command

__all__ = ["main", "data_main", "build_parser"]


def _add_declared(group, cls: type, names, *, defaults: dict | None = None, helps: dict | None = None) -> None:
    """A flag per option ``names`` of the config dataclass ``cls``, from its declaration.

    Name (:func:`~sophiavl_verl.tools.audit.settings.flag`), type and default are the field's, the help is its
    ``metadata["help"]``, each followed by the config key. ``defaults`` and ``helps`` are the audit's own where
    they differ (an audit default says training's). A bool on by default becomes ``--no-…``.
    """
    from sophiavl_verl.tools.audit.settings import declared_fields, flag

    types = typing.get_type_hints(cls)
    prefix = next(f.default for f in dataclasses.fields(cls) if f.name == "_prefix")
    for f in declared_fields(cls):
        if f.name not in names:
            continue
        key, default = f"{prefix}.{f.name}", (defaults or {}).get(f.name, f.default)
        text = (helps or {}).get(f.name) or f.metadata.get("help", "")
        kind = types[f.name]
        if kind is bool:
            text = f"{key}={str(not default).lower()}" + (f": {text}" if text else "")
            group.add_argument(flag(f.name), dest=f.name, action="store_false" if default else "store_true",
                               help=text.replace("%", "%%"))
            continue
        text = f"{text} [{key}" if text else f"[{key}"
        text += f"; training's default: {f.default}]" if default != f.default else "]"
        kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        group.add_argument(flag(f.name), dest=f.name, type=kind, default=default, help=text.replace("%", "%%"))


def build_parser() -> argparse.ArgumentParser:
    from sophiavl_verl.config import SophiaVLRewardConfig, TrustGRPOConfig
    from sophiavl_verl.tools.audit.settings import AUDIT_QUERY_POLICY, PAPER_TOTAL_STEPS, REWARD_OPTIONS

    parser = OneLineErrorParser(
        prog="sophiavl-verl",
        description="SophiaVL-R1's Trust-GRPO for verl: audit your rollouts with a thinking reward model (CPU), "
        "plot a run's training curves, prepare data. See docs/readme_audit.md and docs/readme_rewards_data.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "audit",
        help="what Trust-GRPO would make of your rollouts (CPU only)",
        description="Score every response with a thinking reward model and compute, with the plugin's own "
        "functions, the outcome rewards, γ, the Eq. 5 rewards and the advantages of every group. Writes "
        "report.json, report.md and PNG plots. Without INPUT: the embedded sample (32 questions x 8 responses) "
        "with the embedded tiny thinking reward model, served on 127.0.0.1 for the duration of the command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("input", nargs="?", default=None,
                   help="a groups JSONL (question, images, ground_truth, problem_type, responses) or verl rollout "
                   "dumps (a <step>.jsonl of trainer.rollout_data_dir, or that folder); default: the embedded sample")
    a.add_argument("--out", default="audit_report", help="report folder")
    a.add_argument("--format", dest="fmt", default="auto", choices=("auto", "groups", "verl-dump"),
                   help="input format")
    g = a.add_argument_group("input options (verl rollout dumps carry no images and no problem types)")
    g.add_argument("--problem-type", default=None,
                   help="problem type of rows without one: numerical, 'multiple choice', OCR, free-form")
    g.add_argument("--image-root", default=None,
                   help="folder that relative image paths are resolved against (default: the input's folder)")
    g.add_argument("--allow-outside-image-root", action="store_true",
                   help="read image files that resolve outside the image root (absolute paths, .., symlinks)")
    g.add_argument("--dataset", default=None,
                   help="verl dumps: the RL parquet/JSONL the run trained on; each prompt is matched to its row "
                   "to recover images, problem type and the clean question")
    g.add_argument("--raw-prompt", action="store_true",
                   help="verl dumps: send the whole decoded prompt to the TRM instead of the extracted question")
    g.add_argument("--limit", type=at_least(1), default=None, help="audit only the first N groups")
    t = a.add_argument_group("thinking reward model and rewards (reward.reward_kwargs.* of the plugin; default: "
                             "the embedded tiny TRM)")
    _add_declared(t, SophiaVLRewardConfig, REWARD_OPTIONS, defaults={"query_policy": AUDIT_QUERY_POLICY}, helps={
        "trm_base_url": "OpenAI-compatible base URL of the TRM, e.g. http://host:8000/v1 (vllm serve): http(s), "
                        "a host, a path; no query, fragment or user:password@ (the key goes in --trm-api-key-env's "
                        "variable); default: the embedded tiny TRM, served on 127.0.0.1 by the command",
        "trm_model": "model name the server at --trm-url serves",
    })
    t.add_argument("--max-concurrency", type=at_least(1), default=None,
                   help="TRM requests in flight (default: 1 for the embedded CPU server, 16 for --trm-url)")
    t.add_argument("--cache-dir", default=None,
                   help="where the embedded TRM is built (default $SOPHIAVL_VERL_CACHE or ~/.cache/sophiavl_verl)")
    s = a.add_argument_group("Trust-GRPO settings (algorithm.trust_grpo.* of the plugin)")
    _add_declared(s, TrustGRPOConfig, [f.name for f in dataclasses.fields(TrustGRPOConfig)])
    s.add_argument("--step", type=int, default=None,
                   help="training step for the annealing factor (default: each dump row's step, else 1)")
    s.add_argument("--total-training-steps", type=int, default=PAPER_TOTAL_STEPS,
                   help="the run's total steps: T of the schedule when --anneal-steps is not given, as in training "
                   "(default: the paper's run)")
    s.add_argument("--no-norm-by-std", dest="norm_by_std", action="store_false",
                   help="advantage R - mean (Dr.GRPO), not / std (verl's algorithm.norm_adv_by_std_in_grpo=false)")
    o = a.add_argument_group("output")
    o.add_argument("--text-limit", type=int, default=2000,
                   help="characters of each question/response kept in report.json (0 = all)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "plot",
        help="training curves from a verl log",
        description="Plot the outcome reward (critic/score/mean, critic/rewards/mean), the Trust-GRPO metrics "
        "(trust_grpo/*: γ, μ_c, μ_w, thinking term, anneal factor) and the thinking reward model's (trm/*) from "
        "a verl console log (step:N - key:value - ...) or file-logger JSONL ({\"step\": N, \"data\": {...}}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("log", help="verl console output saved to a file, or the file logger's JSONL")
    p.add_argument("--out", default="training_plots", help="folder for the PNGs and metrics.csv")

    _add_data_commands(sub.add_parser("data", help="prepare verl parquet: RL data, or the thinking reward model's SFT "
                                      "data", description=DATA_DESCRIPTION))
    set_command(a, _audit)
    set_command(p, _plot)
    return parser


DATA_DESCRIPTION = ("Data preparation: SophiaVL-R1 rows -> verl RL parquet (rl), (question, image, response, score) "
                    "rows -> verl SFT parquet for the thinking reward model (trm). See docs/readme_rewards_data.md.")


def _add_data_commands(parser: argparse.ArgumentParser) -> None:
    """The ``rl`` and ``trm`` subcommands of data preparation, under ``parser``."""
    from sophiavl_verl.config import DEFAULT_MAX_IMAGE_BYTES

    commands = parser.add_subparsers(dest="data_command", metavar="{rl,trm}", required=True)
    helps = {
        "rl": "SophiaVL-R1-130k rows -> verl RL parquet",
        "trm": "(question, image, response, score) rows -> verl SFT parquet for the thinking reward model",
    }
    for name, help_text in helps.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("inputs", nargs="+", help="data files (.json, .jsonl, .parquet) or dataset folders")
        sub.add_argument("-o", "--output", required=True, help="output .parquet (the train split with --val-size)")
        sub.add_argument("--image-root", help="folder image paths are relative to (default: the first input's folder)")
        sub.add_argument("--val-size", type=float, default=0, help="validation rows: a count, or a fraction < 1")
        sub.add_argument(
            "--val-output",
            help="validation parquet (default: val.parquet next to train.parquet, else <output stem>_val.parquet)",
        )
        sub.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
        sub.add_argument("--strict", action="store_true", help="fail on the first bad row")
        sub.add_argument("--max-image-pixels", type=int, help="Pillow's decompression-bomb limit (default: Pillow's)")
        sub.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                         help=f"largest image file or embedded image, checked before reading it (default: "
                         f"{DEFAULT_MAX_IMAGE_BYTES // 2**20} MiB)")
        sub.add_argument("--allow-outside-image-root", action="store_true",
                         help="read image paths that resolve outside --image-root (absolute, .., symlinks)")
        if name == "rl":
            sub.add_argument("--data-source", default="sophiavl_r1", help="value of the data_source column")
            sub.add_argument("--system-prompt", help="a system message before each row's question (default: none)")
        set_command(sub, _data)


def _data(args) -> int:
    from sophiavl_verl.tools.data import prepare_rl, prepare_trm

    options = dict(
        image_root=args.image_root, val_size=args.val_size, val_output=args.val_output, strict=args.strict,
        seed=args.seed, max_image_pixels=args.max_image_pixels, max_image_bytes=args.max_image_bytes,
        allow_outside_image_root=args.allow_outside_image_root,
    )
    if args.data_command == "rl":
        summary = prepare_rl(args.inputs, args.output, data_source=args.data_source, system_prompt=args.system_prompt,
                             **options)
    else:
        summary = prepare_trm(args.inputs, args.output, **options)
    print(summary.format())
    if not summary.rows_written:
        raise DataError("no row was written; see the rejected-rows report")
    return 0


def _audit(args) -> int:
    from sophiavl_verl.tools.audit import AuditSettings, run_audit

    settings = AuditSettings.from_options(vars(args))  # each flag to the option declaring it; errors name the flag
    started = time.monotonic()
    report = run_audit(
        args.input,
        out_dir=args.out,
        settings=settings,
        fmt=args.fmt,
        problem_type=args.problem_type,
        image_root=args.image_root,
        allow_outside_image_root=args.allow_outside_image_root,
        dataset=args.dataset,
        raw_prompt=args.raw_prompt,
        cache_dir=args.cache_dir,
        max_concurrency=args.max_concurrency,
        limit=args.limit,
        text_limit=args.text_limit or None,
        progress=not args.no_progress,
    )
    o, trm = report["overall"], report["trm"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    def num(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(
        f"\nAudited {o['groups']} groups / {o['responses']} responses in {time.monotonic() - started:.0f} s.\n"
        f"  untrusted groups (mixed, γ < 1): {o['untrusted_groups']} of {o['mixed_groups']} mixed "
        f"({pct(o['untrusted_group_frac'])}); γ mean {num(o['gamma_mean'])}, min {num(o['gamma_min'])}\n"
        f"  μ_c vs μ_w (mixed groups): {num(o['mu_correct_mean'])} vs {num(o['mu_wrong_mean'])}; "
        f"thinking reward correct vs wrong: {num(o['thinking_reward_correct_mean'])} vs "
        f"{num(o['thinking_reward_wrong_mean'])}\n"
        f"  TRM failures: {trm['failed']} of {trm['requested']}; latency p50 {num(trm['latency_p50_s'])} s, "
        f"p95 {num(trm['latency_p95_s'])} s\n"
        f"Report: {Path(report['paths']['markdown']).resolve()}\n"
        f"        {Path(report['paths']['json']).resolve()}"
    )
    return 0


def _plot(args) -> int:
    from sophiavl_verl.tools.output import check_plotting
    from sophiavl_verl.tools.training_log import PlotError, parse_metrics_log, plot_training, write_series_csv

    check_plotting()
    series = parse_metrics_log(args.log)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PlotError(f"--out {out} is a file; give a folder for the plots")
    try:
        paths = plot_training(series, args.out)
    except PlotError as exc:
        raise PlotError(f"{args.log}: {exc}") from None
    csv = write_series_csv(series, Path(args.out) / "metrics.csv")
    steps = sorted({s for points in series.values() for s, _ in points})
    print(f"Parsed {len(series)} metrics over {len(steps)} steps ({steps[0]}..{steps[-1]}) from {args.log}")
    for name, path in paths.items():
        print(f"  {name}: {Path(path).resolve()}")
    print(f"  all metrics: {csv.resolve()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sophiavl-verl`` console script; returns the exit status."""
    return run_command(build_parser(), argv, unwind_signals=True)


def data_main(argv: Sequence[str] | None = None) -> int:
    """``sophiavl-verl-data``: ``sophiavl-verl data`` under its old name."""
    parser = OneLineErrorParser(prog="sophiavl-verl-data", description=DATA_DESCRIPTION)
    _add_data_commands(parser)
    return run_command(parser, argv, unwind_signals=True)


if __name__ == "__main__":
    sys.exit(main())
