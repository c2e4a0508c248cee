"""Checkpoint directories laid out as the hub ships them, built from the real config files in
`tests/fixtures/checkpoints/` (sources in its README.md).

Each directory holds the fixture's own `config.json`, `preprocessor_config.json` and
`processor_config.json` (where the release has one) byte for byte, except for what is cut to keep
the suite fast: the vision tower keeps its real width, patch size and image size but only one or
two blocks, and the language model is one narrow layer (width 64) with the real vocabulary size.
Every fact the image-token layer derives counts from (tower geometry, pooling, merge, processor
settings, special token ids) is the release's. The weights are random, written with
`save_pretrained` (safetensors). The tokenizer is trained here, a byte-level BPE like the presets', with
each release's special tokens at their real ids; the real tokenizers cannot be downloaded here.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, PreTrainedTokenizerFast

from visionloom.backbones.registry import ADAPTERS
from visionloom.backbones.tiny_parts import build_tokenizer, randomise_zero_init

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"

# One narrow language-model layer: what the layer checks of the text model is its width and ids.
NARROW_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


@dataclass(frozen=True)
class Release:
    """One released checkpoint: its special tokens at their real ids, and how its tokenizer pads."""

    special_ids: dict[str, int]
    roles: dict[str, str]  # bos_token, eos_token, pad_token, unk_token
    named: dict[str, str] = field(default_factory=dict)  # image_token, boi_token, ...
    padding_side: str = "right"
    files: tuple[str, ...] = ("config.json", "preprocessor_config.json", "processor_config.json")


LLAMA_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001}
LLAMA_ROLES = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
QWEN_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
GEMMA_SPECIALS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<start_of_image>": 255999,
    "<end_of_image>": 256000,
}
GEMMA_ROLES = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
GEMMA_NAMED = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
GEMMA4_SPECIALS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<|turn>": 105,
    "<turn|>": 106,
    "<|image>": 255999,
    "<|audio>": 256000,
    "<|image|>": 258880,
    "<|audio|>": 258881,
    "<image|>": 258882,
    "<audio|>": 258883,
    "<|video|>": 258884,
}
GEMMA4_NAMED = {
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
}
DEEPSEEK_SPECIALS = {
    "<｜begin▁of▁sentence｜>": 100000,
    "<｜end▁of▁sentence｜>": 100001,
    "<image_placeholder>": 100015,
}

RELEASES: dict[str, Release] = {
    "llava-1.5-7b-hf": Release(
        LLAMA_SPECIALS,
        LLAMA_ROLES,
        {"image_token": "<image>"},
        padding_side="left",
        files=("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json"),
    ),
    # The same repository before processor_config.json was added: the processor has no patch_size,
    # vision_feature_select_strategy or num_additional_image_tokens.
    "llava-1.5-7b-hf-2023": Release(
        LLAMA_SPECIALS,
        LLAMA_ROLES,
        {"image_token": "<image>"},
        padding_side="left",
        files=("config.json", "preprocessor_config.json"),
    ),
    "llava-v1.6-mistral-7b-hf": Release(
        LLAMA_SPECIALS, LLAMA_ROLES, {"image_token": "<image>"}, padding_side="left"
    ),
    # As released: preprocessor_config.json only, no processor_config.json.
    "qwen2.5-vl-3b-instruct": Release(
        QWEN_SPECIALS,
        {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        files=("config.json", "preprocessor_config.json", "chat_template.json"),
    ),
    # As released: preprocessor_config.json only (the Qwen3-VL family's shared image settings).
    "qwen3-vl-4b-instruct": Release(
        QWEN_SPECIALS,
        {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        files=("config.json", "preprocessor_config.json"),
    ),
    "gemma-3-4b-it": Release(
        {**GEMMA_SPECIALS, "<image_soft_token>": 262144, "<start_of_turn>": 105, "<end_of_turn>": 106},
        GEMMA_ROLES,
        GEMMA_NAMED,
        files=("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json"),
    ),
    # As released: the image processor's settings nested in processor_config.json; the tokenizer pads left.
    "gemma-4-e2b-it": Release(
        GEMMA4_SPECIALS,
        GEMMA_ROLES,
        GEMMA4_NAMED,
        padding_side="left",
        files=("config.json", "processor_config.json"),
    ),
    # T5Gemma 2 places its image token at 256001 (config.json); the token's text is assumed.
    "t5gemma-2-270m-270m": Release(
        {**GEMMA_SPECIALS, "<image_soft_token>": 256001}, GEMMA_ROLES, GEMMA_NAMED
    ),
    "deepseek-vl-1.3b-chat": Release(
        DEEPSEEK_SPECIALS,
        {
            "bos_token": "<｜begin▁of▁sentence｜>",
            "eos_token": "<｜end▁of▁sentence｜>",
            "pad_token": "<｜end▁of▁sentence｜>",
        },
        {"image_token": "<image_placeholder>"},
    ),
}


def cut(config: dict[str, Any]) -> dict[str, Any]:
    """The release's config with the vision tower cut in depth and the language model narrowed."""
    config = json.loads(json.dumps(config))
    kind = config["model_type"]
    if kind in ("llava", "llava_next"):
        config["text_config"].update(NARROW_TEXT)
        config["vision_config"]["num_hidden_layers"] = 2  # vision_feature_layer -2 needs two
    elif kind == "qwen2_5_vl":  # the released file keeps the text settings at the top level
        config.update(NARROW_TEXT)
        config["rope_scaling"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2
        vision = config["vision_config"]
        vision.update(depth=2, fullatt_block_indexes=[1], out_hidden_size=NARROW_TEXT["hidden_size"])
    elif kind == "qwen3_vl":
        # Three narrow layers, one for each DeepStack set; the tower cut to three blocks, each of them
        # a DeepStack source (the release takes blocks 5, 11, 17 of 24: three sets, as here).
        config["text_config"].update(NARROW_TEXT, num_hidden_layers=3)
        config["text_config"]["rope_scaling"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2
        vision = config["vision_config"]
        vision.update(depth=3, deepstack_visual_indexes=[0, 1, 2], out_hidden_size=NARROW_TEXT["hidden_size"])
    elif kind == "gemma3":
        config["text_config"].update(NARROW_TEXT, query_pre_attn_scalar=16)
        config["vision_config"]["num_hidden_layers"] = 1
    elif kind == "gemma4":
        # Ten narrow layers: two of the release's periods of four sliding and one full layer, the last
        # four sharing keys and values as the release's last twenty do; per-layer embeddings of width
        # 4 over the real vocabulary. The tower keeps its width, patch, pooling and one block; its
        # position table keeps 1024 of 10240 rows (at 280 soft tokens no patch coordinate passes 840);
        # the audio tower, which the layer never runs, is left out.
        text = config["text_config"]
        text.update(
            NARROW_TEXT,
            num_hidden_layers=10,
            num_key_value_heads=1,
            global_head_dim=16,
            hidden_size_per_layer_input=4,
            num_kv_shared_layers=4,
            layer_types=text["layer_types"][:10],
        )
        config["vision_config"].update(num_hidden_layers=1, position_embedding_size=1024)
        config["audio_config"] = None
    elif kind == "t5gemma2":
        for text in (config["encoder"]["text_config"], config["decoder"]):
            text.update(NARROW_TEXT, query_pre_attn_scalar=16, layer_types=text["layer_types"][:1])
        config["encoder"]["vision_config"]["num_hidden_layers"] = 1
    elif kind == "deepseek_vl":
        config["text_config"].update(NARROW_TEXT)
        config["vision_config"]["num_hidden_layers"] = 1
    else:
        raise ValueError(f"no cut rule for model_type {kind!r}")
    return config


def release_tokenizer(release: Release) -> PreTrainedTokenizerFast:
    """A byte-level BPE whose special tokens sit at the release's ids; other ids hold fillers."""
    base = json.loads(build_tokenizer([], {}).backend_tokenizer.to_str())["model"]
    taken = set(release.special_ids.values())
    free = (i for i in range(2**31) if i not in taken)
    vocab = {token: next(free) for token in sorted(base["vocab"], key=base["vocab"].get)}
    used = taken | set(vocab.values())
    vocab.update({f"<unused{i}>": i for i in range(max(used)) if i not in used})
    vocab.update(release.special_ids)
    merges = [tuple(merge) for merge in base["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(release.special_ids))
    # padding_side as a constructor argument: set afterwards, save_pretrained would not write it.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens=release.named,
        padding_side=release.padding_side,
        **release.roles,
    )


def write_checkpoint(name: str, directory: Path, *, edit=None) -> Path:
    """Lay out release `name` in `directory`; `edit(files)` may change the JSON files first
    (a dict file name -> parsed JSON; a value of None removes that file)."""
    release = RELEASES[name]
    files = {file: json.loads((FIXTURES / name / file).read_text()) for file in release.files}
    files["config.json"] = cut(files["config.json"])
    if edit is not None:
        edit(files)
    directory.mkdir(parents=True, exist_ok=True)
    release_tokenizer(release).save_pretrained(str(directory))
    config_text = json.dumps(files["config.json"], indent=2)
    (directory / "config.json").write_text(config_text)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(directory))
    model = ADAPTERS[config.model_type].model_class(config)
    randomise_zero_init(model)
    model.save_pretrained(str(directory))
    for file, content in files.items():  # the release's files, over what save_pretrained wrote
        if content is not None:
            (directory / file).write_text(json.dumps(content, indent=2))
    return directory


def session_directory(prefix: str) -> Path:
    """A temporary folder removed when this process ends (each xdist worker removes its own)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


@functools.cache
def checkpoint(name: str) -> Path:
    """Release `name` laid out once per test session (read-only: copy it to change it)."""
    return write_checkpoint(name, session_directory(f"hub-{name}-") / name)


def edited_copy(name: str, directory: Path, edit) -> Path:
    """A copy of release `name` with its JSON files changed by `edit` (see write_checkpoint)."""
    target = directory / name
    shutil.copytree(checkpoint(name), target)
    files = {path.name: json.loads(path.read_text()) for path in target.glob("*.json")}
    edit(files)
    for file, content in files.items():
        if content is None:
            (target / file).unlink()
        else:
            (target / file).write_text(json.dumps(content, indent=2))
    return target


@functools.cache
def sam_checkpoint(name: str = "sam-vit-base") -> Path:
    """A SAM release (`tests/fixtures/checkpoints/sam-vit-base`: facebook/sam-vit-base's config and
    processor) with random weights and its image encoder cut to one block (global attention), so its
    widths, 1024-pixel input, 64x64 embeddings and prompt and mask decoder stay the release's."""
    from transformers import SamConfig, SamModel

    directory = session_directory(f"hub-{name}-") / name
    files = {
        file: json.loads((FIXTURES / name / file).read_text())
        for file in ("config.json", "preprocessor_config.json")
    }
    files["config.json"]["vision_config"].update(num_hidden_layers=1, global_attn_indexes=[0])
    directory.mkdir(parents=True)
    torch.manual_seed(0)
    SamModel(
        SamConfig(**{k: v for k, v in files["config.json"].items() if k != "architectures"})
    ).save_pretrained(str(directory))
    for file, content in files.items():
        (directory / file).write_text(json.dumps(content, indent=2))
    return directory


def hub_cache(
    root: Path, repo_id: str, source: Path, *, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """`source`'s files laid out in a Hugging Face cache under `root` as `huggingface_hub` writes
    it: `models--org--name/blobs/<hash>` holding the bytes, `snapshots/<commit>/<file>` a relative
    link to its blob, and `refs/<name>` holding the commit. Returns the snapshot directory."""
    import hashlib

    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(link.relative_to(repo).parts) - 1)) / "blobs" / blob.name)
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
