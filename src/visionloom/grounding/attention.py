"""What the frozen VLM says about a referring expression: its attention to the image and its hidden states.

For each (image, expression) the prompt is built through the image-token layer, so the image
tokens, their grid and the attention maps on that grid are the family's own (fixed grid for
LLaVA, `image_grid_thw` and the merge size for Qwen2.5-VL, newline tokens left out for
LLaVA-NeXT). The expression's tokens are marked in `mask_ids` (0 on them, -1 everywhere else,
image tokens included, as in F-LMM), and the attention from those tokens to the image grid is
merged over the tokens (mean or max), giving layers x heads channels on the grid.

T5Gemma 2 (encoder-decoder): the image tokens are encoder tokens and the prompt with the
expression is the encoder's input, so the attention that carries expression -> image is the
encoder's own (bidirectional) self-attention, which `adapter.forward` returns. The decoder holds no
image positions and no expression: its cross-attention goes from decoder tokens to the encoder's
outputs, so it is not the expression's attention and is not used.

Images are padded to a square first (bottom and right, with the mean colour), so that every
family's processor sees the whole image without cropping; `Padding` records what to cut off
when the mask comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageStat

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import DEFAULT_PROMPT


@dataclass(frozen=True)
class Padding:
    """How an image of `size` (H, W) sits in the padded square it was given as."""

    size: tuple[int, int]
    side: int

    def crop(self, square: torch.Tensor) -> torch.Tensor:
        """[..., S, S] on the padded square, any S -> [..., H, W] on the image."""
        height, width = self.size
        scale = square.shape[-1] / self.side
        cropped = square[..., : max(1, round(height * scale)), : max(1, round(width * scale))]
        flat = cropped.reshape(-1, 1, *cropped.shape[-2:])
        resized = torch.nn.functional.interpolate(
            flat.float(), size=(height, width), mode="bilinear", align_corners=False
        )
        return resized.reshape(*square.shape[:-2], height, width)


def pad_to_square(image: Image.Image, resize_to: int | None = None) -> tuple[Image.Image, Padding]:
    """The image padded bottom/right to a square (and resized to `resize_to` a side, when given)."""
    width, height = image.size
    side = max(width, height)
    square = image
    if width != height:
        mean = tuple(round(c) for c in ImageStat.Stat(image).mean)
        square = Image.new("RGB", (side, side), mean)
        square.paste(image, (0, 0))
    if resize_to is not None and resize_to != side:
        # Masks come back on the square whatever its pixel size: the padding's frame is unchanged.
        square = square.resize((resize_to, resize_to), Image.Resampling.BICUBIC)
    return square, Padding((height, width), side)


@dataclass
class ExpressionFeatures:
    """What the head, the text projection and SAM need for one sample; nothing here needs the VLM."""

    attention: torch.Tensor  # [layers*heads, h, w] merged over the expression's tokens
    hidden: torch.Tensor  # [text_layers, tokens, D] the expression's hidden states, last layers
    padding: Padding


def expression_token_count(
    adapter: ImageTokenAdapter, prompt: str, expression: str, sample: str
) -> tuple[int, int]:
    """(tokens of the expression, tokens after it) in the prompt, from the tokenizer alone.

    The expression comes after the image, so its tokens are found counting from the end of the
    sequence, where the image's placeholder expansion cannot shift them.
    """
    if not expression.strip():
        raise ValueError(f"{sample}: the expression {expression!r} has no tokens")
    tokenizer = adapter.tokenizer
    before, after = prompt.split("{expression}")
    head = before.split("<image>")[-1]
    # A space before the expression belongs to its first token in byte-level BPE ("Ġthe").
    space, head = head[len(head.rstrip()) :], head.rstrip()
    ids_before = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids_with = tokenizer(head + space + expression, add_special_tokens=False)["input_ids"]
    ids_after = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if ids_with[: len(ids_before)] != ids_before:
        raise ValueError(f"{sample}: the tokenizer merges the prompt into the expression {expression!r}")
    count = len(ids_with) - len(ids_before)
    if count == 0:
        raise ValueError(f"{sample}: the expression {expression!r} has no tokens")
    return count, len(ids_after)


def merge_attention(
    image_attention: torch.Tensor, mask_ids: torch.Tensor, merge: str, sample: str
) -> torch.Tensor:
    """[L, H, S, h, w] and mask_ids [S] (k on expression k's tokens, -1 elsewhere) -> [K, L*H, h, w]."""
    layers, heads, _, h, w = image_attention.shape
    merged = []
    for mask_id in range(int(mask_ids.max()) + 1):
        rows = (mask_ids == mask_id).nonzero().flatten()
        if rows.numel() == 0:
            raise ValueError(f"{sample}: expression {mask_id} has no tokens in the sequence")
        selected = image_attention[:, :, rows]  # [L, H, n, h, w]
        pooled = selected.mean(2) if merge == "mean" else selected.amax(2)
        merged.append(pooled.reshape(layers * heads, h, w))
    return torch.stack(merged)


@torch.no_grad()
def collect(
    adapter: ImageTokenAdapter,
    images: list[Image.Image],
    expressions: list[str],
    *,
    names: list[str] | None = None,
    prompt: str = DEFAULT_PROMPT,
    merge: str = "mean",
    text_layers: int = 2,
    image_side: int | None = None,
) -> list[ExpressionFeatures]:
    """One frozen forward pass for a batch of (image, expression) pairs; `image_side`: resize each
    padded square to that side first (see GroundingConfig.image_side)."""
    if merge not in ("mean", "max"):
        raise ValueError(f"merge {merge!r}: use 'mean' or 'max'")
    names = names or [f"sample {i}" for i in range(len(images))]
    squares, paddings = zip(
        *(pad_to_square(image.convert("RGB"), image_side) for image in images), strict=True
    )
    texts = [prompt.format(expression=expression) for expression in expressions]
    inputs = adapter.build_inputs(list(squares), texts).to(adapter.model.device)
    output = adapter.forward(inputs, output_attentions=True, output_hidden_states=True)
    hidden_states = torch.stack(output.hidden_states[-text_layers:])  # [K, B, S, D]

    features = []
    for row, (expression, name) in enumerate(zip(expressions, names, strict=True)):
        count, after = expression_token_count(adapter, prompt, expression, name)
        real = inputs.attention_mask[row].nonzero().flatten()  # positions of real tokens
        positions = real[len(real) - after - count : len(real) - after]
        mask_ids = torch.full_like(inputs.input_ids[row], -1)  # [S]
        mask_ids[positions] = 0
        if inputs.image_token_mask[row, positions].any():
            raise ValueError(f"{name}: the expression's tokens overlap the image tokens")
        attention = merge_attention(output.image_attentions[row], mask_ids, merge, name)[0]  # [L*H, h, w]
        features.append(
            ExpressionFeatures(
                attention=attention.float().cpu(),
                hidden=hidden_states[:, row, positions].float().cpu(),
                padding=paddings[row],
            )
        )
    return features
