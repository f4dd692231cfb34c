"""Whether this process runs verl on the plugin's CPU backend, decided without importing that backend.

The entry point and config validation read it, so a process on a GPU platform never imports
:mod:`sophiavl_verl.integration.cpu_backend`.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["CPU_PLATFORM", "ROLLOUT_NAME", "is_cpu_platform", "uses_cpu_rollout"]

#: The value of ``VERL_PLATFORM`` that selects the CPU backend.
CPU_PLATFORM = "cpu"
#: ``actor_rollout_ref.rollout.name`` of the CPU rollout backend.
ROLLOUT_NAME = "transformers"


def is_cpu_platform() -> bool:
    """Whether this process runs on the ``cpu`` platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM


def uses_cpu_rollout(config: Any) -> bool:
    """Whether a verl config asks for the CPU rollout backend (``actor_rollout_ref.rollout.name``)."""
    return ((config.get("actor_rollout_ref") or {}).get("rollout") or {}).get("name") == ROLLOUT_NAME
