"""PNG plots of an audit report, and training curves from verl's metric logs.

Audit plots (:func:`plot_audit`): ``gamma_hist.png`` (γ of the mixed groups), ``thinking_by_correctness.png``
(thinking reward distributions of correct vs wrong responses, failures counted aside) and
``by_problem_type.png`` (mean thinking reward of correct vs wrong responses and the share of untrusted
groups, per problem type).

Training curves (:func:`parse_metrics_log`, :func:`plot_training`): verl's tracker writes the metrics of
each step through its console logger (``verl.utils.logger.aggregate_logger.LocalLogger``:
``step:N - key:value - key:value ...``, values printed by ``pprint.pformat``, so numpy scalars appear as
``np.float64(0.5)``; Ray prefixes lines with ``(TaskRunner pid=...)``) and its file logger
(``verl.utils.tracking.FileLogger``: JSON lines ``{"step": N, "data": {...}}``, NaN written as ``null``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

from sophiavl_verl.errors import PlotError

__all__ = ["PlotError", "TRAINING_PANELS", "check_plotting", "parse_metrics_log", "plot_audit", "plot_training", "write_series_csv"]

CORRECT_COLOUR = "#2e8b57"
WRONG_COLOUR = "#c0392b"
DPI = 110


# ------------------------------------------------------------------------------------------- audit plots


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported with the first figure (so the CLI starts fast).

    Raises:
        PlotError: If matplotlib is not installed (it comes with the ``plot`` extra).
    """
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plots need matplotlib, which is not installed: pip install 'sophiavl-verl[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plotting() -> None:
    """Raise :class:`PlotError`, naming the ``plot`` extra, if matplotlib is missing: a command checks it first."""
    _pyplot()


def _save(fig, path: Path) -> Path:
    from sophiavl_verl.tools.report import write_atomically

    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        _pyplot().close(fig)
    return write_atomically(path, buffer.getvalue())


def plot_audit(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the audit's PNG plots into ``out_dir``; returns ``{name: path}``."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = report["groups"]
    o = report["overall"]
    paths = {}

    # γ histogram over mixed groups.
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    gammas = [g["gamma"] for g in groups if g["mixed"] and g["gamma"] is not None]
    bins = [i / 20 for i in range(21)]
    if gammas:
        ax.hist([min(1.0, g) for g in gammas], bins=bins, color="#4a78b5", edgecolor="white")
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("γ (trust weight of the group's thinking rewards)")
    ax.set_ylabel("mixed groups")
    not_mixed = len(groups) - len(gammas)
    uniform = "no thinking term" if report["settings"]["uniform_groups"] == "skip" else "γ = 1"
    ax.set_title(
        f"γ over {len(gammas)} mixed groups: {o['untrusted_groups']} untrusted (γ < 1)\n"
        f"(not shown: {not_mixed} groups not mixed, {uniform})",
        fontsize=10,
    )
    if not gammas:
        ax.text(0.5, 0.5, "no mixed group", transform=ax.transAxes, ha="center", va="center")
    paths["gamma_hist"] = _save(fig, out / "gamma_hist.png")

    # Thinking reward distributions: correct vs wrong.
    responses = [r for g in groups for r in g["responses"]]
    correct = [r["thinking_reward"] for r in responses if r["correct"] and r["thinking_reward"] is not None]
    wrong = [r["thinking_reward"] for r in responses if not r["correct"] and r["thinking_reward"] is not None]
    failed = sum(r["trm_status"] == "failed" for r in responses)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    edges = [-0.05 + i / 10 for i in range(12)]
    ax.hist([correct, wrong], bins=edges, color=[CORRECT_COLOUR, WRONG_COLOUR],
            label=[f"correct (n={len(correct)}, mean {_fmt(_avg(correct))})",
                   f"wrong (n={len(wrong)}, mean {_fmt(_avg(wrong))})"])
    ax.set_xlabel("thinking reward R^t")
    ax.set_ylabel("responses")
    ax.set_xticks([i / 10 for i in range(11)])
    ax.legend(fontsize=9)
    ax.set_title(f"Thinking reward by outcome ({failed} TRM failures not shown, never counted as 0)", fontsize=10)
    paths["thinking_by_correctness"] = _save(fig, out / "thinking_by_correctness.png")

    # Per problem type.
    by_type = report["by_problem_type"]
    types = list(by_type)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    x = range(len(types))
    width = 0.38
    c_means = [by_type[t]["thinking_reward_correct_mean"] for t in types]
    w_means = [by_type[t]["thinking_reward_wrong_mean"] for t in types]
    ax1.bar([i - width / 2 for i in x], [v if v is not None else 0 for v in c_means], width,
            color=CORRECT_COLOUR, label="correct")
    ax1.bar([i + width / 2 for i in x], [v if v is not None else 0 for v in w_means], width,
            color=WRONG_COLOUR, label="wrong")
    for i, (c, w) in enumerate(zip(c_means, w_means)):
        for dx, v in ((-width / 2, c), (width / 2, w)):
            ax1.text(i + dx, (v or 0) + 0.01, "n/a" if v is None else f"{v:.2f}", ha="center", fontsize=8)
    ax1.set_xticks(list(x), types, rotation=15)
    ax1.set_ylim(0, 1.25)
    ax1.set_ylabel("mean thinking reward")
    ax1.legend(fontsize=9, loc="upper center", ncol=2)
    ax1.set_title("Thinking reward by problem type", fontsize=10)
    fracs = [by_type[t]["untrusted_group_frac"] for t in types]
    ax2.bar(list(x), [f if f is not None else 0 for f in fracs], color="#8e6bbf")
    for i, t in enumerate(types):
        a = by_type[t]
        ax2.text(i, (fracs[i] or 0) + 0.02, f"{a['untrusted_groups']}/{a['mixed_groups']}", ha="center", fontsize=8)
    ax2.set_xticks(list(x), types, rotation=15)
    ax2.set_ylim(0, 1.25)
    ax2.set_ylabel("untrusted / mixed groups")
    ax2.set_title("Share of mixed groups with γ < 1", fontsize=10)
    paths["by_problem_type"] = _save(fig, out / "by_problem_type.png")
    return paths


def _avg(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# ----------------------------------------------------------------------------------------- metric logs

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONSOLE = re.compile(r"(?:^|[\s)\]])step:(\S+?)((?: - [^\n]*)?)$")
_NUMPY_SCALAR = re.compile(r"^(?:np|numpy)\.\w+\((.*)\)$")


def _value(text: str) -> float | None:
    text = text.strip()
    match = _NUMPY_SCALAR.match(text)
    if match:
        text = match.group(1).strip()
    if text in ("True", "False"):
        return 1.0 if text == "True" else 0.0
    try:
        return float(text)
    except ValueError:
        return None


def _step(raw: object) -> int:
    """A logged step: a whole number >= 0 (``3`` or ``3.0``; not ``1.7``, ``"two"``, ``null`` or ``1e400``).

    Raises:
        ValueError: Saying what the step is instead.
    """
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) and raw == int(raw) >= 0:
        return int(raw)
    raise ValueError(f"step {raw!r} is not a whole number >= 0")


def _parse_console_line(line: str) -> tuple[int, dict[str, float]] | None:
    match = _CONSOLE.search(_ANSI.sub("", line.rstrip("\r\n")))
    if not match:
        return None
    values = {}
    for part in match.group(2).split(" - ")[1:]:
        key, sep, raw = part.rpartition(":")
        if not sep or not key:
            continue
        value = _value(raw)
        if value is not None:
            values[key.strip()] = value
    if not match.group(1).isdigit() and not values:
        return None  # "step:" in other text, not a metrics line
    return _step(match.group(1)), values


def _parse_file_logger_line(line: str) -> tuple[int, dict[str, float]] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "step" not in obj or not isinstance(obj.get("data"), dict):
        return None
    values = {}
    for key, raw in obj["data"].items():
        if raw is None:  # orjson writes NaN as null
            values[key] = math.nan
        elif isinstance(raw, bool):
            values[key] = float(raw)
        elif isinstance(raw, (int, float)):
            values[key] = float(raw)
    return _step(obj["step"]), values


def parse_metrics_log(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every numeric metric of a verl log, as ``{key: [(step, value), ...]}`` sorted by step.

    Accepts a console log (``step:N - key:value - ...`` lines anywhere in the output, Ray prefixes and
    colour codes included) and a file-logger JSONL (``{"step": N, "data": {...}}``); a step logged twice
    (a resumed run) keeps the last value.

    Raises:
        PlotError: If the file cannot be read, holds no metric line, or a metric line's step is not a whole
            number >= 0; the message names the file (and the line).
    """
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise PlotError(f"{path}: cannot open: {exc.strerror or exc}") from None
    by_key: dict[str, dict[int, float]] = {}
    metric_lines = 0
    with handle:
        for number, line in enumerate(handle, 1):
            stripped = line.strip()
            if not stripped:
                continue
            try:
                parsed = _parse_file_logger_line(stripped) if stripped.startswith("{") else None
                if parsed is None:
                    parsed = _parse_console_line(line)
            except ValueError as exc:
                raise PlotError(f"{path}:{number}: {exc}") from None
            if parsed is None:
                continue
            step, values = parsed
            if values:
                metric_lines += 1
            for key, value in values.items():
                by_key.setdefault(key, {})[step] = value
    if not metric_lines:
        raise PlotError(
            f"{path}: no verl metrics found. Expected the console logger's lines "
            "'step:N - key:value - ...' (trainer.logger includes 'console') or the file logger's JSON lines "
            "{\"step\": N, \"data\": {...}} (trainer.logger includes 'file'; VERL_FILE_LOGGER_PATH)."
        )
    return {key: sorted(points.items()) for key, points in sorted(by_key.items())}


#: Panels of the training plot: (file stem, title, metric keys; a key ending in "*" is a prefix).
TRAINING_PANELS = (
    ("outcome_reward", "Outcome reward", ("critic/score/mean", "critic/rewards/mean")),
    ("trust", "Trust weight γ", ("trust_grpo/gamma_mean", "trust_grpo/gamma_min", "trust_grpo/untrusted_group_frac",
                                  "trust_grpo/mixed_group_frac")),
    ("thinking", "Thinking reward term", ("trust_grpo/mu_correct", "trust_grpo/mu_wrong",
                                          "trust_grpo/thinking_term_mean", "trust_grpo/thinking_missing_frac",
                                          "trust_grpo/anneal")),
    ("trm_scores", "Thinking reward model: scores", ("trm/thinking_reward_correct_mean",
                                                     "trm/thinking_reward_wrong_mean")),
    ("trm_latency", "Thinking reward model: latency (s)", ("trm/latency_*",)),
    ("trm_requests", "Thinking reward model: requests", ("trm/*",)),
)


def _panel_keys(series: dict, keys: tuple[str, ...], taken: set[str]) -> list[str]:
    out = []
    for key in keys:
        if key.endswith("*"):
            out += [k for k in series if k.startswith(key[:-1]) and k not in taken and k not in out]
        elif key in series:
            out.append(key)
    return out


def plot_training(series: dict[str, list[tuple[int, float]]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """One PNG per panel of :data:`TRAINING_PANELS` that has data, plus ``training_curves.png`` with all of them.

    Returns:
        ``{panel name: path}`` (``training_curves`` for the combined figure).

    Raises:
        PlotError: If none of the panels' metrics is in ``series``.
    """
    taken: set[str] = set()
    panels = []
    for stem, title, keys in TRAINING_PANELS:
        chosen = _panel_keys(series, keys, taken)
        taken.update(chosen)
        if chosen:
            panels.append((stem, title, chosen))
    if not panels:
        raise PlotError(
            "none of the plotted metrics is in the log (critic/score/mean, critic/rewards/mean, trust_grpo/*, "
            f"trm/*); it has {len(series)} other metric(s): {', '.join(list(series)[:8])}"
            f"{' ...' if len(series) > 8 else ''}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    plt = _pyplot()

    def draw(ax, title, keys):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    for stem, title, keys in panels:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        draw(ax, title, keys)
        paths[stem] = _save(fig, out / f"{stem}.png")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.6 * rows), squeeze=False)
    for ax, (stem, title, keys) in zip(axes.flat, panels):
        draw(ax, title, keys)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    paths["training_curves"] = _save(fig, out / "training_curves.png")
    return paths


def write_series_csv(series: dict[str, list[tuple[int, float]]], path: str | os.PathLike) -> Path:
    """All parsed metrics as a wide CSV (one row per step, one column per metric, empty when not logged)."""
    import csv

    from sophiavl_verl.tools.report import write_atomically

    steps = sorted({s for points in series.values() for s, _ in points})
    lookup = {key: dict(points) for key, points in series.items()}
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["step", *series])
    for step in steps:
        writer.writerow([step, *("" if step not in lookup[k] else repr(lookup[k][step]) for k in series)])
    return write_atomically(Path(path), text.getvalue())
