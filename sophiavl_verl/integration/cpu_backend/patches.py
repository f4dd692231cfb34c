"""The narrow patches verl 0.9.1 needs on a CPU-only host, where it has no extension point.

Applied only on the ``cpu`` platform (``VERL_PLATFORM=cpu``), once per process, by
:func:`sophiavl_verl.integration.cpu_backend.install` after the guard of :mod:`..hooks` found every touch point
they declare in place. Each patch names the upstream gap it bridges.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import types

import torch.distributed

from sophiavl_verl.integration import hooks

__all__ = ["apply_process_patches"]


def apply_process_patches() -> None:
    """Apply every patch of this module in this process (idempotent)."""
    hooks.patch(torch.distributed, "init_process_group", _deduplicate_process_group_backend)
    # verl registers its FSDP engines for devices cuda and npu only (verl/workers/engine/fsdp/transformer_impl.py);
    # VERL_ENGINE_DEVICE is verl's own override of the device used for that lookup. The engine itself reaches the
    # device through the platform, so it runs on CPU (FSDP2 with gloo).
    hooks.set_item(os, "environ", "VERL_ENGINE_DEVICE", "cuda", overwrite=False)
    hooks.on_import(hooks.FSDP_ENGINE, lambda module: hooks.patch(module, "CPUOffloadPolicy", _unpinned_policy))
    _import_qwen_vl_utils_without_torchvision()
    _load_vl_processors_without_torchvision()


def _deduplicate_process_group_backend(original):
    """verl joins ``f"cpu:gloo,{device}:{backend}"`` (verl/utils/distributed.py), which is ``cpu:gloo,cpu:gloo``
    on CPU and torch rejects the duplicate; pass ``cpu:gloo`` instead. Upstream gap: no per-platform backend
    string."""

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        if kwargs.get("backend") == "cpu:gloo,cpu:gloo":
            kwargs["backend"] = "cpu:gloo"
        return original(*args, **kwargs)

    return init_process_group


def _unpinned_policy(policy_cls):
    """verl's FSDP2 engine offloads forward-only models (the reference policy) with
    ``CPUOffloadPolicy(pin_memory=True)``; pinning host memory needs an accelerator, so on CPU the policy is
    built unpinned. Upstream gap: the pin flag is hard-coded."""

    def unpinned_policy(*args, **kwargs):
        return policy_cls(*args, **{**kwargs, "pin_memory": False})

    return unpinned_policy


def _import_qwen_vl_utils_without_torchvision() -> None:
    """verl's dataset and agent loop call ``qwen_vl_utils.fetch_image``, and ``qwen_vl_utils`` imports torchvision
    at module level although its image path uses Pillow only; PyPI's torchvision is CUDA-built and breaks
    ``import transformers`` here. Import it once behind a stand-in torchvision that is removed right after, so
    nothing else sees torchvision (videos, the one part that needs it, stay unsupported)."""
    if "qwen_vl_utils" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    stub = types.ModuleType("torchvision")
    stub.__version__ = "0.0.0"
    stub.io = types.ModuleType("torchvision.io")
    stub.transforms = types.ModuleType("torchvision.transforms")
    stub.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    names = {"torchvision": stub, "torchvision.io": stub.io, "torchvision.transforms": stub.transforms}
    sys.modules.update(names)
    try:
        importlib.import_module("qwen_vl_utils")
    finally:
        for name in names:
            sys.modules.pop(name, None)


def _load_vl_processors_without_torchvision() -> None:
    """transformers 5 refuses to build Qwen2/2.5-VL processors without torchvision (for the video processor,
    even for images): the shim of :func:`.processor_shim.install_processor_shim`."""
    from sophiavl_verl.integration.cpu_backend.processor_shim import install_processor_shim

    install_processor_shim()
