"""Tiny random-weight presets of each supported family, with offline tokenizers and real processors.

Each preset is the real `transformers` model class at a size that runs on two CPU cores, with its
real processor class and a byte-level BPE tokenizer trained here (by the `tokenizers` library) on
a small built-in corpus, carrying the family's real special tokens. Nothing is downloaded.

Random initialisation leaves some weights at exactly zero (Gemma3's and T5Gemma2's
`mm_input_projection_weight`, T5Gemma2's end-of-image embedding, InternViT's class token and
position embeddings); an equality test on all-zero image embeddings proves nothing, so those are
drawn at random here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    DeepseekVLConfig,
    DeepseekVLProcessor,
    Gemma3Config,
    Gemma3Processor,
    Gemma4Config,
    InternVLConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaProcessor,
    Mistral3Config,
    PaliGemmaConfig,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    Qwen3VLConfig,
    SiglipVisionConfig,
    SmolVLMConfig,
    T5Gemma2Config,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.deepseek_vl.image_processing_pil_deepseek_vl import DeepseekVLImageProcessorPil
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

from visionloom.backbones._compat import pixtral_processor_class
from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.deepseek_vl import DeepseekVLAdapter
from visionloom.backbones.gemma3 import Gemma3Adapter
from visionloom.backbones.gemma4 import Gemma4Adapter
from visionloom.backbones.internvl import InternVLAdapter
from visionloom.backbones.llava import LlavaAdapter
from visionloom.backbones.llava_next import LlavaNextAdapter
from visionloom.backbones.llava_onevision import LlavaOnevisionAdapter
from visionloom.backbones.mistral3 import Mistral3Adapter
from visionloom.backbones.paligemma import PaliGemmaAdapter
from visionloom.backbones.qwen2_5_vl import Qwen2_5_VLAdapter, build_qwen_processor
from visionloom.backbones.qwen2_vl import Qwen2VLAdapter
from visionloom.backbones.qwen3_vl import Qwen3VLAdapter
from visionloom.backbones.smolvlm import SmolVLMAdapter
from visionloom.backbones.t5gemma2 import T5Gemma2Adapter

WIDTH, LAYERS, HEADS = 64, 2, 4

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


def _llama(vocab_size: int, layers: int = LAYERS, **overrides: Any) -> LlamaConfig:
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


def _tower(**settings: Any) -> dict[str, Any]:
    """A small vision tower's config (three blocks, its own width), with `settings` for the rest."""
    return {
        "hidden_size": WIDTH + 32,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": 3,
        "num_attention_heads": HEADS,
        **settings,
    }


def _clip(image_size: int, patch_size: int = 14) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=WIDTH,
    )


def _siglip(image_size: int, patch_size: int = 14) -> SiglipVisionConfig:
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


def tiny_llava(*, vision: str = "clip", text_layers: int = LAYERS, **config_overrides: Any) -> LlavaAdapter:
    """LLaVA-1.5 shape: 112x112 images, patch 14 -> 8x8 tokens; CLIP tower with CLS by default."""
    tokenizer = llava_tokenizer()
    vision_config = _clip(112) if vision == "clip" else _siglip(112)
    settings = {
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default" if vision == "clip" else "full",
    }
    settings.update(config_overrides)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=_llama(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id),
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


def tiny_llava_next(text_layers: int = LAYERS, **config_overrides: Any) -> LlavaNextAdapter:
    """LLaVA-NeXT shape: 56-px tiles (4x4 tokens each), any-res grids up to 112x112."""
    tokenizer = llava_tokenizer()
    pinpoints = [[56, 112], [112, 56], [112, 112]]
    config = LlavaNextConfig(
        vision_config=_clip(56),
        text_config=_llama(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **config_overrides,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaNextAdapter(LlavaNextAdapter.model_class(config).eval(), processor)


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


def _small_text(vocab_size: int, layers: int, **extra: Any) -> dict[str, Any]:
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


def _tiny_qwen(
    adapter_class, config_class, vision: dict[str, Any], text_layers: int, overrides: dict, **text: Any
):
    """A Qwen-family preset: the offline Qwen tokenizer and special ids, a narrow text model with
    3-D rotary sections (and `text` settings), the tower `vision`, and the processor at the tower's
    patch size, merge 2, up to 64 tokens."""
    tokenizer, ids = qwen_tokenizer()
    patch = vision["patch_size"]
    config = config_class(
        text_config=_small_text(
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
    return _tiny_qwen(Qwen2_5_VLAdapter, Qwen2_5_VLConfig, vision, text_layers, config_overrides)


def tiny_qwen2_vl(text_layers: int = LAYERS, **config_overrides: Any) -> Qwen2VLAdapter:
    """Qwen2-VL shape: patch 14, 2x2 merge, full attention in every tower block, up to 64 tokens an image."""
    vision = {
        "depth": 3,
        "embed_dim": WIDTH + 32,  # the tower's own width, apart from the language model's
        "hidden_size": WIDTH,  # the merger's output: the language model's width
        "mlp_ratio": 2,
        "num_heads": HEADS,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return _tiny_qwen(Qwen2VLAdapter, Qwen2VLConfig, vision, text_layers, config_overrides)


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
    return _tiny_qwen(
        Qwen3VLAdapter, Qwen3VLConfig, vision, text_layers, config_overrides, head_dim=WIDTH // HEADS
    )


def _gemma_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def _gemma_text(vocab_size: int, tokenizer, layers: int = LAYERS) -> dict[str, Any]:
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


def _gemma_processor(tokenizer, image_size: int, tokens: int) -> Gemma3Processor:
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


def _randomise_zero_init(model: torch.nn.Module) -> None:
    """Draw the weights that initialisation leaves at zero, so image embeddings differ per image."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(ZERO_INITIALISED):
                parameter.normal_(0.0, parameter.shape[0] ** -0.5)


def tiny_gemma3(
    text_overrides: dict[str, Any] | None = None, text_layers: int = LAYERS, **config_overrides: Any
) -> Gemma3Adapter:
    """Gemma3 shape: SigLIP at 224 px, patch 14 (16x16 patches), pooled 4x4 -> 4x4 = 16 tokens."""
    tokenizer = _gemma_tokenizer()
    settings = {"mm_tokens_per_image": 16}
    settings.update(config_overrides)
    config = Gemma3Config(
        vision_config=_siglip(224).to_dict(),
        text_config={**_gemma_text(len(tokenizer), tokenizer, text_layers), **(text_overrides or {})},
        image_token_id=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_id=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_id=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        **settings,
    )
    model = Gemma3Adapter.model_class(config).eval()
    _randomise_zero_init(model)
    return Gemma3Adapter(model, _gemma_processor(tokenizer, 224, config.mm_tokens_per_image))


def tiny_t5gemma2(text_layers: int = LAYERS, **encoder_overrides: Any) -> T5Gemma2Adapter:
    """T5Gemma2 shape: the Gemma3 image path (224 px, 16 tokens) in an encoder-decoder; 384x128 gives 12."""
    tokenizer = _gemma_tokenizer()
    text = _gemma_text(len(tokenizer), tokenizer, text_layers)
    encoder = {
        "vision_config": _siglip(224).to_dict(),
        "text_config": text,
        "mm_tokens_per_image": 16,
        "boi_token_index": tokenizer.convert_tokens_to_ids("<start_of_image>"),
        "eoi_token_index": tokenizer.convert_tokens_to_ids("<end_of_image>"),
        **encoder_overrides,
    }
    config = T5Gemma2Config(
        encoder=encoder,
        decoder=dict(text),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    model = T5Gemma2Adapter.model_class(config).eval()
    _randomise_zero_init(model)
    processor = _gemma_processor(tokenizer, 224, config.encoder.mm_tokens_per_image)
    return T5Gemma2Adapter(model, processor)


def tiny_deepseek_vl(text_layers: int = LAYERS, **config_overrides: Any) -> DeepseekVLAdapter:
    """DeepSeek-VL shape: SigLIP at 112 px, patch 14 -> 8x8 = 64 tokens, two-layer aligner."""
    specials = ["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>", "<pad>"]
    tokenizer = build_tokenizer(
        specials,
        {"image_token": "<image_placeholder>"},
        bos_token=specials[1],
        eos_token=specials[2],
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = DeepseekVLConfig(
        vision_config=_siglip(112).to_dict(),
        text_config=_llama(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        **config_overrides,
    )
    image_processor = DeepseekVLImageProcessorPil(size={"height": 112, "width": 112})
    processor = DeepseekVLProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=64)
    return DeepseekVLAdapter(DeepseekVLAdapter.model_class(config).eval(), processor)


def tiny_paligemma(text_layers: int = LAYERS, **config_overrides: Any) -> PaliGemmaAdapter:
    """PaliGemma shape: SigLIP at 112 px, patch 14 -> 8x8 = 64 tokens, one projection, a Gemma prefix-LM."""
    tokenizer = build_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        {"image_token": "<image>"},
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    image_processor = SiglipImageProcessorPil(size={"height": 112, "width": 112})
    image_processor.image_seq_length = 64
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer
    )  # adds <loc>/<seg> tokens
    text = _gemma_text(len(processor.tokenizer), processor.tokenizer, text_layers)
    text.pop("sliding_window")
    config = PaliGemmaConfig(
        vision_config=_siglip(112).to_dict(),
        text_config={**text, "model_type": "gemma"},
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=WIDTH,
        hidden_size=WIDTH,
        vocab_size=len(processor.tokenizer),
        **config_overrides,
    )
    return PaliGemmaAdapter(PaliGemmaAdapter.model_class(config).eval(), processor)


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
        vision_config=_siglip(56).to_dict(),
        text_config=_small_text(
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


def tiny_internvl(text_layers: int = LAYERS, **config_overrides: Any) -> InternVLAdapter:
    """InternVL shape: InternViT 112-px tiles (patch 14: 8x8 patches, pixel-shuffled to 4x4 = 16
    tokens), 1..4 tiles and a thumbnail, a Qwen2 language model (as InternVL3)."""
    tokenizer = build_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    config = InternVLConfig(
        vision_config=_tower(image_size=[112, 112], patch_size=[14, 14]),
        text_config=_small_text(
            len(tokenizer), text_layers, model_type="qwen2", pad_token_id=tokenizer.pad_token_id
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=16,
        **config_overrides,
    )
    model = InternVLAdapter.model_class(config).eval()
    _randomise_zero_init(model)
    # As released: the image processor's file says crop_to_patches false (the processor tiles anyway).
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 112, "width": 112}, crop_to_patches=False, min_patches=1, max_patches=4
    )
    processor = InternVLAdapter.build_processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    return InternVLAdapter(model, processor)


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
        vision_config=_tower(image_size=168, patch_size=14),
        text_config=_llama(
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


def tiny_smolvlm(text_layers: int = LAYERS, **config_overrides: Any) -> SmolVLMAdapter:
    """SmolVLM shape: SigLIP 112-px tiles (patch 14: 8x8 patches, pixel-shuffled 2x2 to 16 tokens),
    the longer side scaled to 336 px (up to 3x3 tiles) plus the global image, <row_r_col_c> markers."""
    markers = [f"<row_{row}_col_{col}>" for row in range(1, 4) for col in range(1, 4)]
    tokenizer = build_tokenizer(
        [
            "<unk>",
            "<|im_start|>",
            "<end_of_utterance>",
            "<pad>",
            "<image>",
            "<fake_token_around_image>",
            "<global-img>",
        ]
        + markers,
        {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    config = SmolVLMConfig(
        vision_config=_siglip(112).to_dict(),
        text_config=_llama(len(tokenizer), text_layers, pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        **config_overrides,
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 336}, max_image_size={"longest_edge": 112}, do_image_splitting=True
    )
    processor = SmolVLMAdapter.build_processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=16
    )
    return SmolVLMAdapter(SmolVLMAdapter.model_class(config).eval(), processor)


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


def tiny_gemma4(
    text_layers: int = LAYERS, per_layer: int = 0, kv_shared: int = 0, **config_overrides: Any
) -> Gemma4Adapter:
    """Gemma 4 shape: its own vision tower at patch 8, 2x2 pooling, up to 70 soft tokens an image
    (the smallest budget the processor takes), aspect ratio kept; image tokens attend both ways in
    the sliding layers. `per_layer` > 0 adds per-layer embeddings of that width and `kv_shared` > 0
    KV sharing in the last layers, as the E2B and E4B checkpoints have."""
    tokenizer = gemma4_tokenizer()
    text = _gemma_text(len(tokenizer), tokenizer, text_layers)
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
        vision_config=_tower(
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
    _randomise_zero_init(model)
    image_processor = Gemma4ImageProcessorPil(patch_size=8, pooling_kernel_size=2, max_soft_tokens=70)
    processor = Gemma4Adapter.build_processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=70
    )
    return Gemma4Adapter(model, processor)


PRESETS: dict[str, Callable[..., ImageTokenAdapter]] = {
    "tiny-llava": tiny_llava,
    "tiny-llava-next": tiny_llava_next,
    "tiny-qwen2.5-vl": tiny_qwen2_5_vl,
    "tiny-t5gemma2": tiny_t5gemma2,
    "tiny-gemma3": tiny_gemma3,
    "tiny-deepseek-vl": tiny_deepseek_vl,
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-paligemma": tiny_paligemma,
    "tiny-llava-onevision": tiny_llava_onevision,
    "tiny-qwen3-vl": tiny_qwen3_vl,
    "tiny-internvl": tiny_internvl,
    "tiny-mistral3": tiny_mistral3,
    "tiny-smolvlm": tiny_smolvlm,
    "tiny-gemma4": tiny_gemma4,
}


def build_preset(
    name: str, *, seed: int = 0, native_resolution: bool = False, **overrides: Any
) -> ImageTokenAdapter:
    """A preset by name, with weights drawn from `seed`; `overrides` go to the model config."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    adapter = PRESETS[name](**overrides)
    if native_resolution:
        adapter = type(adapter)(adapter.model, adapter.processor, native_resolution=True)
    return adapter
