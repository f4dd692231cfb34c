"""The training-log reader and training curves behind ``sophiavl-verl plot``.

verl's tracker writes the metrics of each step through its console logger
(``verl.utils.logger.aggregate_logger.LocalLogger``: ``step:N - key:value - key:value ...``, values printed by
``pprint.pformat``, so numpy scalars appear as ``np.float64(0.5)``; Ray prefixes lines with
``(TaskRunner pid=...)``) and its file logger (``verl.utils.tracking.FileLogger``: JSON lines
``{"step": N, "data": {...}}``, NaN written as ``null``). :func:`parse_metrics_log` reads either
(:func:`file_logger_rows` the file logger's rows as they are);
:func:`plot_training` draws the panels of :data:`TRAINING_PANELS`; :func:`write_series_csv` keeps every metric.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sophiavl_verl.errors import PlotError
from sophiavl_verl.tools.output import pyplot, save_png, write_atomically

__all__ = [
    "PlotError",
    "TRAINING_PANELS",
    "file_logger_rows",
    "parse_metrics_log",
    "plot_training",
    "write_series_csv",
]


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


def _file_logger_row(line: str) -> tuple[int, dict[str, Any]] | None:
    """One line of verl's file logger as ``(step, data)``; None for any other line (a line still being written too).

    Raises:
        ValueError: The line is a logger row whose step is not a whole number >= 0.
    """
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "step" not in obj or not isinstance(obj.get("data"), dict):
        return None
    return _step(obj["step"]), obj["data"]


def file_logger_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each row of a verl file-logger JSONL as ``(step, data)``, in order; other lines are skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if (row := _file_logger_row(line)) is not None:
                yield row


def _parse_file_logger_line(line: str) -> tuple[int, dict[str, float]] | None:
    row = _file_logger_row(line)
    if row is None:
        return None
    step, data = row
    values = {}
    for key, raw in data.items():
        if raw is None:  # orjson writes NaN as null
            values[key] = math.nan
        elif isinstance(raw, bool):
            values[key] = float(raw)
        elif isinstance(raw, (int, float)):
            values[key] = float(raw)
    return step, values


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
    plt = pyplot()

    def draw(ax, title, keys):
        for key in keys:
            steps, values = zip(*series[key], strict=True)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    for stem, title, keys in panels:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        draw(ax, title, keys)
        paths[stem] = save_png(fig, out / f"{stem}.png")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.6 * rows), squeeze=False)
    for ax, (_, title, keys) in zip(axes.flat, panels, strict=False):
        draw(ax, title, keys)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    paths["training_curves"] = save_png(fig, out / "training_curves.png")
    return paths


def write_series_csv(series: dict[str, list[tuple[int, float]]], path: str | os.PathLike) -> Path:
    """All parsed metrics as a wide CSV (one row per step, one column per metric, empty when not logged)."""
    import csv

    steps = sorted({s for points in series.values() for s, _ in points})
    lookup = {key: dict(points) for key, points in series.items()}
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["step", *series])
    for step in steps:
        writer.writerow([step, *("" if step not in lookup[k] else repr(lookup[k][step]) for k in series)])
    return write_atomically(Path(path), text.getvalue())
