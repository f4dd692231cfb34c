"""``sophiavl-verl``: the one command line of the plugin.

``sophiavl-verl audit [INPUT]``
    Score rollouts with a thinking reward model and show what Trust-GRPO would do with them (γ, rewards,
    advantages), without a GPU. No INPUT: the embedded sample and the embedded tiny TRM.
``sophiavl-verl plot LOG``
    Training curves of a verl run (outcome reward, γ metrics, thinking term, anneal factor, TRM service)
    from its console log or file-logger JSONL. Needs the ``plot`` extra (matplotlib).
``sophiavl-verl data rl|trm INPUT... -o OUT``
    Data preparation (:mod:`sophiavl_verl.tools.data`): SophiaVL-R1 rows -> verl RL parquet, or thinking reward
    model SFT parquet. ``sophiavl-verl-data`` (and ``python -m sophiavl_verl.tools.data``) is the same command
    under its old name.

Every command line of the package (these, ``python -m sophiavl_verl.tools.local_server`` and
``python -m sophiavl_verl.tools.train_cpu``) runs through :func:`run_command`, the one place where a user error
becomes one line ``<prog>: error: <message>`` on stderr and exit status 2. ``--help`` and argument errors import
no heavy module: each command imports its work when it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sophiavl_verl.errors import ConfigError, DataError, InputError, UsageError

__all__ = ["main", "data_main", "build_parser", "run_command", "set_command", "OneLineErrorParser"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`UsageError` (reported by :func:`run_command`)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)", prog=self.prog)


def set_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> None:
    """Make ``parser`` (a leaf subcommand) run ``run(args)``; its errors are reported under its ``prog``."""
    parser.set_defaults(run=run, prog=parser.prog)


def _terminate(signum, frame):  # pragma: no cover - exercised by sending SIGTERM / SIGHUP
    raise KeyboardInterrupt(f"signal {signum}")


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                unwind_signals: bool = False) -> int:
    """Parse ``argv`` and run the chosen command (``args.run``, set by :func:`set_command`); returns the exit status.

    A user error, i.e. a :class:`~sophiavl_verl.errors.InputError` (a bad argument, file, row or field; a
    :class:`UsageError` from the parser included) or :class:`~sophiavl_verl.errors.ConfigError`, or an ``OSError``
    the checks could not foresee (a full disk), is printed as one line ``<prog>: error: <message>`` on stderr and
    gives 2, without a traceback; ``prog`` is the (sub)command at fault. Ctrl-C gives 130.

    Args:
        parser: The command line's parser (a :class:`OneLineErrorParser`).
        argv: The arguments; ``None`` = ``sys.argv[1:]``.
        unwind_signals: SIGTERM and SIGHUP (a closed terminal) also unwind like Ctrl-C, so that context managers
            stop servers, release locks and remove partial files. An ignored signal (nohup) stays ignored.
    """
    prog = parser.prog
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)} if unwind_signals else {}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _terminate)
    try:
        args = parser.parse_args(argv)
        prog = args.prog
        return args.run(args)
    except (InputError, ConfigError, OSError) as exc:
        print(f"{getattr(exc, 'prog', None) or prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from sophiavl_verl.tools.audit import AuditSettings

    d = AuditSettings()
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
    g.add_argument("--limit", type=_positive_int, default=None, help="audit only the first N groups")
    t = a.add_argument_group("thinking reward model (default: the embedded tiny TRM)")
    t.add_argument("--trm-url", default=None, help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (vllm serve)")
    t.add_argument("--trm-model", default=None, help="model name the server serves")
    t.add_argument("--trm-api-key-env", default="SOPHIAVL_TRM_API_KEY",
                   help="environment variable holding the API key (never printed)")
    t.add_argument("--max-concurrency", type=_positive_int, default=None,
                   help="TRM requests in flight (default: 1 for the embedded CPU server, 16 for --trm-url)")
    t.add_argument("--timeout", type=float, default=60.0, help="seconds per TRM request")
    t.add_argument("--max-retries", type=int, default=3, help="retries of a TRM request")
    t.add_argument("--query-policy", default=d.query_policy, choices=("all", "skip_uniform"),
                   help="skip_uniform: do not ask the TRM about groups whose answers are all correct or all wrong")
    t.add_argument("--cache-dir", default=None,
                   help="where the embedded TRM is built (default $SOPHIAVL_VERL_CACHE or ~/.cache/sophiavl_verl)")
    s = a.add_argument_group("Trust-GRPO settings (algorithm.trust_grpo.* of the plugin)")
    s.add_argument("--alpha", type=float, default=d.alpha, help="α of Eq. 5")
    s.add_argument("--schedule", default=d.schedule, help="annealing schedule: exp, linear, cosine, constant, ...")
    s.add_argument("--step", type=int, default=None,
                   help="training step for the annealing factor (default: each dump row's step, else 1)")
    s.add_argument("--anneal-steps", type=int, default=d.anneal_steps,
                   help="T of the schedule (the paper: the run's total steps)")
    s.add_argument("--correct-threshold", type=float, default=d.correct_threshold, help="R^o >= this is correct")
    s.add_argument("--uniform-groups", default=d.uniform_groups, choices=("skip", "trust"),
                   help="thinking term of groups that are not mixed: none (skip) or γ = 1 (trust)")
    s.add_argument("--no-trust-weight", action="store_true", help="γ = 1 everywhere (the w/o-trust-weight ablation)")
    s.add_argument("--epsilon", type=float, default=d.epsilon, help="std epsilon of the advantage")
    s.add_argument("--no-norm-by-std", action="store_true", help="advantage R - mean (Dr.GRPO), not / std")
    s.add_argument("--no-require-format", action="store_true",
                   help="grade answers of responses without the <think>/<answer> format")
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

    settings = AuditSettings(
        alpha=args.alpha,
        schedule=args.schedule,
        step=args.step,
        anneal_steps=args.anneal_steps,
        correct_threshold=args.correct_threshold,
        uniform_groups=args.uniform_groups,
        use_trust_weight=not args.no_trust_weight,
        epsilon=args.epsilon,
        norm_by_std=not args.no_norm_by_std,
        require_format=not args.no_require_format,
        query_policy=args.query_policy,
    )
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
        trm_url=args.trm_url,
        trm_model=args.trm_model,
        trm_api_key_env=args.trm_api_key_env,
        cache_dir=args.cache_dir,
        max_concurrency=args.max_concurrency,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
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
    from sophiavl_verl.tools.plots import PlotError, check_plotting, parse_metrics_log, plot_training, write_series_csv

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
    """``sophiavl-verl-data`` and ``python -m sophiavl_verl.tools.data``: ``sophiavl-verl data`` under its old name."""
    parser = OneLineErrorParser(prog="sophiavl-verl-data", description=DATA_DESCRIPTION)
    _add_data_commands(parser)
    return run_command(parser, argv, unwind_signals=True)


if __name__ == "__main__":
    sys.exit(main())
