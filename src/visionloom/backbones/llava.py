"""LLaVA-1.5 (`LlavaForConditionalGeneration`): a CLIP/SigLIP tower, a chosen layer, an MLP projector.

The tower runs at its fixed size; the model picks `vision_feature_layer` (an int, or a list whose
layers are concatenated) from the tower's hidden states and, with strategy "default", drops the
first token as CLS. Two bugs this family is known for: features taken with the CLS kept (577 vs
576 per image), and a second tower pass that did not reproduce the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from visionloom.backbones.base import ImageTokenAdapter, read_json, say_once
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny_parts import (
    LAYERS,
    clip_tower,
    llama_text,
    llava_tokenizer,
    preset,
    siglip_tower,
)
from visionloom.backbones.tower_attention import (
    encoder_block_attention,
    encoder_block_keys,
    require_hidden_states,
)
from visionloom.backbones.types import ImageGeometry, VisionTokens


def tower_has_cls(vision_config) -> bool:
    """CLIP towers prepend a class token; SigLIP towers do not."""
    return vision_config.model_type in ("clip_vision_model", "clip")


def feature_layers(config) -> list[int]:
    layer = config.vision_feature_layer
    return [layer] if isinstance(layer, int) else list(layer)


def select_features(hidden_states: tuple[torch.Tensor, ...], config) -> torch.Tensor:
    """The tower features the projector consumes, selected exactly as LLaVA's get_image_features does.

    hidden_states: per tower layer [N_img, P(+1 CLS), C]  ->  [N_img, P', C * len(layers)]
    """
    layers = feature_layers(config)
    pool = [hidden_states[layer] for layer in layers]
    if config.vision_feature_select_strategy == "default":
        pool = [h[:, 1:] for h in pool]
    return torch.cat(pool, dim=-1)


def processed_size(image_processor) -> tuple[int, int] | None:
    """(H, W) of what a CLIP-style image processor hands the tower, or None when it follows the image."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None and crop["height"]:
        return int(crop["height"]), int(crop["width"])
    size = image_processor.size
    if size["height"]:
        return int(size["height"]), int(size["width"])
    return None


# Processor settings that older llava-hf revisions did not write (no processor_config.json), and
# how each follows from the model config.
PROCESSOR_GAPS = {
    "patch_size": lambda config: config.vision_config.patch_size,
    "vision_feature_select_strategy": lambda config: config.vision_feature_select_strategy,
    "num_additional_image_tokens": lambda config: 1 if tower_has_cls(config.vision_config) else 0,
}


def fill_processor_gaps(processor: Any, config: Any, path: Path) -> None:
    """Set what the checkpoint's processor files leave out from the model config, and say so once."""
    processor_file = path / "processor_config.json"
    written = read_json(processor_file) if processor_file.is_file() else {}
    filled = {}
    for name, from_config in PROCESSOR_GAPS.items():
        if written.get(name) is None:
            filled[name] = from_config(config)
            setattr(processor, name, filled[name])
    if filled:
        say_once(
            f"{path}: the processor files do not set {', '.join(filled)} (a llava-hf revision from before "
            f"processor_config.json); taken from config.json: "
            + ", ".join(f"{name}={value!r}" for name, value in filled.items())
        )


def feature_source(config) -> str:
    layers = feature_layers(config)
    text = " + ".join(f"hidden_states[{layer}]" for layer in layers)
    if -1 in layers or (config.vision_config.num_hidden_layers in layers):
        text += " (an encoder layer's output: before post_layernorm, not last_hidden_state)"
    strategy = config.vision_feature_select_strategy
    if strategy == "default":
        text += ", first token (CLS) dropped"
    else:
        text += ", all tokens kept" + (" (CLS included)" if tower_has_cls(config.vision_config) else "")
    return text


class LlavaAdapter(ImageTokenAdapter):
    family = "llava"
    model_types = ("llava",)
    model_class = LlavaForConditionalGeneration
    marker = "<image>"

    @classmethod
    def load_processor(cls, path: Path, config: Any) -> Any:
        processor = AutoProcessor.from_pretrained(str(path))
        fill_processor_gaps(processor, config, path)
        return processor

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def vision_width(self) -> int:
        return self.config.vision_config.hidden_size * len(feature_layers(self.config))

    def configured_image_size(self) -> tuple[int, int]:
        side = self.config.vision_config.image_size
        return side, side

    def _tokens_from_tower(self) -> int:
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        extra = 1 if tower_has_cls(vision) else 0
        drop = 1 if self.config.vision_feature_select_strategy == "default" else 0
        return side * side + extra - drop

    def validate_config(self) -> None:
        config, vision = self.config, self.config.vision_config
        if config.vision_feature_select_strategy == "default" and not tower_has_cls(vision):
            raise ImageTokenMismatch(
                f"vision_feature_select_strategy='default' drops the first token as CLS, but the "
                f"{vision.model_type} tower has no CLS: a real patch would be dropped. Use 'full'."
            )
        processor = self.processor
        for name in PROCESSOR_GAPS:
            if getattr(processor, name, None) is None:
                raise ImageTokenMismatch(
                    f"the processor has no {name}: it cannot expand the image placeholders; set it in "
                    f"processor_config.json (config.json gives {PROCESSOR_GAPS[name](config)!r})"
                )
        if not self.native_resolution:
            self.check_processed_size()
        if processor.patch_size != vision.patch_size:
            raise ImageTokenMismatch(
                f"processor patch_size={processor.patch_size} but the vision tower's patch_size={vision.patch_size}"
            )
        if processor.vision_feature_select_strategy != config.vision_feature_select_strategy:
            raise ImageTokenMismatch(
                f"processor vision_feature_select_strategy={processor.vision_feature_select_strategy!r} but the "
                f"model config says {config.vision_feature_select_strategy!r}: the processor would expand "
                f"{'one placeholder too few' if processor.vision_feature_select_strategy == 'default' else 'one placeholder too many'}"
            )
        side = vision.image_size // vision.patch_size
        written = side * side + processor.num_additional_image_tokens
        if processor.vision_feature_select_strategy == "default":
            written -= 1
        produced = self._tokens_from_tower()
        if written != produced:
            raise ImageTokenMismatch(
                f"the processor expands each image to {written} placeholders "
                f"(num_additional_image_tokens={processor.num_additional_image_tokens}, strategy "
                f"{processor.vision_feature_select_strategy!r}) but the model produces {produced} features "
                f"({'CLIP tower with CLS' if tower_has_cls(vision) else 'tower without CLS'}, strategy "
                f"{config.vision_feature_select_strategy!r}): set num_additional_image_tokens="
                f"{processor.num_additional_image_tokens + produced - written}"
            )

    def check_processed_size(self) -> None:
        """The image processor must hand the tower images at the tower's own size."""
        tower = self.config.vision_config.image_size
        produced = processed_size(self.processor.image_processor)
        if produced is None:
            raise ImageTokenMismatch(
                f"the image processor resizes the shortest edge to {self.processor.image_processor.size['shortest_edge']} "
                f"without a center crop, so the tower would get non-square images; the tower runs at "
                f"{tower}x{tower}: set do_center_crop=true and crop_size {tower}x{tower} in preprocessor_config.json"
            )
        if produced != (tower, tower):
            side = self.config.vision_config.patch_size
            raise ImageTokenMismatch(
                f"the image processor produces {produced[0]}x{produced[1]} images (preprocessor_config.json "
                f"crop_size/size) but the vision tower's image_size is {tower} (config.json): the placeholders "
                f"would be counted for {tower // side}x{tower // side} patches and the tower would see "
                f"{produced[0] // side}x{produced[1] // side}. Set crop_size to {tower}x{tower}."
            )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        vision = self.config.vision_config
        size, side = vision.image_size, vision.image_size // vision.patch_size
        if self.native_resolution and (height, width) != (size, size):
            raise ImageTokenMismatch(
                f"{height}x{width} does not fit: the {self.family} tower runs at {size}x{size} only (no position "
                f"interpolation in the model); sizes that work: {size}x{size}"
            )
        count = self._tokens_from_tower()
        cls_kept = count == side * side + 1
        offsets = tuple(range(1, side * side + 1)) if cls_kept else None
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(size, size),
            patch_grid=(side, side),
            token_grid=(side, side),
            num_tokens=count,
            grid_offsets=offsets,
        )

    def _process(self, texts, images, geometries) -> dict:
        native = {"do_resize": False, "do_center_crop": False} if self.native_resolution else {}
        return super()._process(texts, images, geometries, **native)

    def encode_images(self, inputs) -> VisionTokens:
        # One pass: get_image_features with every tower layer returned; raw features are selected
        # from those same hidden states, so raw and embeds cannot disagree (a second pass gave different numbers).
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"], output_hidden_states=True, return_dict=True
        )
        embeds = torch.cat(list(out.pooler_output), dim=0)  # [N_img * P', D_text]
        raw = select_features(out.hidden_states, self.config)  # [N_img, P', C_vision]
        counts = [int(x.shape[0]) for x in out.pooler_output]
        return VisionTokens(
            embeds=embeds,
            raw=raw.flatten(0, 1),
            counts=counts,
            raw_counts=counts,
            geometries=list(inputs.geometries),
            feature_source=feature_source(self.config),
            tower_hidden_states=tuple(out.hidden_states),
        )

    def score_block(self, tokens: VisionTokens, block: int | None) -> int:
        """The tower block to score at: `block`, or the block whose output is the (last) feature layer."""
        if block is not None:
            return block
        layer = feature_layers(self.config)[-1] % len(require_hidden_states(tokens.tower_hidden_states))
        if layer == 0:
            raise ValueError("the feature layer is the tower's embeddings; give the block to score at")
        return layer - 1  # hidden_states[i] is the output of block i - 1

    def selected_positions(self, per_position: torch.Tensor) -> torch.Tensor:
        """[tiles, P, ...] -> [tiles, P', ...]: the positions the features keep (the class token goes)."""
        if self.config.vision_feature_select_strategy == "default":
            return per_position[:, 1:]  # the class token's own column: it is not an image token
        return per_position

    def tile_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> torch.Tensor:
        """[tiles, P']: per tower tile, the attention each selected feature position receives at `block`.

        CLIP towers: the class token's row (VisionZip, PruMerge). SigLIP towers have no class token, so
        the mean over all queries. `block` defaults to the block whose output is the (last) feature layer.
        """
        query = "cls" if tower_has_cls(self.config.vision_config) else "all"
        block = self.score_block(tokens, block)
        return self.selected_positions(
            encoder_block_attention(self.vision_tower, tokens.tower_hidden_states, block, query)
        )

    def tile_keys(self, tokens: VisionTokens, block: int | None = None) -> torch.Tensor:
        """[tiles, P', C]: each selected feature position's attention key at `block` (as the scores)."""
        block = self.score_block(tokens, block)
        return self.selected_positions(
            encoder_block_keys(self.vision_tower, tokens.tower_hidden_states, block)
        )

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        return list(self.tile_attention_scores(tokens, block))

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        return list(self.tile_keys(tokens, block))

    def describe_vision(self) -> dict[str, str]:
        vision = self.config.vision_config
        size = self.configured_image_size()
        return {
            "vision tower": f"{vision.model_type} ({vision.num_hidden_layers} layers)",
            "patch size": str(vision.patch_size),
            "pooling / merge": "none",
            "CLS policy": f"{self.config.vision_feature_select_strategy}"
            + (
                " (CLS dropped)"
                if self.config.vision_feature_select_strategy == "default"
                else " (all tokens)"
            ),
            "feature layer(s)": feature_source(self.config),
            "image size": f"{size[0]}x{size[1]}"
            + (" native" if self.native_resolution else " (processor resizes)"),
        }


@preset("tiny-llava")
def tiny_llava(*, vision: str = "clip", text_layers: int = LAYERS, **config_overrides: Any) -> LlavaAdapter:
    """LLaVA-1.5 shape: 112x112 images, patch 14 -> 8x8 tokens; CLIP tower with CLS by default."""
    tokenizer = llava_tokenizer()
    vision_config = clip_tower(112) if vision == "clip" else siglip_tower(112)
    settings = {
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default" if vision == "clip" else "full",
    }
    settings.update(config_overrides)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=llama_text(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **settings,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if vision == "clip" else 0,
    )
    return LlavaAdapter(LlavaAdapter.model_class(config).eval(), processor)
