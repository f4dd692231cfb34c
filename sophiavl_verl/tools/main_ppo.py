"""verl's ``main_ppo`` on sophiavl_verl's CPU backend, as a child process, and what its logs say.

The CPU run (:mod:`sophiavl_verl.tools.train_cpu`) and the study (:mod:`sophiavl_verl.tools.study_cpu`) launch
``python -m verl.trainer.main_ppo`` with :func:`launch_main_ppo`; the CPU run also reads back its training steps
from verl's file logger (:func:`read_step_metrics`) and the TRM's endpoints from its console (:func:`trm_endpoints`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["launch_main_ppo", "read_step_metrics", "trm_endpoints"]

#: The lines the run's processes print about the TRM endpoint (the manager's in every reward worker, the CPU
#: backend's reward replica in mode A).
_MANAGER_LINE = re.compile(r"\[sophiavl\] thinking reward model: hosting mode (\w) at (\S+)")
_REPLICA_LINE = re.compile(r"\[sophiavl\] reward model replica (\d+): "
                           r"transformers serve for \S+ at (\S+) \(log (\S+)\)")


def launch_main_ppo(arguments: list[str], *, console: Path, log_jsonl: Path, cwd: Path,
                    on_step: Callable[[int], None] | None = None) -> None:
    """Run ``python -m verl.trainer.main_ppo <arguments>`` on the CPU platform, its output in ``console`` and verl's
    file log in ``log_jsonl``; ``on_step`` is called once per training step as it is logged.

    Raises:
        RuntimeError: main_ppo failed; with its last error line and the console's path.
    """
    command = [sys.executable, "-m", "verl.trainer.main_ppo", *arguments]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(log_jsonl), "HYDRA_FULL_ERROR": "1"}
    with open(console, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        seen: set[int] = set()
        while True:
            ended = proc.poll() is not None  # the log is read once more after the end: its last second's steps
            for step in read_step_metrics(log_jsonl) if log_jsonl.exists() else {}:
                if step not in seen:
                    seen.add(step)
                    if on_step is not None:
                        on_step(step)
            if ended:
                break
            time.sleep(1)
    if proc.returncode:
        raise RuntimeError(f"main_ppo exited with {proc.returncode}: {_last_error(console)}; its output: {console}")


def _last_error(console: Path) -> str:
    """The last ``SomethingError: message`` line of a log (the cause under Ray's and Hydra's tracebacks)."""
    errors = re.findall(r"^\S*?(\w+(?:Error|Exception): .+)$", console.read_text(encoding="utf-8", errors="replace"),
                        flags=re.M)
    return errors[-1].strip() if errors else "no error line in its output"


def trm_endpoints(console: Path) -> dict[str, Any]:
    """What a ``main_ppo`` console log says of the TRM's endpoints: ``{"manager": {mode, base_url}, "replicas":
    [{rank, address, log}]}`` (the manager's line is printed by every reward worker; they agree)."""
    text = console.read_text(encoding="utf-8", errors="replace") if console.exists() else ""
    managers = set(_MANAGER_LINE.findall(text))
    if len(managers) > 1:
        raise RuntimeError(f"reward workers used different TRM endpoints {sorted(managers)}; see {console}")
    replicas = {int(rank): {"rank": int(rank), "address": address, "log": log}
                for rank, address, log in _REPLICA_LINE.findall(text)}
    manager = None
    if managers:
        ((mode, base_url),) = managers
        manager = {"mode": mode, "base_url": base_url}
    return {"manager": manager, "replicas": [replicas[k] for k in sorted(replicas)]}


def read_step_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """The training steps of a verl file-logger JSONL: ``{step: metrics}`` (rows with training metrics only)."""
    from sophiavl_verl.tools.training_log import file_logger_rows

    return {step: data for step, data in file_logger_rows(path) if "training/global_step" in data}
