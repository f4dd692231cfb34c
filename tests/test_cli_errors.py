"""Every user error of the command lines: one line, exit status 2, nothing contacted and nothing written.

The audit cases point at a fault-injection server (a stand-in TRM that records requests) to prove no thinking
reward work started; the folder given as ``--out`` must not exist afterwards.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sophiavl_verl.tools.cli import main

from support.fault_injection import FaultInjectionServer

NUMERIC_FLAGS = {  # flag: values a careful user would expect to be refused, with a word of the message
    "--limit": ["0", "-3", "1.5", "x"],
    "--max-concurrency": ["0", "-1", "2.5", "nan"],
    "--timeout": ["inf", "nan", "0", "-5", "1e309", "86401", "x"],
    "--max-retries": ["-1", "1.5", "x"],
    "--alpha": ["nan", "inf", "-0.1", "x"],
    "--step": ["-1", "1.5", "x"],
    "--anneal-steps": ["0", "-10", "2.5", "x"],
    "--correct-threshold": ["nan", "0", "1.5", "-inf"],
    "--epsilon": ["nan", "inf", "-1e-6"],
    "--text-limit": ["-5", "1.5", "x"],
}


@pytest.fixture(scope="module")
def trm():
    with FaultInjectionServer(lambda n, body: "<answer>0.5</answer>") as server:
        yield server


def _one_line_error(argv, capsys) -> str:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors (a value that is not a number)
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "error:" in err and "Traceback" not in err, (status, err)
    return err


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, values in NUMERIC_FLAGS.items() for v in values])
def test_every_numeric_audit_flag_rejects_bad_values(trm, tmp_path, capsys, flag, value):
    out = tmp_path / "report"
    before = trm.requests
    err = _one_line_error(["audit", "--trm-url", trm.base_url, "--trm-model", trm.model, "--out", str(out),
                           "--no-progress", f"{flag}={value}"], capsys)
    assert flag in err, err
    assert trm.requests == before and not out.exists()


@pytest.mark.parametrize("case", ["a file", "not creatable", "under a file"])
def test_an_unusable_out_is_refused_before_any_trm_work(trm, tmp_path, capsys, case):
    (tmp_path / "report.json").write_text("{}")
    out, message = {
        "a file": (tmp_path / "report.json", f"--out {tmp_path / 'report.json'} is a file"),
        "not creatable": (Path("/proc/sophiavl_report"), "--out /proc/sophiavl_report: cannot write the report there"),
        "under a file": (tmp_path / "report.json" / "r", "cannot write the report there"),
    }[case]
    before = trm.requests
    err = _one_line_error(["audit", "--trm-url", trm.base_url, "--trm-model", trm.model, "--out", str(out),
                           "--no-progress"], capsys)
    assert message in err and trm.requests == before, err


def test_an_unusable_cache_dir_is_one_line(tmp_path, capsys):
    assert main(["audit", "--cache-dir", "/proc/sophiavl_cache", "--out", str(tmp_path / "o"), "--limit", "2"]) == 2
    err = capsys.readouterr().err  # after the "[audit] building ..." progress line
    assert [line.startswith("sophiavl-verl audit: error: ") for line in err.splitlines()] == [False, True], err
    assert "--cache-dir /proc/sophiavl_cache: cannot build the embedded thinking reward model there" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ one front, one error format


def test_data_is_a_subcommand_and_the_old_name_an_alias_with_the_same_result(tmp_path, capsys):
    """``sophiavl-verl data rl`` and ``sophiavl-verl-data rl`` write the same parquet and report the same summary."""
    import pyarrow.parquet as pq

    from sophiavl_verl.tools.cli import data_main

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"problem": f"1 + {i} = ?", "solution": f"<answer>{1 + i}</answer>",
                                 "problem_type": "numerical"} for i in range(4)]))
    outputs = {}
    for name, run in (("front", lambda o: main(["data", "rl", str(rows), "-o", str(o)])),
                      ("alias", lambda o: data_main(["rl", str(rows), "-o", str(o)]))):
        out = tmp_path / name / "rl.parquet"
        assert run(out) == 0
        outputs[name] = (pq.read_table(out).to_pylist(), capsys.readouterr().out.replace(str(tmp_path / name), "X"))
    assert outputs["front"] == outputs["alias"]
    assert [row["reward_model"]["ground_truth"] for row in outputs["front"][0]] == ["1", "2", "3", "4"]
    assert outputs["front"][1].startswith("sophiavl-verl data rl: 4 rows read from 1 file(s)")


@pytest.mark.parametrize("argv", [["data", "rl", "{missing}", "-o", "{out}"],
                                  ["data", "trm", "{missing}", "-o", "{out}"]])
def test_a_data_error_through_the_front_is_one_line_naming_the_subcommand(tmp_path, capsys, argv):
    missing, out = tmp_path / "missing.json", tmp_path / "o" / "x.parquet"
    argv = [a.format(missing=missing, out=out) for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"sophiavl-verl data {argv[1]}: error: input not found: {missing}\n"
    assert not out.parent.exists()


def _run_module(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sophiavl_verl.tools.cli", "data", "rl", "{missing}", "-o", "{tmp}/o.parquet"],
         "sophiavl-verl data rl: error: input not found: {missing}\n"),
        (["sophiavl_verl.tools.cli", "data", "rl", "{missing}"],
         "sophiavl-verl data rl: error: the following arguments are required: -o/--output (see --help)\n"),
        (["sophiavl_verl.tools.local_server", "run", "m"],
         "python -m sophiavl_verl.tools.local_server: error: argument serve: invalid choice: 'run' (choose from "),
        (["sophiavl_verl.tools.train_cpu", "--out", "{missing}", "--steps", "x"],
         "train_cpu: error: argument --steps: not a whole number: 'x' (see --help)\n"),
        (["sophiavl_verl.tools.train_cpu", "--out", "{tmp}/a_file"],
         "train_cpu: error: --out {tmp}/a_file exists and is not a folder\n"),
    ],
)
def test_every_command_line_reports_a_user_error_as_one_line_and_exit_2(tmp_path, argv, expected):
    """The real processes, as a user starts them: ``<prog>: error: <message>``, exit status 2, no traceback."""
    (tmp_path / "a_file").write_text("x")
    where = {"missing": tmp_path / "missing.json", "tmp": tmp_path}
    result = _run_module(*[a.format(**where) for a in argv])
    assert result.returncode == 2 and result.stderr.startswith(expected.format(**where)), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr


def test_the_console_scripts_of_setup_py_point_at_the_front():
    """``sophiavl-verl`` and its alias ``sophiavl-verl-data`` resolve to the functions of the one front."""
    from sophiavl_verl.tools import cli

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text(encoding="utf-8")
    scripts = dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', setup.split('"console_scripts"')[1]))
    targets = {name: getattr(importlib.import_module(target.split(":")[0]), target.split(":")[1])
               for name, target in scripts.items()}
    assert targets == {"sophiavl-verl": cli.main, "sophiavl-verl-data": cli.data_main}
