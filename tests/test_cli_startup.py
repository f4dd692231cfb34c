"""Command-line start-up: --help and argument errors load no heavy module; any first import still registers the plugin.

Each case runs in a fresh interpreter (the test process itself has verl loaded by conftest) and reports what is in
``sys.modules`` after the command returned.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.blocked_imports import blocking

HEAVY = ("torch", "verl", "transformers", "matplotlib", "ray", "aiohttp")

_RUN_CLI = """
import contextlib, importlib, io, json, sys
target, argv = sys.argv[1], sys.argv[2:]
module, _, function = target.partition(":")
main = getattr(importlib.import_module(module), function or "main")
out, err = io.StringIO(), io.StringIO()
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "modules": sorted(sys.modules), "out": out.getvalue(), "err": err.getvalue()}))
"""


def run_fresh(module: str, *argv: str) -> dict:
    """``module.main(argv)`` (or ``module:function``) in a new interpreter: exit status, output, every module
    imported."""
    result = subprocess.run([sys.executable, "-c", _RUN_CLI, module, *argv], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("module", "argv", "status", "prog"),
    [
        ("sophiavl_verl.tools.cli", ["--help"], 0, None),
        ("sophiavl_verl.tools.cli", ["audit", "--help"], 0, None),
        ("sophiavl_verl.tools.cli", ["plot", "--help"], 0, None),
        ("sophiavl_verl.tools.cli", [], 2, "sophiavl-verl"),
        ("sophiavl_verl.tools.cli", ["audit", "--timeout", "soon"], 2, "sophiavl-verl audit"),
        ("sophiavl_verl.tools.cli", ["audit", "--alpha", "nan"], 2, "sophiavl-verl audit"),
        ("sophiavl_verl.tools.cli", ["data", "--help"], 0, None),
        ("sophiavl_verl.tools.cli", ["data", "rl", "--help"], 0, None),
        ("sophiavl_verl.tools.cli", ["data"], 2, "sophiavl-verl data"),
        ("sophiavl_verl.tools.cli", ["data", "rl", "x.json"], 2, "sophiavl-verl data rl"),
        ("sophiavl_verl.tools.cli", ["data", "trm", "x.json", "-o", "o.parquet", "--val-size", "-1"], 2,
         "sophiavl-verl data trm"),
        ("sophiavl_verl.tools.cli:data_main", ["--help"], 0, None),
        ("sophiavl_verl.tools.cli:data_main", ["rl", "--help"], 0, None),
        ("sophiavl_verl.tools.cli:data_main", ["rl", "x.json"], 2, "sophiavl-verl-data rl"),
        ("sophiavl_verl.tools.cli:data_main", ["trm", "x.json", "-o", "o.parquet", "--val-size", "-1"], 2,
         "sophiavl-verl-data trm"),
        ("sophiavl_verl.tools.local_server", [], 2, "python -m sophiavl_verl.tools.local_server"),
        ("sophiavl_verl.tools.local_server", ["serve"], 2, "python -m sophiavl_verl.tools.local_server serve"),
        ("sophiavl_verl.tools.train_cpu", ["--help"], 0, None),
        ("sophiavl_verl.tools.train_cpu", ["--steps", "0"], 2, "train_cpu"),
    ],
)
def test_help_and_argument_errors_import_no_heavy_module(module, argv, status, prog):
    result = run_fresh(module, *argv)
    assert result["status"] == status, result["err"]
    loaded = [m for m in HEAVY if m in result["modules"]]
    assert loaded == [], f"{module} {argv} imported {loaded}"
    if status == 2:  # one line, the command at fault first, no traceback
        assert result["err"].startswith(f"{prog}: error: ") and result["err"].count("\n") == 1, result["err"]


_FIRST_IMPORT = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from sophiavl_verl.integration import adapter as verl_adapter, estimator, reward_manager
assert sys.modules[sys.argv[1]] is module
assert ADV_ESTIMATOR_REGISTRY["trust_grpo"] is estimator.trust_grpo_advantage_estimator
assert get_reward_manager_cls("sophiavl") is reward_manager.SophiaVLRewardManager
assert verl_adapter.is_installed()
assert type(module.__spec__.loader).__name__ == "SourceFileLoader", module.__spec__.loader
print("ok")
"""


@pytest.mark.parametrize(
    "first",
    ["sophiavl_verl.integration", "sophiavl_verl.integration.estimator", "sophiavl_verl.integration.reward_manager",
     "sophiavl_verl.integration.adapter", "sophiavl_verl.integration.validation", "sophiavl_verl.integration.plugin"],
)
def test_any_first_import_registers_the_whole_plugin(first):
    """A user's first import may be a verl-dependent submodule: verl's plugin loader must still see it whole."""
    result = subprocess.run([sys.executable, "-c", _FIRST_IMPORT, first], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


_WITHOUT_VERL = blocking("verl") + """
import sophiavl_verl
from sophiavl_verl import (annealing, config, errors, keys, outcome_reward_fn, query_policy, rewards,
                           thinking_reward, trust_grpo)
from sophiavl_verl.tools import audit, cli, data, training_log
from sophiavl_verl.tools.audit import inputs, plots, report, scoring, settings
rewards_, gamma = trust_grpo.trust_weighted_rewards([1.0, 0.0], [0.2, 0.8], ["a", "a"], alpha=0.3)
assert abs(gamma[0].item() - 2.718281828459045 ** (0.2 - 0.8)) < 1e-12, gamma
assert outcome_reward_fn.compute_score("sophiavl_r1", "<think>x</think><answer>4</answer>", "4",
                                       {"problem_type": "numerical"}) == 1.0
assert not [m for m in sys.modules if m == "verl" or m.startswith("verl.")]
print("ok")
"""


def test_the_core_and_the_tools_import_and_compute_without_verl():
    """The method's core (and the tools built on it) import and compute on a machine without verl."""
    result = subprocess.run([sys.executable, "-c", _WITHOUT_VERL], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
