"""Mistral3 (`Mistral3ForConditionalGeneration`, Mistral Small 3.x): Pixtral patches, a patch merger,
and text tokens between the rows of image tokens.

The Pixtral image processor shrinks an image until its longer side fits `longest_edge`, then sizes
it up to whole merged patches (patch x `spatial_merge_size`, rounding up); the tower runs on that
size (several images of different sizes in one packed pass, block-diagonal attention, 2-D rotary
positions). The projector normalises the patches, merges each 2x2 block by a learned linear layer
(`patch_merger`, an unfold in raster order) and maps them through a two-layer MLP.

The processor writes, per image, one `[IMG]` per merged token, an `[IMG_BREAK]` after each row and
`[IMG_END]` in place of the last break. `[IMG_BREAK]` and `[IMG_END]` are text tokens with their own
embeddings, not image features: an image's placeholders come in one run per row with a text token
between (`placeholder_runs`), the token grid is rows x cols in that order, and pruning drops
`[IMG]` tokens only, never the breaks.

A trap closed here: `PixtralProcessor`'s `spatial_merge_size` defaults to 1, so a processor built
without the checkpoint's value writes four times the placeholders; processor and model settings are
checked against each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, Mistral3Config, Mistral3ForConditionalGeneration
from transformers.models.pixtral.image_processing_pil_pixtral import (
    PixtralImageProcessorPil,
    get_resize_output_image_size,
)

from visionloom.backbones._compat import pixtral_processor_class
from visionloom.backbones.base import ImageTokenAdapter, nearest_multiples, read_chat_template, read_json
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny_parts import LAYERS, build_tokenizer, llama_text, preset, tower_settings
from visionloom.backbones.tower_attention import (
    attention_per_image,
    block_index,
    block_means,
    keys_per_image,
    require_hidden_states,
)
from visionloom.backbones.types import ImageGeometry, MultimodalInputs, VisionTokens

# What processor_config.json may set (the processor's own defaults otherwise: spatial merge 1!).
PROCESSOR_SETTINGS = (
    "patch_size",
    "spatial_merge_size",
    "image_token",
    "image_break_token",
    "image_end_token",
)


def pixtral_block_qk(
    tower: torch.nn.Module,
    hidden_states: tuple[torch.Tensor, ...] | None,
    patch_grids: list[tuple[int, int]],
    block: int,
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Pixtral block `block`: per image, queries and keys [heads, patches, d] with the 2-D rotary
    angles applied as the tower applies them (positions restart at each image), and the scale. The
    images are packed in one sequence; the tower's attention is block-diagonal, one block per image."""
    from transformers.models.pixtral.modeling_pixtral import apply_rotary_pos_emb

    layers = tower.transformer.layers
    index = block_index(block, len(layers))
    layer = layers[index]
    attention = layer.attention
    hidden = require_hidden_states(hidden_states)[index]  # [1, patches, C], every image packed
    normed = layer.attention_norm(hidden)
    length = hidden.shape[1]

    def split_heads(projected: torch.Tensor) -> torch.Tensor:  # [1, P, C] -> [1, heads, P, d]
        return projected.view(1, length, attention.num_heads, attention.head_dim).transpose(1, 2)

    positions = []
    for rows, cols in patch_grids:  # the tower's own (row, column) position of each patch
        row_ids, col_ids = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions.append(torch.stack([row_ids.flatten(), col_ids.flatten()], dim=-1))
    cos, sin = tower.patch_positional_embedding(hidden, torch.cat(positions).to(hidden.device))
    queries, keys = apply_rotary_pos_emb(
        split_heads(attention.q_proj(normed)),
        split_heads(attention.k_proj(normed)),
        cos,
        sin,
        unsqueeze_dim=0,
    )
    sizes = [rows * cols for rows, cols in patch_grids]
    return [
        (q, k, attention.scaling)
        for q, k in zip(queries[0].split(sizes, dim=1), keys[0].split(sizes, dim=1), strict=True)
    ]


class Mistral3Adapter(ImageTokenAdapter):
    family = "mistral3"
    model_types = ("mistral3",)
    model_class = Mistral3ForConditionalGeneration
    marker = "[IMG]"
    projector_steps = "RMSNorm, 2x2 patch merger, MLP"

    @classmethod
    def load_processor(cls, path: Path, config: Any) -> Any:
        # AutoProcessor cannot import PixtralProcessor without torchvision (see _compat).
        processor_file = path / "processor_config.json"
        settings = read_json(processor_file) if processor_file.is_file() else {}
        return pixtral_processor_class()(
            image_processor=PixtralImageProcessorPil.from_pretrained(str(path)),
            tokenizer=AutoTokenizer.from_pretrained(str(path)),
            chat_template=read_chat_template(path),
            **{key: settings[key] for key in PROCESSOR_SETTINGS if key in settings},
        )

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_index)

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def vision_width(self) -> int:
        layers = self.config.vision_feature_layer
        count = 1 if isinstance(layers, int) else len(layers)
        return int(self.config.vision_config.hidden_size) * count

    @property
    def patch(self) -> int:
        return int(self.config.vision_config.patch_size)

    @property
    def merge(self) -> int:
        return int(self.config.spatial_merge_size)

    def configured_image_size(self) -> tuple[int, int]:
        edge = int(self.processor.image_processor.size["longest_edge"])
        return edge, edge

    def validate_config(self) -> None:
        for name, processor_value, model_value in (
            ("patch_size", self.processor.patch_size, self.patch),
            ("spatial_merge_size", self.processor.spatial_merge_size, self.merge),
        ):
            if int(processor_value) != model_value:
                raise ImageTokenMismatch(
                    f"processor {name}={processor_value} but the model's is {model_value} (config.json): the "
                    f"processor would write a placeholder per {self.processor.patch_size * self.processor.spatial_merge_size}-px "
                    f"block where the model makes one per {self.patch * self.merge}-px block; set {name}={model_value} "
                    f"in processor_config.json"
                )

    def geometry(self, height: int, width: int) -> ImageGeometry:
        step = self.patch * self.merge
        if self.native_resolution:
            if height % step or width % step or max(height, width) > self.configured_image_size()[0]:
                raise ImageTokenMismatch(
                    f"{height}x{width} does not fit: native resolution needs multiples of {step} "
                    f"(patch {self.patch} x merge {self.merge}) with the longer side at most {self.configured_image_size()[0]}; "
                    f"nearest heights {nearest_multiples(height, step)}, nearest widths {nearest_multiples(width, step)}"
                )
            resized = (height, width)
        else:
            edge = self.configured_image_size()[0]
            # The image processor's own sizing (a shape is all it reads).
            resized = get_resize_output_image_size(
                np.empty((height, width, 3), dtype=np.uint8), size=(edge, edge), patch_size=(step, step)
            )
        rows, cols = resized[0] // step, resized[1] // step
        return ImageGeometry(
            image_size=(height, width),
            pixel_size=(int(resized[0]), int(resized[1])),
            patch_grid=(rows * self.merge, cols * self.merge),
            token_grid=(rows, cols),
            num_tokens=rows * cols,
        )

    def placeholder_runs(self, geometry: ImageGeometry) -> list[int]:
        rows, cols = geometry.token_grid
        return [cols] * rows  # an [IMG_BREAK] after each row, [IMG_END] after the last

    def image_span_ids(self, geometry: ImageGeometry) -> list[int]:
        rows, cols = geometry.token_grid
        brk = self.tokenizer.convert_tokens_to_ids(self.processor.image_break_token)
        end = self.tokenizer.convert_tokens_to_ids(self.processor.image_end_token)
        ids = [token for _ in range(rows) for token in [self.image_token_id] * cols + [brk]]
        return ids[:-1] + [end]

    def _process(self, texts, images, geometries) -> dict:
        native = {"do_resize": False} if self.native_resolution else {}
        return super()._process(texts, images, geometries, **native)

    def geometries_from_processed(self, input_ids, model_inputs, image_sizes=None) -> list[ImageGeometry]:
        # The processor's image_sizes are the resized sizes, which the resizing keeps as they are.
        sizes = model_inputs["image_sizes"] if image_sizes is None else image_sizes
        return [self.geometry(int(height), int(width)) for height, width in sizes]

    def image_sizes(self, geometries) -> torch.Tensor:
        """[N, 2]: the pixel size each image enters the tower at, as the processor's `image_sizes`."""
        return torch.tensor([g.pixel_size for g in geometries])

    def encode_images(self, inputs: MultimodalInputs) -> VisionTokens:
        out = self.model.model.get_image_features(
            pixel_values=inputs.model_inputs["pixel_values"],
            image_sizes=inputs.model_inputs["image_sizes"],
            vision_feature_layer=self.config.vision_feature_layer,
            output_hidden_states=True,
            return_dict=True,
        )
        layers = self.config.vision_feature_layer
        selected = (
            out.hidden_states[layers]
            if isinstance(layers, int)
            else torch.cat([out.hidden_states[layer] for layer in layers], dim=-1)
        )  # [1, patches of every image, C], what the projector takes
        embeds = torch.cat(list(out.pooler_output), dim=0)  # [T, D_text]
        counts = [g.num_tokens for g in inputs.geometries]
        return VisionTokens(
            embeds=embeds,
            raw=selected.squeeze(0),
            counts=counts,
            raw_counts=[count * self.merge**2 for count in counts],
            geometries=list(inputs.geometries),
            feature_source=f"hidden_states[{layers}], every patch (no CLS), {self.merge}x{self.merge} merged by the projector",
            tower_hidden_states=tuple(out.hidden_states),
        )

    def project(self, raw: torch.Tensor, geometries) -> torch.Tensor:
        """raw [patches, C] of the images -> [T, D]: norm, patch merger (needs each image's size), MLP."""
        return self.projector(raw, self.image_sizes(geometries))

    def tower_attention_scores(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        """Mean attention each patch receives from its image's patches (no class token), averaged over
        each merged 2x2 block."""
        return block_means(
            attention_per_image(self.block_query_keys(tokens, block)), tokens.geometries, self.merge
        )

    def tower_keys(self, tokens: VisionTokens, block: int | None = None) -> list[torch.Tensor]:
        return block_means(
            keys_per_image(self.block_query_keys(tokens, block)), tokens.geometries, self.merge
        )

    def block_query_keys(self, tokens: VisionTokens, block: int | None) -> list:
        grids = [g.patch_grid for g in tokens.geometries]
        return pixtral_block_qk(
            self.vision_tower, tokens.tower_hidden_states, grids, -1 if block is None else block
        )

    def describe_vision(self) -> dict[str, Any]:
        edge = self.configured_image_size()[0]
        return {
            "vision tower": f"Pixtral ({self.config.vision_config.num_hidden_layers} layers, 2-D rotary)",
            "patch size": str(self.patch),
            "pooling / merge": f"{self.merge}x{self.merge} patch merger (multi_modal_projector.patch_merger); "
            "[IMG_BREAK] after each row, [IMG_END] last",
            "CLS policy": "no CLS",
            "feature layer(s)": f"hidden_states[{self.config.vision_feature_layer}]",
            "image size": f"longest side up to {edge}, multiples of {self.patch * self.merge}"
            + (" native" if self.native_resolution else " (processor resizes)"),
        }


@preset("tiny-mistral3")
def tiny_mistral3(text_layers: int = LAYERS, **config_overrides: Any) -> Mistral3Adapter:
    """Mistral3 shape: Pixtral at patch 14, 2x2 patch merger (28-px tokens), longer side up to
    168 px (6x6 tokens), [IMG_BREAK] after each row; a Mistral language model."""
    tokenizer = build_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
        {"image_token": "[IMG]"},
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = Mistral3Config(
        vision_config=tower_settings(image_size=168, patch_size=14),
        text_config=llama_text(
            len(tokenizer), text_layers, model_type="mistral", pad_token_id=tokenizer.pad_token_id
        ).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        **config_overrides,
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": 168}, patch_size={"height": 14, "width": 14}
    )
    processor = pixtral_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, spatial_merge_size=2
    )
    return Mistral3Adapter(Mistral3Adapter.model_class(config).eval(), processor)
