"""The checkpoints the CUHK-PEDES recipes expect, laid out as the hub ships them, with random weights.

Built from the released config files in `tests/fixtures/checkpoints/` (sources in its README.md):
CLIP ViT-B/16 (`CLIPModel`), t5-base (`T5ForConditionalGeneration`), SigLIP base 16/224
(`SiglipModel`) and T5Gemma 2 270M. Unlike `tests/hub_checkpoints.py`, which narrows the language
model, every width here is the release's; only the depth is cut (`LAYERS` blocks per tower), so a
recipe builds with the real shapes at each seam (projections, the shared encoder's Linear, the
decoder's cross-attention) in seconds. The tokenizers are trained here, with each release's special tokens
at its real ids and each release's way of ending a text.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    CLIPModel,
    PreTrainedTokenizerFast,
    SiglipModel,
    T5ForConditionalGeneration,
)

from tests.hub_checkpoints import FIXTURES, RELEASES, release_tokenizer, session_directory
from visionloom.backbones.tiny_parts import build_tokenizer, randomise_zero_init

LAYERS = 1  # blocks kept per tower; widths, heads, vocabularies and patch sizes stay real


def _word_tokenizer(
    specials: dict[str, int], template: str, roles: dict[str, str]
) -> PreTrainedTokenizerFast:
    """A byte-level BPE over the presets' words whose specials sit at `specials`' ids, with a
    post-processor that frames each text as `template` does ("$A </s>", "<s> $A </s>")."""
    base = json.loads(build_tokenizer([], {}).backend_tokenizer.to_str())["model"]
    taken = set(specials.values())
    free = (i for i in range(2**31) if i not in taken)
    vocab = {token: next(free) for token in sorted(base["vocab"], key=base["vocab"].get)}
    vocab.update(specials)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in base["merges"]]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(specials))
    used = [token for token in specials if token in template]
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, specials[token]) for token in used]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def clip_tokenizer() -> PreTrainedTokenizerFast:
    """CLIP's: <|startoftext|> 49406, <|endoftext|> 49407 (the highest id), padded with <|endoftext|>."""
    specials = {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    roles = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    return _word_tokenizer(specials, "<|startoftext|> $A <|endoftext|>", roles)


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """T5's: <pad> 0, </s> 1, <unk> 2, sentinels <extra_id_0>..<extra_id_99> at 32099..32000; no mask token."""
    specials = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"<extra_id_{i}>": 32099 - i for i in range(100)}}
    roles = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    return _word_tokenizer(specials, "$A </s>", roles)


def _release_files(name: str) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in (FIXTURES / name).glob("*.json")}


def _write(directory: Path, files: dict[str, dict], model_class, tokenizer, cut, layers: int | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config_file = json.loads(json.dumps(files["config.json"]))
    if layers is not None:
        cut(config_file, layers)
    (directory / "config.json").write_text(json.dumps(config_file, indent=2))
    torch.manual_seed(0)
    model = model_class(AutoConfig.from_pretrained(str(directory)))
    randomise_zero_init(model)
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    for file, content in files.items():  # the release's own files, except the cut config
        if file != "config.json":
            (directory / file).write_text(json.dumps(content, indent=2))
    return directory


def _cut_towers(config: dict, layers: int) -> None:
    for part in ("text_config", "vision_config"):
        config[part]["num_hidden_layers"] = layers


def _cut_t5(config: dict, layers: int) -> None:
    config["num_layers"] = layers


def _cut_t5gemma2(config: dict, layers: int) -> None:
    for text in (config["encoder"]["text_config"], config["decoder"]):
        text["layer_types"] = text["layer_types"][:layers]
        text["num_hidden_layers"] = layers
    config["encoder"]["vision_config"]["num_hidden_layers"] = layers


# Each writer takes `layers`: blocks kept per tower, or None for the release's full depth
# (`benchmarks/recipe_step.py` measures the recipes at full depth).
def write_clip(directory: Path, layers: int | None = LAYERS) -> Path:
    files = _release_files("clip-vit-base-patch16")
    return _write(directory, files, CLIPModel, clip_tokenizer(), _cut_towers, layers)


def write_t5(directory: Path, layers: int | None = LAYERS) -> Path:
    files = _release_files("t5-base")
    return _write(directory, files, T5ForConditionalGeneration, t5_tokenizer(), _cut_t5, layers)


def write_siglip(directory: Path, layers: int | None = LAYERS) -> Path:
    # SigLIP's own tokenizer is not used by any recipe (the text goes through T5)
    files = _release_files("siglip-base-patch16-224")
    return _write(directory, files, SiglipModel, None, _cut_towers, layers)


def write_t5gemma2(directory: Path, layers: int | None = LAYERS) -> Path:
    from visionloom.backbones.registry import ADAPTERS

    name = "t5gemma-2-270m-270m"
    release = RELEASES[name]
    files = {file: json.loads((FIXTURES / name / file).read_text()) for file in release.files}
    model_class = ADAPTERS["t5gemma2"].model_class
    return _write(directory, files, model_class, release_tokenizer(release), _cut_t5gemma2, layers)


WRITERS = {
    "clip-vit-base-patch16": write_clip,
    "t5-base": write_t5,
    "siglip-base-patch16-224": write_siglip,
    "t5gemma-2-270m-270m": write_t5gemma2,
}


@functools.cache
def recipe_checkpoint(name: str) -> Path:
    """Release `name` laid out once per test session (read-only)."""
    return WRITERS[name](session_directory(f"recipe-{name}-") / name)
