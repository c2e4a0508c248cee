"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2-VL's image path plus DeepStack.

What is the same as Qwen2-VL (so the adapter is that one's subclass): `smart_resize` to multiples
of patch x merge (patch 16 in the released checkpoints, so 32-px steps), `<|vision_start|>`, one
`<|image_pad|>` per merged 2x2 unit, `<|vision_end|>`, `image_grid_thw`, a tower without windows
that runs in merge-unit order, and 3-D rotary positions from the model's own `get_rope_index` on
the full sequence (Qwen3-VL interleaves the three axes over the rotary frequencies, inside the
model's rotary embedding; the positions it takes are the same kind).

What differs:

- **DeepStack.** Besides the merger's output (what goes into `inputs_embeds`), the tower hands
  the language model one more [T, D_text] per `deepstack_visual_indexes` block, each through its
  own merger (`deepstack_merger_list`). The language model adds the k-th of them to the hidden
  state leaving its layer k, at the image positions only. The model does this only when it ran the
  tower itself: given `inputs_embeds` (as every path here gives it), it adds nothing, silently.
  So `VisionTokens.deepstack` carries them from the same tower pass, `vision_model_kwargs` ties
  each image token's position to its row (a per-token index that pruning gathers with the kept
  tokens), and `run_language_model` hands the model's own DeepStack arguments to its language
  model (`visual_pos_masks`, `deepstack_visual_embeds`). A language model run with image tokens
  and without them is refused.
- **Stretches of layers.** Pruning runs the language model a stretch of layers at a time; the
  text model counts its DeepStack layers from the first layer present, so a stretch starting at
  layer j gets the features from j on (the first layer's own `layer_idx` says where it starts).
- The tower adds learned position embeddings, interpolated to each image's patch grid, before its
  blocks (inside the model; nothing for the layer to do), and its merger reads the last block at
  the tower's `hidden_size`.
- The processor returns `mm_token_type_ids`, and the model refuses pixels without them instead of
  falling back to 1-D positions; positions here come from the image token mask as for the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.qwen2_5_vl import tiny_qwen_family
from visionloom.backbones.qwen2_vl import Qwen2VLAdapter
from visionloom.backbones.tiny_parts import HEADS, LAYERS, WIDTH, preset
from visionloom.backbones.types import LayerOutput, MultimodalInputs, VisionTokens


@contextmanager
def deepstack_into(
    language_module: torch.nn.Module, visual_positions: torch.Tensor, features: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Give the text model the DeepStack arguments the top-level model leaves empty when it gets
    `inputs_embeds`: `visual_positions` [B, S] and, per DeepStack layer still to come, [n, D] rows
    in the order of those positions."""

    def give(_module, args, kwargs):
        if kwargs.get("deepstack_visual_embeds") is not None:
            raise AssertionError("the model ran its own tower: DeepStack would be added twice")
        return args, {
            **kwargs,
            "visual_pos_masks": visual_positions,
            "deepstack_visual_embeds": list(features),
        }

    handle = language_module.register_forward_pre_hook(give, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3-vl"
    model_types = ("qwen3_vl",)
    model_class = Qwen3VLForConditionalGeneration
    processor_class = Qwen3VLProcessor
    video_processor_type = "Qwen3VLVideoProcessor"

    @classmethod
    def projector_key_parts(cls) -> tuple[str, ...]:
        return ("model.visual.merger.", "model.visual.deepstack_merger_list.")

    @property
    def vision_width(self) -> int:
        return int(self.config.vision_config.hidden_size)  # the merger reads the tower at its own width

    @property
    def deepstack_blocks(self) -> list[int]:
        return list(self.config.vision_config.deepstack_visual_indexes)

    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        tokens = super().encode_images(inputs)
        source = f"{tokens.feature_source}; DeepStack from tower blocks {self.deepstack_blocks}"
        return replace(tokens, feature_source=source)

    def check(self, inputs: MultimodalInputs, tokens: VisionTokens) -> None:
        super().check(inputs, tokens)
        expected = len(self.deepstack_blocks)
        if len(tokens.deepstack) != expected:
            raise ImageTokenMismatch(
                f"{self.family}: the vision tokens carry {len(tokens.deepstack)} DeepStack feature sets but the "
                f"model adds {expected} (tower blocks {self.deepstack_blocks}) to its first language layers; "
                f"without them the image enters only through inputs_embeds. Encode with encode_images."
            )
        for layer, features in enumerate(tokens.deepstack):
            if tuple(features.shape) != tuple(tokens.embeds.shape):
                raise ImageTokenMismatch(
                    f"{self.family}: DeepStack features {layer} are {tuple(features.shape)}, expected one row per "
                    f"image token like the embeddings, {tuple(tokens.embeds.shape)}"
                )

    def vision_model_kwargs(self, inputs: MultimodalInputs, tokens: VisionTokens) -> dict[str, Any]:
        """`deepstack_rows` [B, S]: 1 + the DeepStack row of each image token (placeholders are filled
        in batch-major order, as the model fills them), 0 elsewhere; and the features themselves."""
        mask = inputs.image_token_mask
        rows = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
        rows[mask] = torch.arange(1, int(mask.sum()) + 1, device=mask.device)
        return {"deepstack_rows": rows, "deepstack_features": tuple(tokens.deepstack)}

    def run_language_model(
        self,
        inputs: MultimodalInputs,
        inputs_embeds: torch.Tensor,
        model_kwargs: dict[str, Any],
        **flags: Any,
    ) -> LayerOutput:
        kwargs = dict(model_kwargs)
        rows = kwargs.pop("deepstack_rows", None)
        features = kwargs.pop("deepstack_features", ())
        if rows is None and bool(inputs.image_token_mask.any()):
            raise ImageTokenMismatch(
                f"{self.family}: the sequence has image tokens but no DeepStack features were given; "
                f"pass vision_model_kwargs(inputs, tokens) with the language model's arguments"
            )
        # Decoding a text token has none; a stretch of layers takes the sets of its own layers.
        remaining = features[self.first_language_layer() :] if rows is not None else ()
        if not remaining:
            return super().run_language_model(inputs, inputs_embeds, kwargs, **flags)
        visual = rows > 0  # [B, S]
        with deepstack_into(self.language_module, visual, [f[rows[visual] - 1] for f in remaining]):
            return super().run_language_model(inputs, inputs_embeds, kwargs, **flags)

    def tower_description(self) -> tuple[str, str]:
        vision = self.config.vision_config
        return (
            f"Qwen3-VL ViT ({vision.depth} blocks, full attention, learned positions interpolated)",
            f"last block (merger input); DeepStack: blocks {self.deepstack_blocks} -> language layers "
            f"0..{len(self.deepstack_blocks) - 1}",
        )


@preset("tiny-qwen3-vl")
def tiny_qwen3_vl(text_layers: int = LAYERS, **config_overrides: Any) -> Qwen3VLAdapter:
    """Qwen3-VL shape: patch 16, 2x2 merge (32-px steps), up to 64 tokens an image, learned tower
    positions on an 8x8 grid, DeepStack from tower blocks 1 and 2 into language layers 0 and 1."""
    vision = {
        "depth": 3,
        "hidden_size": WIDTH + 32,  # the tower's width, apart from the language model's
        "intermediate_size": 2 * WIDTH,
        "num_heads": HEADS,
        "out_hidden_size": WIDTH,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [1, 2],
    }
    return tiny_qwen_family(
        Qwen3VLAdapter, Qwen3VLConfig, vision, text_layers, config_overrides, head_dim=WIDTH // HEADS
    )
