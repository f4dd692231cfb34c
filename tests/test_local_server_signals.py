"""The local `transformers serve` child never outlives its parent: real signals sent to a real process.

A child Python process starts a LocalOpenAIServer on the embedded tiny TRM, prints the server's pid, port, temp
folder and log, and waits. The test then sends it a signal (or lets it exit) and checks that the server process
is gone, its port closed, its temporary folder removed, and the parent ended as the signal would have ended it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.net import port_open

_PARENT = """
import json, signal, sys, time
from sophiavl_verl.tools.audit import default_cache_dir
from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer
from sophiavl_verl.tools.trm_sft import make_embedded_trm

if sys.argv[1] == "nohup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
server = LocalOpenAIServer(make_embedded_trm(default_cache_dir()).model_dir).start()
print(json.dumps({"pid": server._proc.pid, "port": server.port, "cache": server._cache_dir,
                  "log": str(server.log_path)}), flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)  # interpreter exit without stop(): atexit must stop it
if sys.argv[1] == "fork":  # a forked child (verl's router, a DataLoader worker) inherits the handlers and ends
    import multiprocessing
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,), daemon=True)
    child.start()
    time.sleep(2)
    child.terminate()
    child.join()
    print(json.dumps({"child_exitcode": child.exitcode}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@contextlib.contextmanager
def _parent(mode: str):
    """The parent process with its running server; whatever is left of either is killed afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", _PARENT, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    info = None
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        info = json.loads(line)
        assert _alive(info["pid"]) and port_open(info["port"]) and Path(info["cache"]).is_dir()
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
        if info is not None and _alive(info["pid"]):
            os.killpg(info["pid"], signal.SIGKILL)


def _assert_cleaned_up(info: dict) -> None:
    deadline = time.monotonic() + 30
    while _alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(info["pid"]), "the transformers serve child outlived its parent"
    assert not port_open(info["port"])
    assert not Path(info["cache"]).exists(), "the server's temporary HF cache folder was left behind"
    assert not Path(info["log"]).exists(), "the clean run's log file was left behind"


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1])
def test_a_terminating_signal_stops_the_server_then_ends_the_parent_by_that_signal(signum):
    with _parent("wait") as (proc, info):
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == -signum, proc.stderr.read()[-2000:]
    _assert_cleaned_up(info)


def test_interpreter_exit_stops_the_server():
    with _parent("exit") as (proc, info):
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-2000:]
    _assert_cleaned_up(info)


def test_an_ignored_sighup_stays_ignored():
    """Under nohup a closed terminal must not stop the server (nor the parent)."""
    with _parent("nohup") as (proc, info):
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert proc.poll() is None and _alive(info["pid"]) and port_open(info["port"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
    _assert_cleaned_up(info)


def test_a_forked_child_that_ends_leaves_the_parents_server_alone():
    """A child forked after the server started inherits its atexit hook and signal handlers: ending it (SIGTERM)
    must not stop the parent's server or delete its log; the parent still cleans up when it ends."""
    with _parent("fork") as (proc, info):
        child = json.loads(proc.stdout.readline())
        assert child["child_exitcode"] == -signal.SIGTERM
        assert _alive(info["pid"]) and port_open(info["port"]), "the child stopped the parent's server"
        assert Path(info["log"]).exists() and Path(info["cache"]).is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
        _assert_cleaned_up(info)
