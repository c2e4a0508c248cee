"""Tiny random-weight backbones for the retrieval models, with offline tokenizers.

Real `transformers` config classes at a size that trains on two CPU cores in minutes. A config's
`pretrained: DIR` replaces all of this with a local checkpoint (see `retrieval/build.py`).

The tokenizers are byte-level BPEs trained here by the `tokenizers` library on the words the
synthetic captions use (plus the tiny VLM corpus), carrying each family's real special tokens;
unknown words still tokenize, byte by byte.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    T5Config,
)

from visionloom.backbones.tiny_parts import CORPUS
from visionloom.data.synth_pedes import vocabulary

WIDTH = 64


def _train_bpe(special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = " ".join(vocabulary()) + "\n" + CORPUS
    tokenizer.train_from_iterator([line for line in words.splitlines() for _ in range(8)], trainer)
    return tokenizer


def clip_tokenizer() -> PreTrainedTokenizerFast:
    """CLIP's specials: <|startoftext|> text <|endoftext|>, padded with <|endoftext|> as HF's CLIP is."""
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    backend = _train_bpe([bos, eos, "<mask>"])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        unk_token=eos,
        mask_token="<mask>",
    )


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """T5's specials at T5's ids: <pad>=0, </s>=1, <unk>=2; `<extra_id_0>` is the mask token."""
    backend = _train_bpe(["<pad>", "</s>", "<unk>", "<extra_id_0>"])
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", backend.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<extra_id_0>",
    )


def clip_text_config(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> CLIPTextConfig:
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextConfig(**{**settings, **overrides})


def clip_vision_config(**overrides: Any) -> CLIPVisionConfig:
    settings = dict(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=16,
        projection_dim=WIDTH,
    )
    return CLIPVisionConfig(**{**settings, **overrides})


def siglip_vision_config(**overrides: Any) -> SiglipVisionConfig:
    settings = dict(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=16,
    )
    return SiglipVisionConfig(**{**settings, **overrides})


def t5_config(tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> T5Config:
    settings = dict(
        vocab_size=len(tokenizer),
        d_model=WIDTH,
        d_kv=16,
        d_ff=2 * WIDTH,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5Config(**{**settings, **overrides})
