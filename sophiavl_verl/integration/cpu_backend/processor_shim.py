"""Qwen2/2.5-VL processors without torchvision: the transformers compatibility shim of the CPU backend.

PyPI's torchvision is built against CUDA and breaks ``import transformers`` on CPU-only machines, so it cannot
simply be installed; without it, transformers 5.x refuses to build Qwen2/2.5-VL *processors*, images only included.
Every process of a CPU run that loads one installs :func:`install_processor_shim` first: the rollout server
(:mod:`.rollout`), verl's workers (:mod:`.patches`), the ``transformers serve`` child (:mod:`.transformers_serve`)
and the tools that build the tiny models.
"""

from __future__ import annotations

__all__ = ["install_processor_shim"]


def install_processor_shim() -> None:
    """Let Qwen2/2.5-VL processors load without torchvision.

    transformers 5.x maps Qwen2-VL models to ``Qwen2VLVideoProcessor``, which needs torchvision; without it,
    ``AutoVideoProcessor.from_pretrained`` raises and so does ``AutoProcessor.from_pretrained``, even for
    image-only use. This shim makes ``AutoVideoProcessor`` fall back to the torch-free ``BaseVideoProcessor`` when
    torchvision is missing, and points ``transformers.BaseVideoProcessor`` (then a torchvision placeholder, against
    which processors type-check their video processor) at that class. Images keep the PIL image processor; videos
    are unsupported, which the thinking reward model never needs.

    Idempotent; a no-op when torchvision is installed. Call it before loading a processor, in every process that
    loads one.
    """
    import importlib
    import sys

    from transformers import processing_utils
    from transformers.utils import is_torchvision_available
    from transformers.video_processing_utils import BaseVideoProcessor

    # import_module, not `from transformers.models.auto import ...`: the lazy package hands out a torchvision dummy.
    video_processing_auto = importlib.import_module("transformers.models.auto.video_processing_auto")
    auto_cls = video_processing_auto.AutoVideoProcessor
    if is_torchvision_available() or getattr(auto_cls, "_sophiavl_shim", False):
        return
    # The top-level name is a torchvision dummy; processors type-check their video processor against it.
    # processing_utils re-imports the package (`direct_transformers_import`), so patch that module object too.
    for module in (sys.modules["transformers"], processing_utils.transformers_module):
        module.BaseVideoProcessor = BaseVideoProcessor
    original = auto_cls.from_pretrained.__func__

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return original(cls, pretrained_model_name_or_path, *args, **kwargs)
        except (ValueError, ImportError) as exc:
            if "torchvision" not in str(exc):
                raise
            return BaseVideoProcessor(merge_size=2, patch_size=14, temporal_patch_size=2)

    auto_cls.from_pretrained = classmethod(from_pretrained)
    auto_cls._sophiavl_shim = True
