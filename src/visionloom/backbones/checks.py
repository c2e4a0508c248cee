"""Checks that run before the language model does, with errors that name the cause and the fix.

`transformers` checks `n_tokens * width == features.numel()` and prints only the two counts, so a
feature tensor at the wrong width can pass silently or fail with "tokens: 14, features 14"
(a 1152-wide feature tensor where the text is 640 wide). Here token counts and widths are compared separately, per image, and each known
way of getting them wrong has its own message.
"""

from __future__ import annotations

import torch

from visionloom.backbones.types import MultimodalInputs, VisionTokens


class ImageTokenMismatch(ValueError):
    """Image placeholders in the ids and image features do not line up.

    A `ValueError`, raised before the language model runs, whose message says what was expected and
    what was got: features at the vision width (the projector skipped), ids without image tokens
    (inputs built without the images), one token too many per image (the CLS token kept), or
    features from another resolution than the placeholders.
    """


def check_width(embeds: torch.Tensor, *, text_width: int, vision_width: int, projector: str) -> None:
    """The features must be at the language model's width; at the vision width the projector was skipped."""
    if embeds.ndim != 2:
        raise ImageTokenMismatch(
            f"image features must be a [tokens, width] matrix, got shape {tuple(embeds.shape)}"
        )
    width = embeds.shape[-1]
    if width == text_width:
        return
    if width == vision_width:
        raise ImageTokenMismatch(
            f"image features have width {width}, the vision tower's width, but the language model takes "
            f"{text_width}: the projection step ({projector}) was skipped. The token count may well agree "
            f"({embeds.shape[0]} features); the width does not. Project the features (adapter.encode_images "
            f"does) before inserting them."
        )
    raise ImageTokenMismatch(
        f"image features have width {width}; the language model takes {text_width} "
        f"(vision width {vision_width}). Features must come from {projector}."
    )


def check_counts(inputs: MultimodalInputs, tokens: VisionTokens, *, marker: str, image_token: str) -> None:
    """Placeholders per sample and per image must equal the features per image."""
    if sum(tokens.counts) != tokens.embeds.shape[0]:
        raise ImageTokenMismatch(
            f"VisionTokens says {sum(tokens.counts)} tokens ({tokens.counts}) but holds "
            f"{tokens.embeds.shape[0]} embeddings"
        )
    placeholders = inputs.image_token_mask.sum(dim=1).tolist()
    total_placeholders = sum(placeholders)
    if total_placeholders == 0 and tokens.counts:
        raise ImageTokenMismatch(
            f"input_ids contain no image tokens ({image_token}) but {len(tokens.counts)} image(s) gave "
            f"{sum(tokens.counts)} features (tokens: 0): the ids were built without the images, e.g. the "
            f"text tokenized on its own. Build text and images together with adapter.build_inputs, or "
            f"put the image span into existing ids with adapter.splice where the text has {marker}."
        )
    if len(tokens.counts) != inputs.num_images:
        raise ImageTokenMismatch(
            f"the inputs were built for {inputs.num_images} image(s) but {len(tokens.counts)} were encoded"
        )
    for index, ((sample, positions), count, geometry) in enumerate(
        zip(inputs.placeholders(), tokens.counts, tokens.geometries, strict=True)
    ):
        span = len(positions)
        if span == count:
            continue
        expected = inputs.geometries[index]
        if count == span + 1:
            cause = (
                "one token too many: the CLS token was kept. The model drops it "
                "(vision_feature_select_strategy='default'); select features with the model's own strategy"
            )
        elif count == span - 1:
            cause = (
                "one token too few: the CLS token was dropped from a tower whose features keep it "
                "(vision_feature_select_strategy='full'), or the processor expects an extra token"
            )
        elif geometry.image_size != expected.image_size:
            cause = (
                f"the features come from a {geometry.image_size[0]}x{geometry.image_size[1]} image "
                f"({count} tokens, grid {geometry.token_grid[0]}x{geometry.token_grid[1]}) but the ids were "
                f"expanded for {expected.image_size[0]}x{expected.image_size[1]} ({span} tokens, grid "
                f"{expected.token_grid[0]}x{expected.token_grid[1]}): build ids and pixels from the same "
                f"resolution"
            )
        else:
            cause = "the ids were expanded for a different resolution or token budget than the features"
        raise ImageTokenMismatch(
            f"image {index} (sample {sample}): {span} placeholders vs {count} features; {cause}."
        )


def check_attention_weights(attentions: object, *, batch: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    """Attention outputs must be real weight tensors [B, heads, S, S], one per layer.

    `sdpa` and flash kernels return None, and some vision towers hand back module outputs where
    weights are expected; both would otherwise surface far away as a shape error.
    """
    if attentions is None or len(attentions) == 0:
        raise ImageTokenMismatch(
            "the model returned no attention weights: the attention implementation does not compute them "
            "(sdpa/flash). Use adapter.forward(..., output_attentions=True), which switches to 'eager'."
        )
    for layer, weights in enumerate(attentions):
        if weights is None:
            raise ImageTokenMismatch(
                f"layer {layer} returned no attention weights (None): its attention implementation does not "
                f"compute them; use 'eager'"
            )
        if not isinstance(weights, torch.Tensor):
            raise ImageTokenMismatch(
                f"layer {layer} returned a {type(weights).__name__} where attention weights were expected; "
                f"the model's output capture recorded a module output, not the weights"
            )
        if weights.ndim != 4 or weights.shape[0] != batch or weights.shape[-1] != seq_len:
            raise ImageTokenMismatch(
                f"layer {layer} attention has shape {tuple(weights.shape)}; expected "
                f"[{batch}, heads, {seq_len}, {seq_len}]"
            )
    return tuple(attentions)
