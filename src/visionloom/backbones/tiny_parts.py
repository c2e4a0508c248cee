"""What the tiny presets are made of: offline tokenizers, small towers and text configs.

Each family's preset lives in its own module (`tiny_<family>`, registered with `@preset`); this
module holds the parts several families share. Tokenizers are byte-level BPEs trained here (by the
`tokenizers` library) on a small built-in corpus, carrying each family's real special tokens.
Nothing is downloaded.

Random initialisation leaves some weights at exactly zero (Gemma3's and T5Gemma2's
`mm_input_projection_weight`, T5Gemma2's end-of-image embedding, InternViT's class token and
position embeddings); an equality test on all-zero image embeddings proves nothing, so those are
drawn at random (`randomise_zero_init`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    Gemma3Processor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

WIDTH, LAYERS, HEADS = 64, 2, 4

# Every preset by name, in the order their modules are imported; filled by `preset`.
PRESETS: dict[str, Callable[..., Any]] = {}


def preset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function that builds a family's tiny preset under `name` (e.g. tiny-llava)."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in PRESETS:
            raise ValueError(f"two presets named {name!r}")
        PRESETS[name] = build
        return build

    return register


# Words the synthetic data sets speak (pedestrians, scenes, questions), so the tiny tokenizer
# splits them into few pieces.
CORPUS = """
a an the this that these those is are was with without and or of in on at to from near next left right
above below behind front between top bottom middle center small large big tiny medium short long tall
man woman person people boy girl he she his her they their wearing wears carrying holds walking standing
red orange yellow green blue purple pink brown black white gray grey dark light striped plain checked
shirt t-shirt jacket coat sweater hoodie dress skirt pants trousers jeans shorts shoes sneakers boots
sandals hat cap bag backpack handbag umbrella glasses scarf belt hair long-haired short-haired bald
circle square triangle star ring cross diamond object shape one two three four five how many what which
color where is there yes no image picture describe question answer user assistant photo of scene
"""


def build_tokenizer(
    special_tokens: list[str], named: dict[str, str], **roles: str
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS; special tokens get the first ids, in the order given."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.strip().splitlines() for _ in range(4)]
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, extra_special_tokens=named, **roles)


def llama_text(vocab_size: int, layers: int = LAYERS, **overrides: Any) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        **overrides,
    )


def tower_settings(**settings: Any) -> dict[str, Any]:
    """A small vision tower's config (three blocks, its own width), with `settings` for the rest."""
    return {
        "hidden_size": WIDTH + 32,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": 3,
        "num_attention_heads": HEADS,
        **settings,
    }


def clip_tower(image_size: int, patch_size: int = 14) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=WIDTH,
    )


def siglip_tower(image_size: int, patch_size: int = 14) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=WIDTH + 32,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        image_size=image_size,
        patch_size=patch_size,
    )


def llava_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        {"image_token": "<image>"},
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def qwen_tokenizer() -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    """The offline tokenizer with Qwen2.5-VL's special tokens, and their ids."""
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tokenizer = build_tokenizer(
        specials,
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    return tokenizer, {token: tokenizer.convert_tokens_to_ids(token) for token in specials}


def narrow_text(vocab_size: int, layers: int, **extra: Any) -> dict[str, Any]:
    """A narrow decoder's text config (Qwen2-style: two key/value heads), with `extra` settings."""
    return {
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": 1024,
        **extra,
    }


def gemma_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def gemma_text(vocab_size: int, tokenizer, layers: int = LAYERS) -> dict[str, Any]:
    return {
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 1,
        "head_dim": WIDTH // HEADS,
        "vocab_size": vocab_size,
        "sliding_window": 64,
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def gemma_processor(tokenizer, image_size: int, tokens: int) -> Gemma3Processor:
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens)


# Gemma 3 / T5Gemma 2's image projection and end-of-image embedding; InternViT's class token and
# position embeddings; Gemma 4's position table (ones).
ZERO_INITIALISED = (
    "mm_input_projection_weight",
    "eoi_embedding",
    "embeddings.cls_token",
    "embeddings.position_embeddings",
    "position_embedding_table",  # Gemma 4's tower: initialised to ones, every position alike
)


def randomise_zero_init(model: torch.nn.Module) -> None:
    """Draw the weights that initialisation leaves at zero, so image embeddings differ per image."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(ZERO_INITIALISED):
                parameter.normal_(0.0, parameter.shape[0] ** -0.5)
