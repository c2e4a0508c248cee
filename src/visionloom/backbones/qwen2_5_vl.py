"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): dynamic resolution, 2x2 patch merge, 3-D rotary positions.

The processor resizes each image to multiples of patch_size * merge_size (`smart_resize`), cuts
it into patches and writes `<|vision_start|>`, one `<|image_pad|>` per merged token and
`<|vision_end|>`; `image_grid_thw` holds each image's patch grid. The tower runs windowed
attention on a window-permuted sequence and un-permutes only its merged output, so its hidden
states are in window order.

Two silent traps, both closed here: the ids must be built with the images (otherwise "tokens: 0"),
and the multimodal rotary positions must be computed on the full sequence with the image tokens
marked. The model itself falls back to plain 1-D positions without `mm_token_type_ids`, or uses a
stale `rope_deltas` from an earlier call when only `inputs_embeds` is given; `forward` here always
passes position ids computed by the model's own `get_rope_index`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from visionloom.backbones._compat import qwen_video_processor
from visionloom.backbones.base import (
    ImageTokenAdapter,
    image_processor_settings,
    nearest_multiples,
    read_chat_template,
)
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.patch_embed import patch_convolutions_as_matmul
from visionloom.backbones.tiny_parts import HEADS, LAYERS, WIDTH, narrow_text, preset, qwen_tokenizer
from visionloom.backbones.tower_attention import attention_received, block_index, require_hidden_states
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens


def build_qwen_processor(
    image_processor, tokenizer, chat_template: str | None = None, processor_class: type = Qwen2_5_VLProcessor
):
    """The family's processor (Qwen2.5-VL's or Qwen2-VL's) with a video processor that works here."""
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=qwen_video_processor(image_processor),
        chat_template=chat_template,
    )


def qwen_block_qk(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    grid_thw: torch.Tensor,
    window_index: torch.Tensor,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Qwen2.5-VL's full-attention block `block`: queries and keys [patches, heads, d] in the tower's
    (window) order, with the rotary angles applied as the tower applies them, and the scale.

    Only full-attention blocks (`fullatt_block_indexes`) are allowed. In the other blocks a patch is
    attended only from inside its window, so what they compare is local to a window. Qwen2-VL's
    tower has no windows: every block attends over the whole image and runs in merge-unit order.
    """
    index = block_index(block, len(tower.blocks))
    windowed = hasattr(tower, "fullatt_block_indexes")
    if windowed and index not in tower.fullatt_block_indexes:
        raise ValueError(
            f"tower block {block} (index {index}) uses windowed attention, so its scores only rank "
            f"patches within a window. Choose a full-attention block: {list(tower.fullatt_block_indexes)}"
        )
    layer = tower.blocks[index]
    attention = layer.attn
    hidden = require_hidden_states(hidden_states)[index]  # [patches, C], window order
    patches = hidden.shape[0]
    qkv = attention.qkv(layer.norm1(hidden)).reshape(patches, 3, attention.num_heads, -1)
    queries, keys = qkv[:, 0], qkv[:, 1]  # [patches, heads, d]

    # The rotary angles as the tower's forward builds them: merge-unit order, then window order.
    grid_thw, window_index = grid_thw.to(hidden.device), window_index.to(hidden.device)
    position_ids = get_vision_position_ids(grid_thw, tower.spatial_merge_size)
    cos, sin = tower.rotary_pos_emb(hidden, position_ids)
    if windowed:
        cos, sin = (
            tower.permute_input_for_window_attn(angles, window_index, seq_len=patches)
            for angles in (cos, sin)
        )
    queries, keys = apply_rotary_pos_emb_vision(queries, keys, cos, sin)
    return queries, keys, attention.scaling


def per_merged_token(
    values: torch.Tensor, tower: torch.nn.Module, window_index: torch.Tensor
) -> torch.Tensor:
    """[patches, ...] in window order -> [merged tokens, ...]: the mean over each 2x2 merge unit, in
    raster order (the merger's output order)."""
    per_unit = values.view(-1, tower.spatial_merge_size**2, *values.shape[1:]).mean(1)
    return per_unit[torch.argsort(window_index.to(values.device))]


def qwen_block_attention(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    grid_thw: torch.Tensor,
    window_index: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """Qwen2.5-VL's tower: [merged tokens], the attention each merged token's patches receive at `block`.

    The tower runs on a window-permuted sequence, one 2x2 merge unit after another. The scores are
    computed in that order (`qwen_block_qk`), averaged over each merge unit and put back in raster
    order. `window_index` is that order, as the adapter gets it from the model.
    """
    queries, keys, scale = qwen_block_qk(tower, hidden_states, grid_thw, window_index, block)
    # A full-attention block attends within each image. An image's patches stay contiguous under the
    # window permutation.
    bounds = get_vision_cu_seqlens(grid_thw.to(keys.device)).tolist()
    received = torch.cat(
        [
            attention_received(queries[start:end].transpose(0, 1), keys[start:end].transpose(0, 1), scale)
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    )  # [patches], window order
    return per_merged_token(received, tower, window_index)


def qwen_block_keys(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    grid_thw: torch.Tensor,
    window_index: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """Qwen2.5-VL's tower: [merged tokens, heads * d], the mean key of each merged token's patches at
    `block`, as the block's attention compares them (rotary angles applied)."""
    _, keys, _ = qwen_block_qk(tower, hidden_states, grid_thw, window_index, block)
    return per_merged_token(keys.flatten(1), tower, window_index)


class Qwen2_5_VLAdapter(ImageTokenAdapter):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    model_class = Qwen2_5_VLForConditionalGeneration
    marker = "<|vision_start|><|image_pad|><|vision_end|>"
    projector_path = "model.visual.merger"  # 2x2 patches -> one token: raw has 4 rows per embedding
    processor_class: ClassVar[type] = Qwen2_5_VLProcessor
    video_processor_type: ClassVar[str] = "Qwen2VLVideoProcessor"  # recorded on save, see save_pretrained

    def __init__(self, model, processor, *, native_resolution: bool = False):
        super().__init__(model, processor, native_resolution=native_resolution)
        # The same maths, without PyTorch's slow generic Conv3d path (see patch_embed).
        patch_convolutions_as_matmul(self.vision_tower)

    @classmethod
    def load_processor(cls, path: Path, config: Any = None) -> Qwen2_5_VLProcessor:
        # AutoProcessor would also build the video processor, which needs torchvision (see _compat).
        settings, source = image_processor_settings(path)
        try:
            image_processor = Qwen2VLImageProcessorPil.from_dict(settings)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a Qwen2-VL image processor configuration ({error})") from None
        return build_qwen_processor(
            image_processor,
            AutoTokenizer.from_pretrained(str(path)),
            read_chat_template(path),
            cls.processor_class,
        )

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))
        # Record the real video processor class, so AutoProcessor builds it where torchvision exists.
        config_file = Path(path) / "processor_config.json"
        saved = json.loads(config_file.read_text())
        video = saved.get("video_processor")
        if isinstance(video, dict):
            video["video_processor_type"] = self.video_processor_type
            config_file.write_text(json.dumps(saved, indent=2))

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.visual

    @property
    def vision_width(self) -> int:
        return int(self.config.vision_config.hidden_size)

    @property
    def merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    @property
    def factor(self) -> int:
        return int(self.config.vision_config.patch_size) * self.merge_size

    def configured_image_size(self) -> tuple[int, int]:
        return self.factor * 8, self.factor * 8

    def validate_config(self) -> None:
        vision, image_processor = self.config.vision_config, self.processor.image_processor
        for name, model_value, processor_value in (
            ("patch_size", vision.patch_size, image_processor.patch_size),
            ("merge_size", vision.spatial_merge_size, image_processor.merge_size),
            ("temporal_patch_size", vision.temporal_patch_size, image_processor.temporal_patch_size),
        ):
            if model_value != processor_value:
                raise ImageTokenMismatch(
                    f"image processor {name}={processor_value} but the vision config says {model_value}: "
                    f"image_grid_thw and the placeholders would not match the tower's output"
                )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        factor, patch = self.factor, self.config.vision_config.patch_size
        if self.native_resolution:
            if height % factor or width % factor:
                raise ImageTokenMismatch(
                    f"{height}x{width} does not fit: native resolution needs multiples of {factor} "
                    f"(patch {patch} x merge {self.merge_size}); nearest heights {nearest_multiples(height, factor)}, "
                    f"nearest widths {nearest_multiples(width, factor)}"
                )
            resized = (height, width)
        else:
            size = self.processor.image_processor.size
            resized = smart_resize(
                height,
                width,
                factor=factor,
                min_pixels=size["shortest_edge"],
                max_pixels=size["longest_edge"],
            )
        rows, cols = resized[0] // factor, resized[1] // factor
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=tuple(resized),
            patch_grid=(resized[0] // patch, resized[1] // patch),
            token_grid=(rows, cols),
            num_tokens=rows * cols,
        )

    def _process(self, texts, images, geometries) -> dict:
        native = {"do_resize": False} if self.native_resolution else {}
        return super()._process(texts, images, geometries, **native)

    def normalise_processed(self, encoded: dict) -> dict:
        # The image token mask carries the same information, and forward derives positions from it.
        encoded.pop("mm_token_type_ids", None)
        return encoded

    def geometries_from_processed(self, input_ids, model_inputs, image_sizes=None) -> list[ImageGeometry]:
        if image_sizes is not None:
            return super().geometries_from_processed(input_ids, model_inputs, image_sizes)
        # image_grid_thw [N, 3] counts patches of the resized image, which resizing keeps as it is.
        patch = self.config.vision_config.patch_size
        return [
            self.geometry(int(rows) * patch, int(cols) * patch)
            for _frames, rows, cols in model_inputs["image_grid_thw"].tolist()
        ]

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        start = int(self.config.vision_start_token_id)
        end = int(self.config.vision_end_token_id)
        return [start] + [self.image_token_id] * geometry.num_tokens + [end]

    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        grid_thw = inputs.model_inputs["image_grid_thw"]
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            image_grid_thw=grid_thw,
            output_hidden_states=True,
            return_dict=True,
        )
        embeds = torch.cat(list(out.pooler_output), dim=0)  # [T, D_text], raster order
        # The tower's last hidden state is in window order, one merge unit (2x2 patches) at a time;
        # undo that permutation so raw row group i is the four patches of embedding i.
        unit = self.merge_size**2
        hidden = out.last_hidden_state  # [patches, C], window order
        raw = hidden.view(-1, unit, hidden.shape[-1])[
            torch.argsort(self.window_index(grid_thw)).to(hidden.device)
        ]
        return VisionTokens(
            embeds=embeds,
            raw=raw.reshape(-1, hidden.shape[-1]),  # [4T, C_vision], merge-unit order
            counts=[int(x.shape[0]) for x in out.pooler_output],
            raw_counts=[int(x.shape[0]) * unit for x in out.pooler_output],
            geometries=list(inputs.geometries),
            feature_source="last block output before the merger"
            + (" (window order undone)" if hasattr(self.vision_tower, "fullatt_block_indexes") else "")
            + ", 4 patches per token",
            tower_hidden_states=tuple(out.hidden_states),
            # Qwen3-VL's tower also returns DeepStack features, per layer a tuple of per-image parts.
            deepstack=tuple(
                torch.cat(list(parts), 0) for parts in getattr(out, "deepstack_features", None) or ()
            ),
        )

    def full_attention_blocks(self) -> list[int]:
        """The tower blocks whose attention spans the whole image (the others attend within windows)."""
        return list(self.vision_tower.fullatt_block_indexes)

    def window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """[merge units]: the order the tower runs them in (windows first), the model's own function."""
        vision = self.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw.cpu(),
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            patch_size=vision.patch_size,
        )
        return window_index

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """The attention each merged token's 2x2 patches receive at a full-attention block (default: the last)."""
        return list(qwen_block_attention(*self.tower_block_inputs(tokens, block)).split(tokens.counts))

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Each merged token's mean patch key at a full-attention block (default: the last)."""
        return list(qwen_block_keys(*self.tower_block_inputs(tokens, block)).split(tokens.counts))

    def tower_block_inputs(self, tokens: VisionTokens, block: int | None) -> tuple:
        tower = self.vision_tower
        block = self.full_attention_blocks()[-1] if block is None else block
        grid_thw = torch.tensor([[1, *g.patch_grid] for g in tokens.geometries])  # images: one temporal step
        return tower, tokens.tower_hidden_states, grid_thw, self.window_index(grid_thw), block

    def image_token_types(self, inputs: MultimodalInputs) -> dict[str, torch.Tensor]:
        return {"mm_token_type_ids": inputs.image_token_mask.long()}

    def position_ids(self, inputs: MultimodalInputs) -> torch.Tensor:
        """3-D rotary positions [3, B, S] from the model's own get_rope_index, on the full sequence."""
        positions, _ = self.model.model.get_rope_index(
            inputs.input_ids,
            mm_token_type_ids=inputs.image_token_mask.long(),
            image_grid_thw=inputs.model_inputs.get("image_grid_thw"),
            attention_mask=inputs.attention_mask,
        )
        return positions

    def language_model_kwargs(self, inputs: MultimodalInputs) -> dict[str, Any]:
        return {"position_ids": self.position_ids(inputs)}

    def tower_description(self) -> tuple[str, str]:
        """(the tower, what the merger reads) for the doctor."""
        vision = self.config.vision_config
        return (
            f"Qwen2.5-VL ViT ({vision.depth} blocks, window {vision.window_size}px)",
            "last block (merger input)",
        )

    def describe_vision(self) -> dict[str, str]:
        tower, feature = self.tower_description()
        return {
            "vision tower": tower,
            "patch size": str(self.config.vision_config.patch_size),
            "pooling / merge": f"{self.merge_size}x{self.merge_size} patch merge (visual.merger)",
            "CLS policy": "no CLS",
            "feature layer(s)": feature,
            "image size": "dynamic, multiples of "
            + str(self.factor)
            + (" native" if self.native_resolution else " (smart_resize)"),
        }


def tiny_qwen_family(
    adapter_class, config_class, vision: dict[str, Any], text_layers: int, overrides: dict, **text: Any
):
    """A Qwen-family preset: the offline Qwen tokenizer and special ids, a narrow text model with
    3-D rotary sections (and `text` settings), the tower `vision`, and the processor at the tower's
    patch size, merge 2, up to 64 tokens."""
    tokenizer, ids = qwen_tokenizer()
    patch = vision["patch_size"]
    config = config_class(
        text_config=narrow_text(
            len(tokenizer),
            text_layers,
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            **text,
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **overrides,
    )
    factor = 2 * patch
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=(2 * factor) ** 2,
        max_pixels=factor * factor * 64,
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = build_qwen_processor(
        image_processor, tokenizer, processor_class=adapter_class.processor_class
    )
    return adapter_class(adapter_class.model_class(config).eval(), processor)


@preset("tiny-qwen2.5-vl")
def tiny_qwen2_5_vl(text_layers: int = LAYERS, **config_overrides: Any) -> Qwen2_5_VLAdapter:
    """Qwen2.5-VL shape: patch 14, 2x2 merge, 112-px attention windows, up to 64 tokens an image."""
    vision = {
        "depth": 3,
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_heads": HEADS,
        "out_hidden_size": WIDTH,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [2],
    }
    return tiny_qwen_family(Qwen2_5_VLAdapter, Qwen2_5_VLConfig, vision, text_layers, config_overrides)
