"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): Qwen2.5-VL's image path before windowed attention.

What is the same as Qwen2.5-VL (so the adapter is that one's subclass): the processor (`smart_resize`
to multiples of patch x merge, `<|vision_start|>`, one `<|image_pad|>` per merged token,
`<|vision_end|>`, `image_grid_thw`), the 2x2 patch merger, and the 3-D rotary positions from the
model's own `get_rope_index`, computed on the full sequence with the image tokens marked (the same
guard against the model's silent 1-D fallback).

What differs: every tower block attends over the whole image (no windows, no
`fullatt_block_indexes`), and the tower runs in the processor's patch order, which is already
merge-unit order, so nothing is permuted; the merger's input width is the tower's `embed_dim`
(its `hidden_size` is the language model's width); and the processor class is `Qwen2VLProcessor`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

from visionloom.backbones.qwen2_5_vl import Qwen2_5_VLAdapter, tiny_qwen_family
from visionloom.backbones.tiny_parts import HEADS, LAYERS, WIDTH, preset


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl",)
    model_class = Qwen2VLForConditionalGeneration
    processor_class = Qwen2VLProcessor

    @property
    def vision_width(self) -> int:
        return int(self.config.vision_config.embed_dim)

    def full_attention_blocks(self) -> list[int]:
        return list(range(len(self.vision_tower.blocks)))  # no windows: every block sees the image

    def window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """The tower's order of merge units: the processor's own, nothing permuted."""
        units = int((grid_thw.prod(-1) // self.merge_size**2).sum())
        return torch.arange(units)

    def tower_description(self) -> tuple[str, str]:
        return (
            f"Qwen2-VL ViT ({self.config.vision_config.depth} blocks, full attention in every block)",
            "last block (merger input, width embed_dim)",
        )


@preset("tiny-qwen2-vl")
def tiny_qwen2_vl(text_layers: int = LAYERS, **config_overrides: Any) -> Qwen2VLAdapter:
    """Qwen2-VL shape: patch 14, 2x2 merge, full attention in every tower block, up to 64 tokens an image."""
    vision = {
        "depth": 3,
        "embed_dim": WIDTH + 32,  # the tower's own width, apart from the language model's
        "hidden_size": WIDTH,  # the merger's output: the language model's width
        "mlp_ratio": 2,
        "num_heads": HEADS,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return tiny_qwen_family(Qwen2VLAdapter, Qwen2VLConfig, vision, text_layers, config_overrides)
