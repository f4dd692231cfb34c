"""A real OpenAI-compatible server on CPU: ``transformers serve`` in a child process, stopped with its owner.

Hosting mode A on the CPU backend serves the thinking reward model through it (:mod:`.rollout`, on the node's
address); the tools serve the embedded tiny TRM on 127.0.0.1 with it (``sophiavl-verl audit``, the CPU run, the
tests). The child runs this file by its path, ``python .../transformers_serve.py MODEL [transformers serve
options]``: the :mod:`.processor_shim` (Qwen2.5-VL processors need it without torchvision), then transformers' own
``serve`` command in-process. By path, not ``-m``: the package import would run ``sophiavl_verl.integration``'s
``import verl``, and with it the whole plugin, in every server. :func:`serve` is the same for a caller in-process.

The child is in its own session (a terminal's signals do not reach it), so this process stops it: on
:meth:`LocalOpenAIServer.stop` (the context manager's exit), at interpreter exit, and on every catchable
signal that would end this process (:data:`TERMINATING_SIGNALS`: a closed terminal's SIGHUP, SIGTERM,
SIGINT, ...). While a server runs, those signals first stop every running server (the child and its
temporary folders), then take their previous course: the previous Python handler runs, or the process
ends by the signal as it would have. Ignored signals stay ignored. SIGKILL cannot be caught.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sophiavl_verl.errors import ServerStartError

logger = logging.getLogger(__name__)

__all__ = ["LocalOpenAIServer", "TERMINATING_SIGNALS", "free_port", "serve"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])

#: Asynchronous signals whose default action ends the process (faults such as SIGSEGV cannot be handled in
#: Python; SIGKILL and SIGSTOP cannot be caught at all).
TERMINATING_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF",
                 "SIGXCPU", "SIGIO", "SIGPWR", "SIGSTKFLT")
    if hasattr(signal, name)
)
_running: list[LocalOpenAIServer] = []  # started and not yet stopped, in this process
_previous_handlers: dict[int, Any] = {}  # while a server runs: the handlers ours replaced


def _stop_servers_then_resignal(signum: int, frame) -> None:
    """Signal handler: stop every running server, then let the signal take its previous course."""
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    for server in list(_running):
        server.stop()
    if callable(previous):
        previous(signum, frame)
    else:  # SIG_DFL: end the process by this signal, as it would have without us
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _watch_signals() -> None:
    """Route the terminating signals through :func:`_stop_servers_then_resignal` (main thread only)."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in TERMINATING_SIGNALS:
        current = signal.getsignal(signum)
        if current in (signal.SIG_IGN, None):  # ignored (nohup), or a handler installed outside Python
            continue
        _previous_handlers[signum] = current
        signal.signal(signum, _stop_servers_then_resignal)


def _unwatch_signals() -> None:
    """Put the replaced handlers back once no server runs."""
    if _running or threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in _previous_handlers.items():
        if signal.getsignal(signum) is _stop_servers_then_resignal:
            signal.signal(signum, previous)
    _previous_handlers.clear()


def _end_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent (thread) ends (``PR_SET_PDEATHSIG``)."""
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalOpenAIServer:
    """``transformers serve`` for one local model, as a context manager.

    Example::

        with LocalOpenAIServer("path/to/model") as server:  # e.g. the embedded TRM of tools.trm_sft
            client = ThinkingRewardClient(server.base_url, server.model)

    Args:
        model_path: A local model directory (it is also the model name clients must send).
        host: Address to listen on.
        port: Port; None picks a free one.
        startup_timeout_s: How long to wait for the server to answer ``/health``.
        num_threads: Torch CPU threads of the server (``OMP_NUM_THREADS``); the default 1 suits the tiny model,
            which more threads only slow down; None leaves torch's default (all cores).
        extra_args: More ``transformers serve`` options (e.g. ``["--continuous-batching"]``).
        progress: Called with progress lines while starting; defaults to ``logger.info``.
        log_path: File for the server's stdout and stderr; None makes a temporary file.
        die_with_parent: End the server when the thread that started it ends, even by SIGKILL (Linux's parent-death
            signal): for a server owned by a process that may be killed without running its exit hooks (a Ray actor).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 180.0,
        num_threads: int | None = 1,
        extra_args: Sequence[str] = (),
        progress: Callable[[str], None] | None = None,
        log_path: str | os.PathLike | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.model_path = Path(model_path).resolve()
        if not self.model_path.is_dir():
            raise FileNotFoundError(f"model directory {self.model_path} does not exist")
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.num_threads = num_threads
        self.extra_args = list(extra_args)
        self._progress = progress or logger.info
        self._log_path = Path(log_path) if log_path is not None else None
        self._owns_log = log_path is None
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen | None = None
        self._owner_pid: int | None = None  # the process that started the server (and alone may stop it)
        self._cache_dir: str | None = None  # mkdtemp, removed by stop() (no finalizer a forked copy could run)

    @property
    def model(self) -> str:
        """The model name to send in requests (the server is pinned to it)."""
        return str(self.model_path)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``."""
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def log_path(self) -> Path | None:
        """Where the server's output goes."""
        return self._log_path

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalOpenAIServer(model={self.model!r}, host={self.host!r}, port={self.port}, {state})"

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> LocalOpenAIServer:
        """Start the server and wait until it answers.

        Raises:
            ServerStartError: The process exited, or ``/health`` did not answer within ``startup_timeout_s``.
        """
        if self.running:
            return self
        self._owner_pid = os.getpid()
        if self.port is None:
            self.port = free_port(self.host)
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="sophiavl_serve_", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        # transformers serve scans HF_HUB_CACHE; it must exist. A private one keeps the user's cache untouched.
        self._cache_dir = tempfile.mkdtemp(prefix="sophiavl_hf_cache_")
        env = dict(os.environ)
        env.update(
            HF_HUB_CACHE=self._cache_dir,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p),
        )
        if self.num_threads is not None:
            env["OMP_NUM_THREADS"] = str(self.num_threads)
        cmd = [
            sys.executable, __file__, self.model,  # this file: its `__main__` block
            "--host", self.host, "--port", str(self.port), "--device", "cpu", *self.extra_args,
        ]  # fmt: skip
        self._progress(f"starting transformers serve for {self.model_path.name} on {self.host}:{self.port}")
        _watch_signals()
        _running.append(self)
        atexit.register(self.stop)
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_end_with_parent if self._die_with_parent else None,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        start = time.monotonic()
        next_note = start + 10.0
        url = f"http://{self.host}:{self.port}/health"
        while True:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"transformers serve exited with code {self._proc.returncode} while starting; "
                    f"log {self._log_path}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        self._progress(f"transformers serve ready at {self.base_url} ({time.monotonic() - start:.1f}s)")
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            now = time.monotonic()
            if now - start > self.startup_timeout_s:
                raise ServerStartError(
                    f"transformers serve did not answer on {url} within {self.startup_timeout_s:.0f}s; "
                    f"log {self._log_path}:\n{self._log_tail()}"
                )
            if now >= next_note:
                self._progress(f"waiting for transformers serve ({now - start:.0f}s)")
                next_note = now + 10.0
            time.sleep(0.25)

    def _log_tail(self, n_bytes: int = 4000) -> str:
        try:
            data = self._log_path.read_bytes()
        except OSError:
            return "<no log>"
        return data[-n_bytes:].decode("utf-8", "replace")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server: SIGTERM to its process group, then SIGKILL after ``timeout_s``. Idempotent."""
        atexit.unregister(self.stop)
        if self in _running:
            _running.remove(self)
        proc, self._proc = self._proc, None
        if self._owner_pid is not None and os.getpid() != self._owner_pid:
            # A forked copy of this process (multiprocessing's fork start method) inherits the object, the atexit
            # hook and the signal handler; the server, its folder and its log belong to the process that started it.
            return
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # pgid == pid: start_new_session=True
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir = None
        if self._owns_log and self._log_path is not None and proc is not None:
            # Keep the log of a server that crashed; drop the log of a clean run.
            if proc.returncode in (0, -signal.SIGTERM, -signal.SIGKILL):
                self._log_path.unlink(missing_ok=True)
                self._log_path = None
        _unwatch_signals()


def serve(argv: Sequence[str]) -> None:
    """``transformers serve MODEL [options]`` in this process, with the processor shim installed first."""
    from sophiavl_verl.integration.cpu_backend.processor_shim import install_processor_shim

    install_processor_shim()
    _transformers_serve(argv)


def _transformers_serve(argv: Sequence[str]) -> None:
    """transformers' ``serve`` command, in this process (the processor shim already installed)."""
    # transformers' CLI app, called directly: its `main()` would first check PyPI for a newer release.
    from transformers.cli.transformers import app

    app(args=["serve", *argv], prog_name="transformers")


if __name__ == "__main__":  # the child of LocalOpenAIServer.start, run by file path (see the module docstring)
    # sys.path[0] is this folder: the shim is imported from it, then the folder leaves sys.path, where its
    # platform.py would shadow the standard library's.
    from processor_shim import install_processor_shim

    del sys.path[0]
    install_processor_shim()
    _transformers_serve(sys.argv[1:])
