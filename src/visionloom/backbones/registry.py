"""Which adapter serves a checkpoint: a dict from config.json's `model_type`, and `load`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from visionloom.backbones.base import ImageTokenAdapter, place, read_json
from visionloom.backbones.deepseek_vl import DeepseekVLAdapter
from visionloom.backbones.gemma3 import Gemma3Adapter
from visionloom.backbones.gemma4 import Gemma4Adapter
from visionloom.backbones.internvl import InternVLAdapter
from visionloom.backbones.llava import LlavaAdapter
from visionloom.backbones.llava_next import LlavaNextAdapter
from visionloom.backbones.llava_onevision import LlavaOnevisionAdapter
from visionloom.backbones.mistral3 import Mistral3Adapter
from visionloom.backbones.paligemma import PaliGemmaAdapter
from visionloom.backbones.qwen2_5_vl import Qwen2_5_VLAdapter
from visionloom.backbones.qwen2_vl import Qwen2VLAdapter
from visionloom.backbones.qwen3_vl import Qwen3VLAdapter
from visionloom.backbones.smolvlm import SmolVLMAdapter
from visionloom.backbones.t5gemma2 import T5Gemma2Adapter

ADAPTERS: dict[str, type[ImageTokenAdapter]] = {
    model_type: adapter
    for adapter in (
        LlavaAdapter,
        LlavaNextAdapter,
        LlavaOnevisionAdapter,
        Qwen2_5_VLAdapter,
        Qwen2VLAdapter,
        Qwen3VLAdapter,
        PaliGemmaAdapter,
        T5Gemma2Adapter,
        Gemma3Adapter,
        DeepseekVLAdapter,
        InternVLAdapter,
        Mistral3Adapter,
        SmolVLMAdapter,
        Gemma4Adapter,
    )
    for model_type in adapter.model_types
}


def adapter_for(path: str | Path) -> type[ImageTokenAdapter]:
    """The adapter class for a checkpoint directory, from its config.json."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path}: no config.json; expected a checkpoint directory written by save_pretrained"
        )
    model_type = read_json(config_file).get("model_type")
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def load(
    path_or_preset: str | Path,
    *,
    native_resolution: bool = False,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> ImageTokenAdapter:
    """An adapter holding its model and processor, from a local checkpoint directory or a preset name.

    Weights load in float32 on a CPU and in the checkpoint's own dtype on a GPU unless `dtype`
    says otherwise (see `ImageTokenAdapter.from_pretrained`). Nothing is downloaded: a name that is
    neither a preset nor a local directory is an error.
    """
    from visionloom.backbones.tiny import PRESETS, build_preset

    name = str(path_or_preset)
    if name in PRESETS:
        adapter = build_preset(name, native_resolution=native_resolution, **kwargs)
        place(adapter.model, dtype, device)
        return adapter
    if not Path(name).is_dir():
        raise FileNotFoundError(
            f"{name!r} is neither a local checkpoint directory nor a preset ({', '.join(PRESETS)}); "
            f"visionloom never downloads weights"
        )
    return adapter_for(name).from_pretrained(
        name, native_resolution=native_resolution, dtype=dtype, device=device, **kwargs
    )
