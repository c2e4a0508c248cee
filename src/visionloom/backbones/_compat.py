"""Workarounds for gaps in the pinned `transformers` (5.23), each with the reason it exists.

`Qwen2_5_VLProcessor` (and LLaVA-OneVision's) insists on a video processor at construction and type-checks it against
`transformers.VideoProcessorMixin`. Without torchvision that name is not exported (the lazy import
table lists it only under the torchvision branch) and the only video processor for Qwen needs
torchvision, so the processor cannot be built at all, even for images. PyPI's torchvision does not
load beside the CPU build of torch. So, only when the name is missing, the class is
exported from the module that defines it (importable without torchvision) and the
processor given a video processor that refuses videos. Written by hand because no library covers it.
"""

from __future__ import annotations

import importlib
import sys
import types

import transformers
from transformers import video_processing_utils


def ensure_video_processor_mixin() -> None:
    if not hasattr(transformers, "VideoProcessorMixin"):
        transformers.VideoProcessorMixin = video_processing_utils.VideoProcessorMixin


class ImagesOnlyVideoProcessor(video_processing_utils.VideoProcessorMixin):
    """Fills the processor's video slot where torchvision is missing; videos are refused."""

    def __init__(self, merge_size: int = 2, temporal_patch_size: int = 2, patch_size: int = 14, **kwargs):
        super().__init__(**kwargs)
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.patch_size = patch_size

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("video input needs torchvision, which is not installed")


def qwen_video_processor(image_processor):
    """The real Qwen video processor where torchvision works, else the images-only stand-in."""
    try:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        return Qwen2VLVideoProcessor(
            patch_size=image_processor.patch_size,
            merge_size=image_processor.merge_size,
            temporal_patch_size=image_processor.temporal_patch_size,
        )
    except (ImportError, RuntimeError):
        ensure_video_processor_mixin()
        return ImagesOnlyVideoProcessor(
            merge_size=image_processor.merge_size,
            temporal_patch_size=image_processor.temporal_patch_size,
            patch_size=image_processor.patch_size,
        )


def images_only_video_processor(family_module: str, class_name: str):
    """The family's video processor (`transformers.models.<family_module>`'s `class_name`) where
    torchvision works, else the images-only stand-in (LLaVA-OneVision, InternVL)."""
    # Some of these build without torchvision; the processor's type check needs the name either way.
    ensure_video_processor_mixin()
    try:
        module = importlib.import_module(f"transformers.models.{family_module}")
        return getattr(module, class_name)()
    except (ImportError, RuntimeError, NameError):  # Gemma 4's module fails with a NameError (tvF)
        return ImagesOnlyVideoProcessor()


def pixtral_processor_class() -> type:
    """`PixtralProcessor` (Mistral3's processor). Its module imports one pure sizing function,
    `get_resize_output_image_size`, from the torchvision image processor's module, so without
    torchvision the processor cannot even be imported. Only then, that module name is given a
    stand-in holding the same function from the PIL image processor's module, which the PIL image
    processor itself uses."""
    try:
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor
    except ImportError:
        from transformers.models.pixtral import image_processing_pil_pixtral

        stand_in = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
        stand_in.get_resize_output_image_size = image_processing_pil_pixtral.get_resize_output_image_size
        sys.modules[stand_in.__name__] = stand_in
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor
    return PixtralProcessor
