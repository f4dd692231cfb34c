"""Every user error of the command lines: one line, exit status 2, nothing contacted and nothing written.

The audit cases point at a fault-injection server (a stand-in TRM that records requests) to prove no thinking
reward work started; the folder given as ``--out`` must not exist afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fault_injection import FaultInjectionServer

from sophiavl_verl.tools.cli import main

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
