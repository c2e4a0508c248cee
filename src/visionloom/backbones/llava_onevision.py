"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): LLaVA-NeXT's tiles with a cap.

The same any-res layout as LLaVA-NeXT (a base view, then the stitched and unpadded tiles with a
newline closing each row), on a SigLIP tower (no CLS, strategy "full"). What differs
("anyres_max_N", `vision_aspect_ratio`): when the unpadded map holds more than N base views' worth of
features (by more than 10%), the model shrinks it by bilinear interpolation to
int(rows / r) x int(cols / r), r = sqrt(rows * cols / (N * side^2)); the processor counts the
placeholders the same way, and so does `geometry` here. A token of a shrunk map is then a blend of
several tile positions, not one: tower scores and keys are interpolated the same way.

Images are handed to the processor as one flat list, so each is treated as a single image with
its tiles (`batch_num_images` all 1). OneVision's own multi-image mode (several images in one
sample get the base view only) is not used by the layer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from visionloom.backbones.base import read_chat_template, read_json
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.llava_next import LlavaNextAdapter
from visionloom.backbones.tiny_parts import LAYERS, build_tokenizer, narrow_text, preset, siglip_tower

PROCESSOR_SETTINGS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio")


def max_views(vision_aspect_ratio: str) -> int:
    """N of "anyres_max_N": how many base views' worth of features the tiles may hold."""
    if not vision_aspect_ratio.startswith("anyres_max_") or not vision_aspect_ratio[11:].isdigit():
        raise ValueError(f"vision_aspect_ratio {vision_aspect_ratio!r}: expected anyres_max_N")
    return int(vision_aspect_ratio[11:])


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava-onevision"
    model_types = ("llava_onevision",)
    model_class = LlavaOnevisionForConditionalGeneration
    processor_class = LlavaOnevisionProcessor
    video_processor_source = (
        "llava_onevision.video_processing_llava_onevision",
        "LlavaOnevisionVideoProcessor",
    )

    @classmethod
    def load_processor(cls, path: Path, config: Any = None) -> LlavaOnevisionProcessor:
        # AutoProcessor would also build the video processor, which needs torchvision (see _compat).
        processor_file = path / "processor_config.json"
        settings = read_json(processor_file) if processor_file.is_file() else {}
        image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(str(path))
        return cls.build_processor(
            image_processor=image_processor,
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            chat_template=read_chat_template(path),
            **{key: settings[key] for key in PROCESSOR_SETTINGS if key in settings},
        )

    def save_pretrained(self, path: str | Path) -> None:
        super().save_pretrained(path)
        config_file = Path(path) / "processor_config.json"
        saved = json.loads(config_file.read_text())
        if isinstance(saved.get("video_processor"), dict):  # the real class, for machines with torchvision
            saved["video_processor"]["video_processor_type"] = "LlavaOnevisionVideoProcessor"
            config_file.write_text(json.dumps(saved, indent=2))

    def validate_config(self) -> None:
        """The processor counts placeholders from its own settings: each must be the model's."""
        self.check_tiles()
        vision = self.config.vision_config
        per_view = (vision.image_size // vision.patch_size) ** 2
        for name, processor_value, model_value in (
            ("vision_aspect_ratio", self.processor.vision_aspect_ratio, self.config.vision_aspect_ratio),
            (
                "vision_feature_select_strategy",
                self.processor.vision_feature_select_strategy,
                self.config.vision_feature_select_strategy,
            ),
            ("num_image_tokens", self.processor.num_image_tokens, per_view),
        ):
            if processor_value != model_value:
                raise ImageTokenMismatch(
                    f"processor {name}={processor_value!r} but the model gives {model_value!r} "
                    f"(config.json): the placeholders would not match the features; use {model_value!r}"
                )

    def packed_grid(self, height: int, width: int) -> tuple[int, int]:
        rows, cols = super().packed_grid(height, width)
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        ratio = math.sqrt(rows * cols / (max_views(self.config.vision_aspect_ratio) * side**2))
        if ratio > 1.1:  # the model's own threshold
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def pack(self, per_image: list[torch.Tensor], geometries, newline: torch.Tensor) -> list[torch.Tensor]:
        packed, lengths = self.model.model.pack_image_features(
            per_image,
            image_sizes=torch.tensor([g.image_size for g in geometries]),
            image_newline=newline,
            vision_aspect_ratio=self.config.vision_aspect_ratio,
        )
        return list(packed) if isinstance(packed, (list, tuple)) else list(packed.split(lengths))

    def describe_vision(self) -> dict[str, str]:
        info = super().describe_vision()
        info["pooling / merge"] = (
            f"any-res tiles {self.config.image_grid_pinpoints}, unpad, {self.config.vision_aspect_ratio} "
            "(bilinear shrink above the cap), newline per row"
        )
        return info


@preset("tiny-llava-onevision")
def tiny_llava_onevision(text_layers: int = LAYERS, **config_overrides: Any) -> LlavaOnevisionAdapter:
    """LLaVA-OneVision shape: SigLIP 56-px tiles (4x4 tokens each), any-res grids up to 168x168,
    anyres_max_2: a map of more than two base views' features is shrunk (2x2 tiles: 8x8 -> 5x5)."""
    tokenizer = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>"],
        {"image_token": "<image>", "video_token": "<video>"},
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112], [112, 168], [168, 112], [168, 168]]
    config = LlavaOnevisionConfig(
        vision_config=siglip_tower(56).to_dict(),
        text_config=narrow_text(
            len(tokenizer), text_layers, model_type="qwen2", pad_token_id=tokenizer.pad_token_id
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_2",
        **config_overrides,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaOnevisionAdapter.build_processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_2",
    )
    return LlavaOnevisionAdapter(LlavaOnevisionAdapter.model_class(config).eval(), processor)
