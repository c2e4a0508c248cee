"""Gemma 4 (`Gemma4ForConditionalGeneration`): its own image path, and what differs from Gemma 3.

Read from transformers 5.23's `modeling_gemma4.py`, `image_processing_pil_gemma4.py` and
`processing_gemma4.py`. What differs from Gemma 3 (`gemma3.py`):

- **Resolution.** Gemma 3 squashes every image to one square (896 px, 4096 patches pooled to 256
  tokens). Gemma 4's processor keeps the aspect ratio: it resizes to the largest size whose sides
  are multiples of patch x `pooling_kernel_size` and whose patches fit `max_soft_tokens` x k^2
  (`get_aspect_ratio_preserving_size`), so an image gives (H / (patch k)) x (W / (patch k)) tokens,
  up to `max_soft_tokens` (70, 140, 280, 560 or 1120).
- **Patches, not pixels.** The processor patchifies: `pixel_values` are [N, max patches, 3 patch^2]
  with `image_position_ids` [N, max patches, 2] holding each patch's (x, y), padding (-1, -1) after
  the real patches. The tower (its own, not SigLIP) adds learned x and y position embeddings, runs
  2-D rotary attention over the real patches only, and pools each k x k block by position inside
  the tower; the padding is stripped, so the tower returns the soft tokens themselves.
- **Projection.** `embed_vision`: an RMSNorm without scale, then one linear map (Gemma 3: an RMSNorm
  with scale, average pooling and a projection matrix). No `mm_input_projection_weight` at zero.
- **Placeholders.** `<|image>`, one `<|image|>` per soft token, `<image|>`: one contiguous run,
  its length depending on the image's size. The processor returns `mm_token_type_ids`.
- **Attention among image tokens.** With `use_bidirectional_attention="vision"`, the sliding-window
  layers let an image's tokens attend each other both ways, the full-attention layers stay causal
  (Gemma 3: both ways in every layer). The model builds that mask only from `mm_token_type_ids`;
  given `inputs_embeds` without them it is silently causal everywhere. The layer always passes them
  (derived from the image token mask, gathered with the kept tokens when pruning).
- **Per-layer embeddings (E2B, E4B).** Each decoder layer also adds a per-token embedding looked up
  from the token id (`embed_tokens_per_layer`, image positions taking the pad id). Given only
  `inputs_embeds`, the model recovers the ids by matching rows of the embedding table, which image
  rows never match: the layer computes them from `input_ids` as the model does and passes them.
- **KV sharing (E2B, E4B).** The last `num_kv_shared_layers` layers reuse the keys and values of
  earlier layers. With per-layer embeddings or KV sharing, a later layer depends on the first
  layers' inputs and states, not only on the hidden state entering it, so the language model cannot
  be run a stretch of layers at a time: drops inside it (FastV, PDrop) are refused with the reason;
  drops before the first layer work as for every family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
from transformers.models.gemma4.image_processing_pil_gemma4 import (
    Gemma4ImageProcessorPil,
    get_aspect_ratio_preserving_size,
)

from visionloom.backbones.base import (
    ImageTokenAdapter,
    image_processor_settings,
    read_chat_template,
    read_json,
)
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny_parts import (
    HEADS,
    LAYERS,
    WIDTH,
    build_tokenizer,
    gemma_text,
    preset,
    randomise_zero_init,
    tower_settings,
)
from visionloom.backbones.tower_attention import (
    attention_per_image,
    block_index,
    block_means,
    keys_per_image,
    require_hidden_states,
)
from visionloom.backbones.types import ImageGeometry, LayerOutput, MultimodalInputs, VisionTokens


def gemma4_block_qk(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    patch_grids: list[tuple[int, int]],
    block: int,
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Gemma 4's vision block `block`: per image, queries [heads, n, d] and keys [heads, n, d] of its n
    real patches (the padding after them left out, as the tower's mask leaves it out), after the
    block's norms and the 2-D rotary angles at the processor's (x, y) positions, and the scale."""
    from transformers.models.gemma4.modeling_gemma4 import apply_multidimensional_rope

    layers = tower.encoder.layers
    index = block_index(block, len(layers))
    layer = layers[index]
    attention = layer.self_attn
    hidden = require_hidden_states(hidden_states)[index]  # [N, max patches, C], padded
    images, length, _ = hidden.shape
    positions = torch.full((images, length, 2), -1, dtype=torch.long, device=hidden.device)
    for image, (rows, cols) in enumerate(patch_grids):  # (x, y), x fastest, as the processor writes them
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions[image, : rows * cols] = torch.stack([x.flatten(), y.flatten()], dim=-1).to(hidden.device)
    normed = layer.input_layernorm(hidden)
    cos, sin = tower.encoder.rotary_emb(normed, positions)
    shape = (images, length, -1, attention.head_dim)
    queries = apply_multidimensional_rope(
        attention.q_norm(attention.q_proj(normed).view(shape)), cos, sin, positions
    )
    keys = apply_multidimensional_rope(
        attention.k_norm(attention.k_proj(normed).view(shape)), cos, sin, positions
    )
    keys = keys.repeat_interleave(attention.num_key_value_groups, dim=2)  # grouped heads, as repeat_kv
    out = []
    for image, (rows, cols) in enumerate(patch_grids):
        real = rows * cols
        out.append(
            (queries[image, :real].transpose(0, 1), keys[image, :real].transpose(0, 1), attention.scaling)
        )
    return out


class Gemma4Adapter(ImageTokenAdapter):
    family = "gemma4"
    model_types = ("gemma4",)
    model_class = Gemma4ForConditionalGeneration
    marker = "<|image|>"
    supports_native_resolution = False  # the processor's aspect-preserving resize is the policy
    nested_images = True  # the processor counts images per sample
    projector_path = "model.embed_vision"
    projector_steps = "RMSNorm without scale, then a linear projection"
    processor_class = Gemma4Processor
    video_processor_source = ("gemma4.video_processing_gemma4", "Gemma4VideoProcessor")

    @classmethod
    def build_processor(cls, **parts: Any) -> Gemma4Processor:
        parts.setdefault("feature_extractor", Gemma4AudioFeatureExtractor())  # audio: its defaults
        return super().build_processor(**parts)

    @classmethod
    def load_processor(cls, path: Path, config: Any) -> Gemma4Processor:
        # AutoProcessor would also build the video processor, which needs torchvision (see _compat).
        processor_file = path / "processor_config.json"
        settings = read_json(processor_file) if processor_file.is_file() else {}
        image_settings, source = image_processor_settings(path)
        try:
            image_processor = Gemma4ImageProcessorPil.from_dict(image_settings)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a Gemma 4 image processor configuration ({error})") from None
        return cls.build_processor(
            image_processor=image_processor,
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            chat_template=read_chat_template(path),
            **{key: settings[key] for key in ("image_seq_length",) if key in settings},
        )

    # ------------------------------------------------------------------ config facts
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def vision_width(self) -> int:
        return int(self.config.vision_config.hidden_size)

    @property
    def kernel(self) -> int:
        return int(self.config.vision_config.pooling_kernel_size)

    @property
    def patch(self) -> int:
        return int(self.config.vision_config.patch_size)

    @property
    def text_config(self):
        return self.config.get_text_config()

    def configured_image_size(self) -> tuple[int, int]:
        side = self.patch * self.kernel
        tokens = int(self.processor.image_processor.max_soft_tokens)
        rows = int(tokens**0.5)
        return rows * side, (tokens // rows) * side

    def validate_config(self) -> None:
        image_processor = self.processor.image_processor
        for name, processor_value, model_value in (
            ("patch_size", image_processor.patch_size, self.patch),
            ("pooling_kernel_size", image_processor.pooling_kernel_size, self.kernel),
        ):
            if int(processor_value) != model_value:
                raise ImageTokenMismatch(
                    f"image processor {name}={processor_value} but the vision config says {model_value}: the "
                    f"processor would count {'patches' if name == 'patch_size' else 'soft tokens'} the tower does "
                    f"not make; set {name}={model_value} in the processor's settings"
                )

    def layer_drop_problem(self) -> str | None:
        text = self.text_config
        if text.hidden_size_per_layer_input or text.num_kv_shared_layers:
            return (
                f"per-layer embeddings (hidden_size_per_layer_input={text.hidden_size_per_layer_input}) and KV "
                f"sharing (num_kv_shared_layers={text.num_kv_shared_layers}) tie every layer to the first layers' "
                "inputs and states, so the language model cannot run a stretch of layers after a drop; drop "
                "before the first layer instead (from_layer=0)"
            )
        return None

    # ------------------------------------------------------------------ geometry
    def geometry(self, height: int, width: int) -> ImageGeometry:
        image_processor = self.processor.image_processor
        side = self.patch * self.kernel
        resized = get_aspect_ratio_preserving_size(
            height=height,
            width=width,
            patch_size=self.patch,
            max_patches=int(image_processor.max_soft_tokens) * self.kernel**2,
            pooling_kernel_size=self.kernel,
        )
        rows, cols = resized[0] // side, resized[1] // side
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(int(resized[0]), int(resized[1])),
            patch_grid=(rows * self.kernel, cols * self.kernel),
            token_grid=(rows, cols),
            num_tokens=rows * cols,
        )

    def geometries_from_processed(self, input_ids, model_inputs, image_sizes=None) -> list[ImageGeometry]:
        if image_sizes is not None:
            return super().geometries_from_processed(input_ids, model_inputs, image_sizes)
        # image_position_ids [N, P, 2]: each patch's (column, row), -1 on padding patches.
        geometries = []
        for positions in model_inputs["image_position_ids"]:
            real = positions[(positions >= 0).all(-1)]
            cols, rows = (int(value) + 1 for value in real.amax(0))
            geometries.append(self.geometry(rows * self.patch, cols * self.patch))
        return geometries

    def normalise_processed(self, encoded: dict) -> dict:
        # Derived from the image token mask wherever the model needs them (image_token_types).
        encoded.pop("mm_token_type_ids", None)
        encoded.pop("num_soft_tokens_per_image", None)
        return encoded

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        convert = self.tokenizer.convert_tokens_to_ids
        begin, end = convert(self.processor.boi_token), convert(self.processor.eoi_token)
        return [begin] + [self.image_token_id] * geometry.num_tokens + [end]

    # ------------------------------------------------------------------ vision
    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            image_position_ids=inputs.model_inputs["image_position_ids"],
            output_hidden_states=True,
            return_dict=True,
        )
        embeds = torch.cat(list(out.pooler_output), dim=0)  # [T, D_text]
        counts = [g.num_tokens for g in inputs.geometries]
        return VisionTokens(
            embeds=embeds,
            raw=out.last_hidden_state,  # [T, C]: the tower's pooled soft tokens, padding stripped
            counts=counts,
            raw_counts=counts,
            geometries=list(inputs.geometries),
            feature_source=f"the tower's pooled soft tokens ({self.kernel}x{self.kernel} patches each, padding stripped)",
            tower_hidden_states=tuple(out.hidden_states),
        )

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Mean attention each real patch receives from the image's real patches, averaged over each
        pooled k x k block (the tower's own pooling groups)."""
        return block_means(
            attention_per_image(self.block_query_keys(tokens, block)), tokens.geometries, self.kernel
        )

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        return block_means(
            keys_per_image(self.block_query_keys(tokens, block)), tokens.geometries, self.kernel
        )

    def block_query_keys(self, tokens: VisionTokens, block: int | None) -> list:
        grids = [g.patch_grid for g in tokens.geometries]
        return gemma4_block_qk(
            self.vision_tower, tokens.tower_hidden_states, grids, -1 if block is None else block
        )

    # ------------------------------------------------------------------ language model
    def image_token_types(self, inputs: MultimodalInputs) -> dict[str, torch.Tensor]:
        # 1 marks an image token: the model's bidirectional vision blocks are built from these.
        return {"mm_token_type_ids": inputs.image_token_mask.long()}

    def language_model_kwargs(self, inputs: MultimodalInputs) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.image_token_types(inputs))
        if self.text_config.hidden_size_per_layer_input:
            # The token-identity part of the per-layer embeddings, as the model computes it from the
            # ids (image positions as padding); per token, [layers, d, B, S] so pruning gathers it.
            ids = inputs.input_ids.masked_fill(inputs.image_token_mask, int(self.text_config.pad_token_id))
            per_layer = self.language_module.get_per_layer_inputs(ids, None)  # [B, S, layers, d]
            kwargs["per_layer_tokens"] = per_layer.permute(2, 3, 0, 1)
        return kwargs

    def run_language_model(
        self,
        inputs: MultimodalInputs,
        inputs_embeds: torch.Tensor,
        model_kwargs: dict[str, Any],
        **flags: Any,
    ) -> LayerOutput:
        kwargs = dict(model_kwargs)
        if self.first_language_layer():  # a stretch of layers after a drop
            self.refuse_layer_drops()
        per_layer = kwargs.pop("per_layer_tokens", None)
        if per_layer is not None:
            kwargs["per_layer_inputs"] = per_layer.permute(2, 3, 0, 1)  # back to [B, S, layers, d]
        elif self.text_config.hidden_size_per_layer_input and bool(inputs.image_token_mask.any()):
            raise ImageTokenMismatch(
                f"{self.family}: no per-layer embeddings were given; from inputs_embeds alone the model would "
                f"look the ids up by matching embedding rows, which image rows never match"
            )
        # (A decoded text token needs none: its id is recovered from its own embedding row, exactly.)
        return super().run_language_model(inputs, inputs_embeds, kwargs, **flags)

    def describe_vision(self) -> dict[str, str]:
        vision, image_processor = self.config.vision_config, self.processor.image_processor
        text = self.text_config
        extras = [f"bidirectional image attention: {text.use_bidirectional_attention or 'none'}"]
        if text.hidden_size_per_layer_input:
            extras.append(f"per-layer embeddings {text.hidden_size_per_layer_input}")
        if text.num_kv_shared_layers:
            extras.append(f"KV shared by the last {text.num_kv_shared_layers} layers")
        return {
            "vision tower": f"Gemma 4 vision ({vision.num_hidden_layers} layers, 2-D rotary, learned x/y positions)",
            "patch size": str(self.patch),
            "pooling / merge": f"avg pool {self.kernel}x{self.kernel} by position, RMSNorm + projection; "
            + "; ".join(extras),
            "CLS policy": "no CLS",
            "feature layer(s)": "last layer, pooled inside the tower",
            "image size": f"aspect kept, up to {image_processor.max_soft_tokens} tokens "
            f"(sides in multiples of {self.patch * self.kernel})",
        }


def gemma4_tokenizer() -> PreTrainedTokenizerFast:
    """The offline tokenizer with Gemma 4's image and audio tokens (named as released)."""
    return build_tokenizer(
        # <|video|> too: the processor adds it when missing, which would grow the vocabulary.
        [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<|image>",
            "<image|>",
            "<|image|>",
            "<|audio>",
            "<audio|>",
            "<|audio|>",
        ]
        + ["<|video|>"],
        {
            "boi_token": "<|image>",
            "eoi_token": "<image|>",
            "image_token": "<|image|>",
            "boa_token": "<|audio>",
            "eoa_token": "<audio|>",
            "audio_token": "<|audio|>",
        },
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


@preset("tiny-gemma4")
def tiny_gemma4(
    text_layers: int = LAYERS, per_layer: int = 0, kv_shared: int = 0, **config_overrides: Any
) -> Gemma4Adapter:
    """Gemma 4 shape: its own vision tower at patch 8, 2x2 pooling, up to 70 soft tokens an image
    (the smallest budget the processor takes), aspect ratio kept; image tokens attend both ways in
    the sliding layers. `per_layer` > 0 adds per-layer embeddings of that width and `kv_shared` > 0
    KV sharing in the last layers, as the E2B and E4B checkpoints have."""
    tokenizer = gemma4_tokenizer()
    text = gemma_text(len(tokenizer), tokenizer, text_layers)
    text.update(
        layer_types=["sliding_attention", "full_attention"] * (text_layers // 2)
        + ["full_attention"] * (text_layers % 2),
        global_head_dim=WIDTH // HEADS,
        use_bidirectional_attention="vision",
        hidden_size_per_layer_input=per_layer,
        vocab_size_per_layer_input=len(tokenizer),
        num_kv_shared_layers=kv_shared,
    )
    convert = tokenizer.convert_tokens_to_ids
    config = Gemma4Config(
        vision_config=tower_settings(
            num_key_value_heads=HEADS // 2,
            head_dim=(WIDTH + 32) // HEADS,
            patch_size=8,
            pooling_kernel_size=2,
            position_embedding_size=256,
        ),
        text_config=text,
        audio_config=None,
        image_token_id=convert("<|image|>"),
        boi_token_id=convert("<|image>"),
        eoi_token_id=convert("<image|>"),
        video_token_id=convert("<|video|>"),
        audio_token_id=convert("<|audio|>"),
        boa_token_id=convert("<|audio>"),
        eoa_token_index=convert("<audio|>"),
        **config_overrides,
    )
    model = Gemma4Adapter.model_class(config).eval()
    randomise_zero_init(model)
    image_processor = Gemma4ImageProcessorPil(patch_size=8, pooling_kernel_size=2, max_soft_tokens=70)
    processor = Gemma4Adapter.build_processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=70
    )
    return Gemma4Adapter(model, processor)
