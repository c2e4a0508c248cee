"""One place to build a retrieval model by name: `create_model(config, num_identities)`.

    baseline          CLIP vision + CLIP text (IRRA's starting point)
    phase1            CLIP vision + T5 encoder text
    phase2            SigLIP vision + T5 encoder text
    phase3            SigLIP patches -> Linear -> one shared T5 encoder, text through the same encoder
    phase3-t5gemma2   the T5Gemma2 encoder shared, images through the image-token layer; caption decoder
    phase4            phase 3 + a T5 decoder predicting the image's VQ codes from text and masked image

Each backbone is a real `transformers` class: from `pretrained: DIR` (a local checkpoint directory,
nothing is downloaded) or, when that is null, a tiny random-weight config (`retrieval/tiny.py`)
with `tiny:` overrides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5EncoderModel,
)
from transformers.image_utils import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from visionloom import config as config_io
from visionloom.hub import CheckpointNotFound, checkpoint_path
from visionloom.retrieval import tiny
from visionloom.retrieval.config import BackboneConfig, ModelConfig, RetrievalConfig
from visionloom.retrieval.encoders import (
    ClipImageEncoder,
    ClipTextEncoder,
    SiglipImageEncoder,
    T5Gemma2ImageEncoder,
    T5Gemma2TextEncoder,
    T5ImageEncoder,
    T5TextEncoder,
)
from visionloom.retrieval.model import (
    CaptionGenerator,
    DualEncoder,
    InputSpec,
    MaskedImageGenerator,
)


def _processor_stats(directory: str | None, default_mean, default_std) -> tuple[tuple, tuple]:
    """The image processor's mean and std from a checkpoint's preprocessor_config.json, or the family's."""
    if directory:
        file = Path(directory) / "preprocessor_config.json"
        if file.is_file():
            saved = json.loads(file.read_text())
            return tuple(saved.get("image_mean", default_mean)), tuple(saved.get("image_std", default_std))
    return tuple(default_mean), tuple(default_std)


def local_checkpoint(path: str, setting: str) -> Path:
    """`path` (a checkpoint directory or a hub id) as a local directory holding a config.json, or
    an error naming the setting."""
    try:
        directory = checkpoint_path(path, setting=setting)
    except CheckpointNotFound as error:
        raise config_io.ConfigError(f"{error}; or give another with --set {setting}=DIR_OR_ID") from None
    if not (directory / "config.json").is_file():
        where = "" if directory.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise config_io.ConfigError(
            f"{setting}: {path}{where} is not a checkpoint directory with a config.json; put the "
            "released checkpoint there (the recipe names its model id) or give its path with "
            f"--set {setting}=DIR"
        )
    return directory


def checked_tiny(tiny_overrides: dict[str, Any], defaults: dict[str, Any], setting: str) -> dict[str, Any]:
    """`tiny_overrides` when each names a setting of the tiny config (`defaults`: its values) and
    gives a value of that setting's type; ConfigError naming the key otherwise. A transformers
    config takes any keyword silently, so a misspelt size would be ignored."""
    for key, value in tiny_overrides.items():
        if key not in defaults:
            raise config_io.ConfigError(
                f"{setting}.{key}: not a setting of the tiny config; known: {', '.join(sorted(defaults))}"
            )
        default = defaults[key]
        expected = (int, float) if type(default) is float else type(default)
        scalar = isinstance(value, (bool, int, float, str)) or value is None
        if not scalar or (
            default is not None
            and (isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected))
        ):
            raise config_io.ConfigError(
                f"{setting}.{key}: expected {type(default).__name__ if default is not None else 'a number, string or null'}"
                f" like the default {default!r}, got {value!r}"
            )
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value <= 0
            and key.endswith(("size", "layers", "heads", "dim"))
        ):
            raise config_io.ConfigError(f"{setting}.{key}: expected a positive integer, got {value!r}")
    return tiny_overrides


def _tiny_defaults(config_class) -> dict[str, Any]:
    """The settings of a transformers config class that shape its model (not the ones every
    config has: names, output switches, label maps)."""
    common = PretrainedConfig().to_dict()
    return {key: value for key, value in config_class().to_dict().items() if key not in common}


def _tokenizer(backbone: BackboneConfig, make_tiny: Callable, setting: str):
    if not backbone.pretrained:
        return make_tiny()
    return AutoTokenizer.from_pretrained(local_checkpoint(backbone.pretrained, setting))


def load_backbone(model_class, path: str, setting: str, clip_part: str | None = None):
    """`model_class` from the local checkpoint `path` (named by `setting` in errors), refusing one
    that leaves weights missing. `clip_part` ("vision" or "text") reads a CLIP tower's config.

    A tower loaded from a whole-model checkpoint (CLIP's vision tower from `CLIPModel`) finds
    the other tower's weights unexpected, which is fine and not reported. A weight the class needs
    and the checkpoint lacks would be initialised at random, silently: that is an error here.
    """
    from transformers.utils import logging as transformers_logging

    directory = local_checkpoint(path, setting)
    config = _clip_part(directory, clip_part) if clip_part else None

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the load report lists the other tower's keys
    try:
        model, info = model_class.from_pretrained(directory, config=config, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(
            f"{setting}: {directory} has no weights for {len(missing)} parameter(s) of {model_class.__name__} "
            f"(e.g. {', '.join(missing[:3])}); they would train from random values. Is it the right checkpoint?"
        )
    return model


def _clip_part(directory: Path, part: str):
    """The vision or text config of a CLIP checkpoint, whole (`CLIPModel`, as openai/clip-* ship)
    or one tower, with the projection width of the whole model: a sub-config saved without its
    own projection_dim would otherwise take the class default (512) and reinitialise the projection."""
    config = AutoConfig.from_pretrained(directory)
    if config.model_type != "clip":
        return config
    sub = getattr(config, f"{part}_config")
    sub.projection_dim = config.projection_dim
    return sub


def clip_vision(config: ModelConfig) -> ClipImageEncoder:
    backbone = config.vision
    if backbone.pretrained:
        model = load_backbone(
            CLIPVisionModelWithProjection, backbone.pretrained, "model.vision.pretrained", clip_part="vision"
        )
    else:
        overrides = checked_tiny(backbone.tiny, _tiny_defaults(CLIPVisionConfig), "model.vision.tiny")
        model = CLIPVisionModelWithProjection(tiny.clip_vision_config(**overrides))
    mean, std = _processor_stats(backbone.pretrained, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return ClipImageEncoder(model, config.image_size, mean, std)


def siglip_vision(config: ModelConfig) -> SiglipImageEncoder:
    backbone = config.vision
    if backbone.pretrained:
        model = load_backbone(SiglipVisionModel, backbone.pretrained, "model.vision.pretrained")
    else:
        overrides = checked_tiny(backbone.tiny, _tiny_defaults(SiglipVisionConfig), "model.vision.tiny")
        model = SiglipVisionModel(tiny.siglip_vision_config(**overrides))
    mean, std = _processor_stats(backbone.pretrained, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD)
    return SiglipImageEncoder(model, config.image_size, mean, std)


def clip_text(config: ModelConfig):
    tokenizer = _tokenizer(config.text, tiny.clip_tokenizer, "model.text.pretrained")
    if config.text.pretrained:
        model = load_backbone(
            CLIPTextModelWithProjection, config.text.pretrained, "model.text.pretrained", clip_part="text"
        )
    else:
        overrides = checked_tiny(config.text.tiny, _tiny_defaults(CLIPTextConfig), "model.text.tiny")
        model = CLIPTextModelWithProjection(tiny.clip_text_config(tokenizer, **overrides))
    check_clip_pooling(model.config, tokenizer)
    return (
        ClipTextEncoder(model),
        tokenizer,
        min(config.max_text_length, model.config.max_position_embeddings),
    )


def check_clip_pooling(text_config, tokenizer) -> None:
    """CLIP pools the text at its end token. A config with the released eos_token_id 2 (openai's
    checkpoints) takes the position of the highest token id instead, which is the end token only
    when the tokenizer puts <|endoftext|> at its highest id (49407 in CLIP's); any other tokenizer
    would be pooled at some word, silently."""
    ids = tokenizer("a")["input_ids"]
    if ids[-1] != tokenizer.eos_token_id:
        raise ValueError(
            f"CLIP pools the text at its end token, but this tokenizer does not end a text with "
            f"{tokenizer.eos_token!r} (it gave {ids} for 'a'): use the checkpoint's own tokenizer"
        )
    if text_config.eos_token_id == 2:
        highest = max(tokenizer.get_vocab().values())
        if tokenizer.eos_token_id != highest:
            raise ValueError(
                f"CLIP text config has eos_token_id 2 (the released checkpoints' legacy value), so the text is "
                f"pooled at its highest token id, {highest}, but the tokenizer's end token {tokenizer.eos_token!r} "
                f"is {tokenizer.eos_token_id}: use the checkpoint's own tokenizer"
            )


def t5_text(config: ModelConfig):
    tokenizer = _tokenizer(config.text, tiny.t5_tokenizer, "model.text.pretrained")
    # T5's tokenizers (t5-base and the rest) define no mask token; phase 4 masks caption words with
    # the first span sentinel, the token T5 was pretrained to read as "something missing here".
    if tokenizer.mask_token is None and "<extra_id_0>" in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"mask_token": "<extra_id_0>"})
    if config.text.pretrained:
        model = load_backbone(T5EncoderModel, config.text.pretrained, "model.text.pretrained")
    else:
        overrides = checked_tiny(config.text.tiny, _tiny_defaults(T5Config), "model.text.tiny")
        model = T5EncoderModel(tiny.t5_config(tokenizer, **overrides))
    return T5TextEncoder(model), tokenizer, config.max_text_length


def _dual(
    config: RetrievalConfig, image, text, tokenizer, max_length, num_identities, generator=None, **spec
):
    special = tokenizer.num_special_tokens_to_add()
    if max_length <= special:
        raise config_io.ConfigError(
            f"model.max_text_length={config.model.max_text_length}: the tokenizer adds {special} special "
            f"token(s) to every caption, so at least {special + 1} is needed for one word"
        )
    spec = InputSpec(config.model.image_size, tokenizer, max_length, **spec)
    return DualEncoder(
        image,
        text,
        embed_dim=config.model.embed_dim,
        num_identities=num_identities,
        input_spec=spec,
        loss=config.loss,
        generator=generator,
    )


def _baseline(config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None) -> DualEncoder:
    text, tokenizer, max_length = clip_text(config.model)
    return _dual(config, clip_vision(config.model), text, tokenizer, max_length, num_identities)


def _phase1(config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None) -> DualEncoder:
    text, tokenizer, max_length = t5_text(config.model)
    return _dual(config, clip_vision(config.model), text, tokenizer, max_length, num_identities)


def _phase2(config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None) -> DualEncoder:
    text, tokenizer, max_length = t5_text(config.model)
    return _dual(config, siglip_vision(config.model), text, tokenizer, max_length, num_identities)


def _phase3(config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None) -> DualEncoder:
    text, tokenizer, max_length = t5_text(config.model)
    image = T5ImageEncoder(siglip_vision(config.model), text.model, use_cls=config.model.use_cls)
    return _dual(config, image, text, tokenizer, max_length, num_identities)


def _phase4(config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None) -> DualEncoder:
    model_config = config.model
    if model_config.codebook_size is None or model_config.code_grid is None:
        raise ValueError(
            "phase4 needs model.codebook_size and model.code_grid; they are filled from the VQ model "
            "(`visionloom retrieval vq fit`, or vq.path) when training starts"
        )
    text, tokenizer, max_length = t5_text(model_config)
    image = T5ImageEncoder(siglip_vision(model_config), text.model, use_cls=model_config.use_cls)
    generator = None
    if config.loss.enable_gen:
        online = vq_model if config.vq.online else None
        generator = MaskedImageGenerator(
            image, text.model, model_config.codebook_size, model_config.decoder_layers, vq_model=online
        )
    return _dual(
        config,
        image,
        text,
        tokenizer,
        max_length,
        num_identities,
        generator,
        text_mask_ratio=model_config.text_mask_ratio if generator else 0.0,
        image_mask_grid=model_config.code_grid if generator else None,
        image_mask_ratio=model_config.image_mask_ratio if generator else 0.0,
        vq_code_grid=model_config.code_grid if generator and not config.vq.online else None,
    )


def _phase3_t5gemma2(config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None) -> DualEncoder:
    from visionloom.backbones import load
    from visionloom.backbones.tiny import build_preset

    pretrained = config.model.vision.pretrained or config.model.text.pretrained
    if pretrained:
        setting = "model.vision.pretrained" if config.model.vision.pretrained else "model.text.pretrained"
        adapter = load(str(local_checkpoint(pretrained, setting)), native_resolution=True)
    else:
        overrides = checked_tiny(
            config.model.vision.tiny, {"text_layers": 2, "mm_tokens_per_image": 16}, "model.vision.tiny"
        )
        adapter = build_preset("tiny-t5gemma2", seed=config.train.seed, native_resolution=True, **overrides)
    height, width = config.model.image_size
    tokens = adapter.tokens_per_image(height, width)  # from the layer's geometry, never typed in
    adapter.model.train()
    generator = CaptionGenerator(adapter) if config.loss.enable_gen else None
    return _dual(
        config,
        T5Gemma2ImageEncoder(adapter),
        T5Gemma2TextEncoder(adapter),
        adapter.tokenizer,
        config.model.max_text_length,
        num_identities,
        generator,
        notes=[f"T5Gemma2: {tokens} image tokens per {height}x{width} image, from the image-token layer"],
    )


ARCHITECTURES: dict[str, Callable[[RetrievalConfig, int, nn.Module | None], DualEncoder]] = {
    "baseline": _baseline,
    "phase1": _phase1,
    "phase2": _phase2,
    "phase3": _phase3,
    "phase3-t5gemma2": _phase3_t5gemma2,
    "phase4": _phase4,
}


def create_model(
    config: RetrievalConfig, num_identities: int, vq_model: nn.Module | None = None
) -> DualEncoder:
    """The retrieval model a config names: the one factory for every phase.

    Args:
        config: a resolved retrieval config (`load_config`); `model.architecture` picks baseline,
            phase1..phase4 or phase3-t5gemma2, `model.*.path` the checkpoints.
        num_identities: training identities, for the identity loss's classifier.
        vq_model: the VQ tokenizer phase 4 predicts the codes of (None for the other phases).

    Returns:
        A `DualEncoder`, weights drawn from `config.train.seed`, gradient checkpointing on where
        the config asks for it.

    Raises:
        KeyError: an unknown architecture.
        ValueError: a checkpoint leaves weights missing or does not fit the config.
    """
    architecture = config.model.architecture
    if architecture not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    torch.manual_seed(config.train.seed)
    model = ARCHITECTURES[architecture](config, num_identities, vq_model)
    if config.model.gradient_checkpointing:
        backbones = [
            m for m in model.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing
        ]
        for backbone in backbones:
            # non-reentrant: works when the inputs need no grad, and with DDP (accelerate launch)
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
