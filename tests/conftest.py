"""Fixtures shared by the test files (helpers they import live in ``tests/support/``): one local Ray cluster with
TransferQueue on CPU, the embedded tiny TRM behind `transformers serve`, verl's reward-model router."""

from __future__ import annotations

import os

import pytest
import verl  # noqa: F401  (loads the plugin through the verl.plugins entry point, as in production)


@pytest.fixture(scope="session")
def ray_with_transfer_queue():
    """A local CPU Ray cluster with verl's TransferQueue (SimpleStorage) started, shared by the session."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create(
        {"backend": {"SimpleStorage": {"num_data_storage_units": 1, "total_storage_size": 10000}}}))
    yield ray
    tq.close()
    ray.shutdown()


@pytest.fixture(scope="session")
def embedded_trm_server():
    """The embedded tiny thinking reward model (trained once by verl's SFT trainer, cached) behind a real
    `transformers serve`."""
    from sophiavl_verl.integration.cpu_backend.transformers_serve import LocalOpenAIServer
    from sophiavl_verl.tools.audit import default_cache_dir
    from sophiavl_verl.tools.trm_sft import make_embedded_trm

    with LocalOpenAIServer(make_embedded_trm(default_cache_dir()).model_dir) as server:
        yield server


@pytest.fixture
def verl_router():
    """verl 0.9.1's own reward-model router (``run_router`` in a child process, as ``launch_router_process``
    starts it) in front of a fault-injection server: call it with the server's script; it returns the router's
    ``host:port`` (what verl hands a reward manager in hosting mode A) and the server. ``upstream=`` points the router
    at that URL instead (the server then runs unused, e.g. a dead port's URL: a router that cannot reach its
    replica)."""
    import multiprocessing
    import time

    from verl.experimental.reward_loop.router.naive_router import run_router

    from support.fault_injection import FaultInjectionServer
    from support.net import free_port, port_open

    started = []

    def start(script, upstream=None):
        server = FaultInjectionServer(script).__enter__()
        port = free_port()
        process = multiprocessing.Process(
            target=run_router, args=("127.0.0.1", port, [upstream or f"http://127.0.0.1:{server.port}"]), daemon=True
        )
        process.start()
        started.append((server, process))
        deadline = time.monotonic() + 60
        while not port_open(port):
            assert time.monotonic() < deadline and process.is_alive(), "verl's router did not start"
            time.sleep(0.05)
        return f"127.0.0.1:{port}", server

    yield start
    for server, process in started:
        process.terminate()
        process.join(10)
        server.__exit__(None, None, None)
