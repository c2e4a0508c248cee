"""What several test files share: the family lists, cached presets, small configs, the checkpoint
edits the doctor tests make, and the reference computations the family tests compare against.
Fixtures stay in conftest.py; helpers are imported from here."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from visionloom.backbones.doctor import CallCounter
from visionloom.backbones.tiny import PRESETS, build_preset
from visionloom.pruning.generate import generate, stop_token_ids
from visionloom.pruning.pruners import KeepAll

FAMILIES = list(PRESETS)


# One image path: with windowed attention (2.5), without (2), without and with DeepStack (3).
QWEN_FAMILIES = ["tiny-qwen2.5-vl", "tiny-qwen2-vl", "tiny-qwen3-vl"]


def sigint_as_from_a_terminal() -> None:
    """`preexec_fn` for a child process that a test interrupts: SIGINT at its default, as Ctrl-C on
    a terminal finds it, even when the test run itself was started with SIGINT ignored (as a
    script's background job is), which the child would otherwise inherit and keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@functools.cache
def cached_preset(name: str, native: bool = False):
    """A preset shared by tests that do not change it (use build_preset for one you change)."""
    return build_preset(name, native_resolution=native)


def small_config(architecture: str, *overrides: str):
    """A retrieval config at test size: 64x32 images, few steps, small batches of 2 ids x 2."""
    from visionloom.retrieval.config import load_config

    base = [
        "model.image_size=[64, 32]",
        "train.steps=4",
        "train.batch_size=4",
        "data.ids_per_batch=2",
        "train.warmup_steps=1",
        "train.checkpoint_every=2",
        "train.log_every=1",
    ]
    if architecture == "phase3-t5gemma2":
        base[0] = "model.image_size=[384, 128]"
    return load_config(architecture, [*base, *overrides])


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """Rewrite a JSON file after `change` has edited its content in place."""
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def doctor_error_after(preset: str, corrupt: Callable[[Path], object], directory: Path) -> str:
    """Save `preset` to `directory`, check that `visionloom doctor` accepts it, run `corrupt` on the
    directory, and return the one-line error the doctor then reports (it must exit 1)."""
    from typer.testing import CliRunner

    from visionloom.cli import app

    runner = CliRunner()
    cached_preset(preset).save_pretrained(directory)
    assert runner.invoke(app, ["doctor", str(directory)]).exit_code == 0
    corrupt(directory)
    result = runner.invoke(app, ["doctor", str(directory), "--json"])
    assert result.exit_code == 1, result.stdout
    return json.loads(result.stdout)["error"]


def drop_weights(directory, fragment: str) -> None:
    weights = load_file(directory / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if fragment not in k},
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )


SIDES = ["right", "left"]


@contextmanager
def padded_on(adapter, side: str):
    """Build inputs with the tokenizer padding on `side` (restored afterwards: presets are shared)."""
    tokenizer = adapter.tokenizer
    before, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        yield
    finally:
        tokenizer.padding_side = before


def two_sample_batch(adapter, image, side: str = "right"):
    """Two samples of different lengths (so one is padded on `side`), one image each."""
    with padded_on(adapter, side):
        inputs = adapter.build_inputs(
            [image(112, 112, 1), image(112, 112, 2)],
            ["<image> what is this?", "and <image> a longer question here?"],
        )
    padded_first = not bool(inputs.attention_mask[0, 0])
    assert (
        padded_first == (side == "left") and inputs.attention_mask[0].sum() < inputs.attention_mask.shape[1]
    )
    flags = {"decoder_input_ids": torch.tensor([[1, 2], [1, 2]])} if adapter.family == "t5gemma2" else {}
    return inputs, flags


def encoded_batch(adapter, image, side: str = "right"):
    """`two_sample_batch` and its VisionTokens from the layer's one tower pass."""
    inputs, flags = two_sample_batch(adapter, image, side)
    with torch.no_grad():
        return inputs, flags, adapter.encode_images(inputs)


def output_tensor(output):
    return output.logits if output.logits is not None else output.last_hidden_state


@contextmanager
def eager_weights_of(adapter, attention_module):
    """Attention probabilities of one tower block from the model's own eager attention (a second pass).

    Registered through transformers' AttentionInterface, so the reference is the library's code and
    not visionloom's. Test-only: the pruner never runs the tower twice.
    """
    captured = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        output, weights = eager(module, query, key, value, attention_mask, **kwargs)
        if module is attention_module:
            captured.append(weights.float())
        return output, weights

    AttentionInterface.register("visionloom-capture", capture)
    # and eager's masks for it: an implementation without a mask function gets no mask at all, which
    # would let a tower with padding patches (Gemma 4) attend to them
    AttentionMaskInterface.register("visionloom-capture", eager_mask)
    config = adapter.vision_tower.config
    previous = config._attn_implementation
    config._attn_implementation = "visionloom-capture"
    try:
        yield captured
    finally:
        config._attn_implementation = previous


def keep_all_generation(adapter, inputs, steps: int):
    """visionloom's generation with every token kept: tokens and every step's logits."""
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        return generate(
            adapter,
            inputs,
            tokens,
            KeepAll().decide(adapter, inputs, tokens),
            max_new_tokens=steps,
            keep_logits=True,
        )


def model_generate(adapter, inputs, steps: int):
    """The model's own `generate`, greedy, pixels in: new tokens cut at the first end token, and logits."""
    out = adapter.model.generate(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        **adapter.image_token_types(inputs),
        **inputs.model_inputs,
        max_new_tokens=steps,
        do_sample=False,
        pad_token_id=adapter.tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = (
        out.sequences[:, 1:]
        if adapter.model.config.is_encoder_decoder
        else out.sequences[:, inputs.input_ids.shape[1] :]
    )
    stops, answers = stop_token_ids(adapter), []
    for row in new.tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        answers.append(row[:cut])
    return answers, out.logits


def assert_matches_model(adapter, inputs):
    with CallCounter(adapter.vision_tower) as counter:
        tokens = adapter.encode_images(inputs)
    assert counter.calls == 1
    inserted = adapter.model_inserted_embeds(inputs)
    assert inserted.shape == tokens.embeds.shape
    assert torch.equal(inserted, tokens.embeds)
    # Random weights left at zero would make the equality vacuous: embeddings are non-zero and differ per image.
    per_image = tokens.per_image()
    assert all(e.abs().sum() > 0 for e in per_image)
    assert not torch.equal(per_image[0][: per_image[1].shape[0]], per_image[1][: per_image[0].shape[0]])
    return tokens


def results_renderer():
    """scripts/render_results.py as a module (a script, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "render_results.py"
    spec = importlib.util.spec_from_file_location("render_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
