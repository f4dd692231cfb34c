"""Shared fixtures: verl's real Hydra config, and one local Ray cluster with TransferQueue on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import verl  # loads the plugin through the verl.plugins entry point, as in production

VERL_CONFIG_DIR = Path(verl.__file__).parent / "trainer" / "config"

#: Overrides that make verl's own part of ``validate_config`` pass for a small GRPO run on CPU.
SMALL_RUN = (
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.rollout.n=8",
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
)

#: A trust_grpo run whose thinking reward model is an external endpoint (nothing is contacted).
TRUST_GRPO_RUN = (
    *SMALL_RUN,
    "algorithm.adv_estimator=trust_grpo",
    "reward.reward_manager.name=sophiavl",
    "+reward.reward_kwargs.trm_base_url=http://127.0.0.1:9/v1",
    "+reward.reward_kwargs.trm_model=trm",
)


def compose_verl_config(overrides=(), config_dir: Path = VERL_CONFIG_DIR, config_name: str = "ppo_trainer"):
    """verl's real Hydra composition of ``config_name`` with command-line style overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def run_verl_validation(config) -> None:
    """verl's own ``validate_config`` (wrapped by the plugin), as ``main_ppo`` calls it."""
    import verl.utils.config as verl_config
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    verl_config.validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )


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
    from sophiavl_verl.tools.audit import default_cache_dir
    from sophiavl_verl.tools.local_server import LocalOpenAIServer
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
    import socket
    import time

    from verl.experimental.reward_loop.router.naive_router import run_router

    from sophiavl_verl.tools.local_server import free_port

    from fault_injection import FaultInjectionServer

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
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"127.0.0.1:{port}", server
            assert time.monotonic() < deadline and process.is_alive(), "verl's router did not start"
            time.sleep(0.05)

    yield start
    for server, process in started:
        process.terminate()
        process.join(10)
        server.__exit__(None, None, None)
