"""A CPU backend for verl: its own trainers, unchanged, on a machine without an accelerator.

Ships in the package, loaded only under ``VERL_PLATFORM=cpu``; what it needs beyond the base install is the ``cpu``
extra: ``pip install "sophiavl-verl[cpu]"`` (verl[verl-core]; ``transformers serve`` for hosting mode A).

For smoke runs, CI and the quick start (``scripts/train_cpu.sh``) with tiny models. It is not a training
backend and does not pretend to be fast. Imported by the plugin entry point only when ``VERL_PLATFORM=cpu``
(:mod:`..backend_choice`), so a GPU user's process never loads it.

On the ``cpu`` platform it registers the platform ``cpu`` and the rollout backend ``transformers`` through verl's
registries, and applies the narrow patches where verl has no extension point:

    platform.py            the verl platform ``cpu``: device ``cpu``, backend ``gloo``, Ray resource ``GPU``
    rollout.py             the rollout backend ``transformers`` (``actor_rollout_ref.rollout.name=transformers``):
                           Hugging Face ``generate``, pending requests batched; as a reward model, transformers serve
    transformers_serve.py  ``transformers serve`` for one local model beside a process (LocalOpenAIServer)
    processor_shim.py      Qwen2/2.5-VL processors without torchvision, in every process that loads one
    patches.py             the narrow patches of verl where it has no extension point
    replay_buffer.py       verl's v1 replay buffer polling every 50 ms instead of 2 s

Each place it touches verl is declared in :data:`..hooks.TOUCH_POINTS` (the table in ``docs/verl_integration.md``).
What a run also needs in its config (Ray resources, TransferQueue units, FSDP2, eager attention, the replay buffer
through ``trainer.v1.sampler.custom_sampler``): ``recipes/sophiavl_r1/sophiavl_r1_tiny_cpu.yaml``.
"""

from __future__ import annotations

from typing import Any

from sophiavl_verl.integration import hooks
from sophiavl_verl.integration.backend_choice import CPU_PLATFORM, ROLLOUT_NAME, is_cpu_platform, uses_cpu_rollout

__all__ = ["install", "require_registered"]


def install() -> None:
    """Register the CPU platform and rollout backend and patch verl, on the ``cpu`` platform only.

    The touch points applied here (:data:`.hooks.TOUCH_POINTS`, applied at ``CPU backend install``) are
    guarded first: if one does not fit this verl, nothing is registered and :func:`require_registered`
    refuses a CPU launch naming it.

    Raises:
        RuntimeError: The backend did not register (verl would otherwise fail later, far from the cause).
    """
    if not is_cpu_platform() or hooks.check(hooks.CPU_INSTALL):
        return
    from verl.plugin.platform import PlatformRegistry, get_platform
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from sophiavl_verl.integration.cpu_backend import patches, platform, rollout

    PlatformRegistry.register(CPU_PLATFORM)(platform.PlatformCPU)
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: rollout.TransformersReplica)
    # verl keeps the worker-side rollout classes in a plain dict (no register function).
    server = rollout.TransformersServerAdapter
    hooks.set_item(rollout_base, "_ROLLOUT_REGISTRY", (ROLLOUT_NAME, "async"), f"{server.__module__}.{server.__name__}")
    patches.apply_process_patches()
    if not isinstance(get_platform(), platform.PlatformCPU):
        raise RuntimeError(f"VERL_PLATFORM=cpu but verl's platform is {type(get_platform()).__name__}")
    global _registered
    _registered = True


_registered = False


def require_registered(config: Any) -> None:
    """Fail in the driver, before Ray starts, when a config asks for the CPU backend and it is not in place.

    verl loads plugins with their import errors swallowed, so a broken backend would otherwise surface as
    "Unknown platform" deep inside a Ray worker.

    Raises:
        ConfigError: ``actor_rollout_ref.rollout.name`` is the CPU rollout but ``VERL_PLATFORM`` is not ``cpu``
            or the backend did not register in this process.
    """
    from sophiavl_verl.config import ConfigError

    if not uses_cpu_rollout(config):
        return
    if not is_cpu_platform():
        raise ConfigError(
            f"actor_rollout_ref.rollout.name={ROLLOUT_NAME} is sophiavl_verl's CPU rollout backend: set "
            f"VERL_PLATFORM={CPU_PLATFORM} (it is for CPU smoke runs; on GPUs use vllm or sglang)"
        )
    found = hooks.mismatches(hooks.CPU_PATHS)
    if found:
        raise ConfigError(f"VERL_PLATFORM=cpu but sophiavl_verl's CPU backend does not fit this verl, so it left verl "
                          f"unpatched: {'; '.join(found)}")
    if not _registered:
        raise ConfigError("VERL_PLATFORM=cpu but sophiavl_verl's CPU backend did not register (see the plugin's "
                           "error in the log above)")
