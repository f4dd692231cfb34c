"""verl platform ``cpu``: device ``cpu``, backend ``gloo``, selected by ``VERL_PLATFORM=cpu``.

verl resolves every device call (``get_torch_device()``, ``get_device_name()``, the Ray resource name, the
process-group backend) through :func:`verl.plugin.platform.get_platform`. This platform answers them for a
machine without an accelerator, so verl's trainers run unchanged on CPU for smoke runs, CI and the quick
start. It is not a training backend: nothing here is fast.

Ray resource name: ``GPU``. Ray accepts logical GPUs on a GPU-less host (``ray_init.num_gpus=N``), so verl's
placement groups, which ask for ``GPU`` bundles, schedule on CPU without any change to verl.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase

__all__ = ["CpuDeviceModule", "PlatformCPU"]


class CpuDeviceModule(ModuleType):
    """What verl uses as ``torch.<device>`` on CPU: ``torch.cpu`` plus no-ops for the CUDA-only calls.

    verl calls memory statistics, caches, streams and RNG functions of its device module; on CPU those have
    no meaning, so each reads as "nothing" (0 bytes, no-op) instead of raising.
    """

    def __init__(self) -> None:
        super().__init__("sophiavl_verl.cpu_device")

    def __getattr__(self, name: str) -> Any:
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        if name in ("get_rng_state", "set_rng_state", "manual_seed", "manual_seed_all", "initial_seed"):
            return getattr(torch, name if name != "manual_seed_all" else "manual_seed")
        return _noop

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "CPU"

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total


def _noop(*args: Any, **kwargs: Any) -> int:
    return 0


_DEVICE_MODULE = CpuDeviceModule()


class PlatformCPU(PlatformBase):
    """verl's platform interface answered for a CPU-only host (smoke runs, CI, the quick start)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: only VERL_PLATFORM=cpu selects it, so no GPU process can land here.
        return False

    def current_device(self) -> str:  # verl builds torch.device(get_device_name(), current_device())
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
