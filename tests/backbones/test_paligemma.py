"""What is particular to PaliGemma: the bidirectional prefix, positions that start at 1, and the
processor's placeholder count, each against the model's own forward."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import cached_preset
from visionloom.backbones.checks import ImageTokenMismatch
from visionloom.backbones.tiny import build_preset
from visionloom.cli import app
from visionloom.pruning.apply import full_sequence_kwargs


def test_image_tokens_see_the_prompt_that_follows_them(image):
    """Prefix-LM: with the prompt as prefix (token_type_ids 0, what the layer passes) the first image
    token's output depends on the prompt after it; marked as suffix (1, causal) it cannot. The
    layer's forward equals the model's own."""
    adapter = cached_preset("tiny-paligemma")
    picture = image(112, 112, 1)
    prompts = [
        adapter.build_inputs([picture], [f"<image> is there a {thing}?"])
        for thing in ("red circle", "blue square")
    ]
    with torch.no_grad():
        assert torch.equal(adapter.forward(prompts[0]).logits, adapter.model_own_call(prompts[0]).logits)

        def first_image_token(inputs, types):
            embeds = adapter.insert(inputs, adapter.encode_images(inputs))
            out = adapter.model(
                inputs_embeds=embeds,
                attention_mask=inputs.attention_mask,
                token_type_ids=types,
                output_hidden_states=True,
            )
            return out.hidden_states[-1][0, int(inputs.image_token_mask[0].nonzero()[0])]

        prefix = [first_image_token(p, adapter.image_token_types(p)["token_type_ids"]) for p in prompts]
        suffix = [first_image_token(p, torch.ones_like(p.input_ids)) for p in prompts]
    assert not torch.allclose(prefix[0], prefix[1])
    assert torch.equal(suffix[0], suffix[1])


def test_positions_start_at_one_as_the_model_counts_them(image):
    adapter = cached_preset("tiny-paligemma")
    adapter.tokenizer.padding_side = "left"
    try:
        inputs = adapter.build_inputs(
            [image(112, 112, 1), image(112, 112, 2)], ["<image> what?", "<image> and a longer question?"]
        )
    finally:
        adapter.tokenizer.padding_side = "right"
    tokens = adapter.encode_images(inputs)
    forward = full_sequence_kwargs(adapter, inputs, tokens)["position_ids"]
    generation = full_sequence_kwargs(adapter, inputs, tokens, generation=True)["position_ids"]
    assert forward[0, 0] == 1 and forward[0, -1] == inputs.input_ids.shape[1]
    first_real = int(inputs.attention_mask[0].nonzero()[0])
    assert first_real > 0 and generation[0, first_real] == 1  # each row counts its real tokens from 1
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        embeds = adapter.insert(inputs, tokens)
        own = adapter.model(
            inputs_embeds=embeds, attention_mask=inputs.attention_mask, **adapter.image_token_types(inputs)
        ).logits
        given = adapter.model(
            inputs_embeds=embeds,
            attention_mask=inputs.attention_mask,
            position_ids=forward,
            **adapter.image_token_types(inputs),
        ).logits
    # Rotary attention sees only differences of positions, so the offset changes results only in
    # their last bits; generating bit for bit like `generate` (tests/test_generate.py) needs it.
    assert torch.equal(given, own)


def test_a_processor_writing_another_count_is_refused(tmp_path):
    adapter = build_preset("tiny-paligemma")
    adapter.processor.image_seq_length = 49
    with pytest.raises(
        ImageTokenMismatch, match="image_seq_length=49 placeholders per image but the tower gives 64"
    ):
        type(adapter)(adapter.model, adapter.processor)


def test_doctor_names_what_is_wrong_with_a_paligemma_checkpoint(tmp_path):
    cached_preset("tiny-paligemma").save_pretrained(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["doctor", str(tmp_path)]).exit_code == 0
    config = json.loads((tmp_path / "config.json").read_text())
    config["image_token_index"] = 2  # <bos>
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["doctor", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert "the processor writes '<image>'" in json.loads(result.stdout)["error"]
