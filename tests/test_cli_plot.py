"""`sophiavl-verl plot`: training curves from logs written by verl's own Tracking / FileLogger classes."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import subprocess
import sys

import numpy as np
import pytest

from sophiavl_verl.tools.cli import main
from sophiavl_verl.tools.training_log import PlotError, parse_metrics_log

from support.blocked_imports import blocking
from support.images import assert_png

STEPS = [1, 2, 3, 4]


def _metrics(step: int) -> dict:
    """What one training step of the plugin logs (numpy scalars as verl's reducers produce them)."""
    metrics = {
        "critic/score/mean": np.float64(0.25 + 0.1 * step),
        "critic/rewards/mean": 0.3 + 0.1 * step,
        "trust_grpo/gamma_mean": np.float32(1.0 - 0.05 * step),
        "trust_grpo/untrusted_group_frac": 0.5 / step,
        "trust_grpo/mixed_group_frac": 0.75,
        "trust_grpo/anneal": math.exp(-step / 10),
        "trust_grpo/thinking_term_mean": 0.3 * math.exp(-step / 10) * 0.6,
        "trust_grpo/mu_correct": 0.6,
        "trust_grpo/mu_wrong": 0.4 + 0.05 * step,
        "trm/failed": np.int64(step - 1),
        "trm/latency_p50_s": math.nan if step == 2 else 0.1 * step,  # no successful request at step 2
        "trm/thinking_reward_correct_mean": 0.7,
        "trm/thinking_reward_wrong_mean": 0.5,
        "timing_s/step": 12.5,
        "training/global_step": step,
        "val-core/numerical/acc/mean@1": 0.5,
    }
    if step != 3:
        metrics["trust_grpo/gamma_min"] = 0.5  # the estimator omits it when no group is mixed
    return metrics


@pytest.fixture(scope="module")
def verl_logs(tmp_path_factory):
    """A console log (captured stdout, with Ray's prefix and noise) and a file-logger JSONL of one run."""
    from verl.utils.tracking import Tracking

    folder = tmp_path_factory.mktemp("logs")
    jsonl = folder / "metrics.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("VERL_FILE_LOGGER_PATH", str(jsonl))
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            tracker = Tracking(project_name="p", experiment_name="e", default_backend=["console", "file"])
            for step in STEPS:
                print(f"Training Progress: {step}/4 [00:0{step}<00:00]")
                tracker.log(data=_metrics(step), step=step)
            tracker.finish()
    finally:
        mp.undo()
    console = folder / "console.log"
    lines = stdout.getvalue().splitlines()
    # Ray prefixes a worker's output with its actor name; one line is prefixed here as it would be.
    lines = [("(TaskRunner pid=4242) " + line) if line.startswith("step:2 ") else line for line in lines]
    console.write_text("INFO starting verl\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return {"console": console, "jsonl": jsonl, "folder": folder}


@pytest.mark.parametrize("kind", ["console", "jsonl"])
def test_parse_metrics_log_recovers_the_logged_series(verl_logs, kind):
    series = parse_metrics_log(verl_logs[kind])
    for key in ("critic/score/mean", "trust_grpo/anneal", "trust_grpo/gamma_mean", "trm/failed",
                "trust_grpo/untrusted_group_frac", "trust_grpo/mu_wrong"):
        assert [s for s, _ in series[key]] == STEPS, key
        expected = [float(_metrics(s)[key]) for s in STEPS]
        assert [v for _, v in series[key]] == pytest.approx(expected, rel=1e-6), key
    # A NaN metric stays NaN (console prints nan; the file logger writes null) and is not dropped.
    latency = dict(series["trm/latency_p50_s"])
    assert math.isnan(latency[2]) and latency[3] == pytest.approx(0.3)
    # A key logged on some steps only has exactly those steps.
    assert [s for s, _ in series["trust_grpo/gamma_min"]] == [1, 2, 4]
    assert series["training/global_step"] == [(s, float(s)) for s in STEPS]


@pytest.mark.parametrize("kind", ["console", "jsonl"])
def test_plot_command_writes_pngs_and_csv(verl_logs, kind, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", str(verl_logs[kind]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "over 4 steps (1..4)" in printed
    for stem in ("outcome_reward", "trust", "thinking", "trm_scores", "trm_latency", "trm_requests", "training_curves"):
        assert_png(out / f"{stem}.png", min_bytes=1000)
        assert str((out / f"{stem}.png").resolve()) in printed
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == STEPS
    assert float(rows[2]["critic/score/mean"]) == pytest.approx(0.55)
    assert rows[2]["trust_grpo/gamma_min"] == ""  # not logged at step 3


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("INFO starting\nTraining Progress: 0%|\nstep:notanumber\n", ("no verl metrics found",)),
        ("step:1 - actor/lr:1e-06 - timing_s/gen:3.5\n", ("none of the plotted metrics", "actor/lr")),  # what it found
    ],
)
def test_plot_without_plotted_metrics_is_a_clear_error_naming_the_file(tmp_path, capsys, text, said):
    log = tmp_path / "train.log"
    log.write_text(text, encoding="utf-8")
    assert main(["plot", str(log), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(log) in err and all(part in err for part in said), err


def test_a_missing_log_is_a_plot_error(tmp_path):
    with pytest.raises(PlotError, match="cannot open"):
        parse_metrics_log(tmp_path / "missing.log")


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('{"step": "two", "data": {"critic/score/mean": 0.5}}', "'two'"),
        ('{"step": null, "data": {"critic/score/mean": 0.5}}', "None"),
        ('{"step": 1e400, "data": {"critic/score/mean": 0.5}}', "inf"),
        ('{"step": 1.7, "data": {"critic/score/mean": 0.5}}', "1.7"),
        ('{"step": -1, "data": {"critic/score/mean": 0.5}}', "-1"),
        ('{"step": true, "data": {"critic/score/mean": 0.5}}', "True"),
        ("(TaskRunner pid=1) step:1.7 - critic/score/mean:0.5", "'1.7'"),
        ("step:two - critic/score/mean:0.5 - trust_grpo/anneal:1.0", "'two'"),
    ],
)
def test_a_bad_step_is_one_error_naming_file_and_line(tmp_path, capsys, line, shown):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "data": {"critic/score/mean": 0.25}}\nsome other output\n' + line + "\n")
    assert main(["plot", str(log), "--out", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert err == f"sophiavl-verl plot: error: {log}:3: step {shown} is not a whole number >= 0\n"
    assert not (tmp_path / "plots").exists()


def test_integral_float_steps_and_step_words_in_other_text_are_fine(tmp_path):
    log = tmp_path / "train.log"
    log.write_text('{"step": 2.0, "data": {"critic/score/mean": 0.5}}\nINFO next step:warmup done\n')
    assert parse_metrics_log(log) == {"critic/score/mean": [(2, 0.5)]}


@pytest.mark.parametrize("case", ["a file", "not creatable"])
def test_an_unusable_plot_out_is_one_line(verl_logs, tmp_path, capsys, case):
    out = tmp_path / "plots.png" if case == "a file" else tmp_path / "plots.png" / "sub"
    (tmp_path / "plots.png").write_bytes(b"")
    assert main(["plot", str(verl_logs["jsonl"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sophiavl-verl plot: error: ") and str(out) in err, err


_WITHOUT_MATPLOTLIB = blocking("matplotlib") + """
from sophiavl_verl.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""
NO_MATPLOTLIB = "error: plots need matplotlib, which is not installed: pip install 'sophiavl-verl[plot]'\n"


def test_plot_without_matplotlib_is_one_line_naming_the_extra(verl_logs, tmp_path):
    out = tmp_path / "plots"
    result = subprocess.run([sys.executable, "-c", _WITHOUT_MATPLOTLIB, "plot", str(verl_logs["jsonl"]), "--out",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert (result.returncode, result.stderr) == (2, f"sophiavl-verl plot: {NO_MATPLOTLIB}")
    assert not out.exists()


def test_the_audit_without_matplotlib_stops_before_any_trm_work(tmp_path):
    from support.fault_injection import FaultInjectionServer

    out = tmp_path / "report"
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as trm:
        result = subprocess.run([sys.executable, "-c", _WITHOUT_MATPLOTLIB, "audit", "--trm-url", trm.base_url,
                                 "--trm-model", trm.model, "--out", str(out), "--no-progress", "--limit", "2"],
                                capture_output=True, text=True, timeout=600)
        assert trm.requests == 0
    assert (result.returncode, result.stderr) == (2, f"sophiavl-verl audit: {NO_MATPLOTLIB}")
    assert not out.exists()
