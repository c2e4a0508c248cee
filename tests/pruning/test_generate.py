"""Generated answers after a pruned prefill: equal to the model's own `generate` when everything is
kept, and consistent with a full recomputation when tokens are dropped (before the first layer,
after FastV's layer K, or in PDrop's stages)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from tests.helpers import FAMILIES, SIDES, keep_all_generation, model_generate, padded_on
from visionloom.backbones.tiny import build_preset
from visionloom.pruning import generate as generation
from visionloom.pruning.apply import last_real_positions
from visionloom.pruning.generate import chat_prompt, generate
from visionloom.pruning.prefill import prefill
from visionloom.pruning.pruners import PDrop, RandomPruner, TextAttention

QUESTIONS = ["<image> what is this?", "and <image> a longer question here?"]
# Four language-model layers, so PDrop has three stages; Gemma3 alternates sliding and full
# attention with a window shorter than the prompt, so both kinds of cache slot are exercised.
DEEP = {"text_layers": 4}
GEMMA_MIXED = {
    "text_overrides": {
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "sliding_window": 8,
    }
}


def _inputs(adapter, image, side: str):
    with padded_on(adapter, side):
        inputs = adapter.build_inputs([image(112, 112, 1), image(112, 112, 2)], QUESTIONS)
    assert inputs.attention_mask[0].sum() < inputs.attention_mask.shape[1]  # really padded
    return inputs


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_keep_all_generation_is_the_models_own_generate(name, side, image):
    """Left padding: every step's logits bit for bit. Right padding, which `generate` itself mishandles
    in a decoder-only model (it reads the last column, a pad), is compared with `generate` on the
    same samples padded left: the same tokens, and logits equal up to float32 rounding, since the
    padding sits elsewhere in the sums (measured differences about 2e-7)."""
    adapter = build_preset(name)
    steps = 6
    ours = keep_all_generation(adapter, _inputs(adapter, image, side), steps)
    reference_side = side if adapter.model.config.is_encoder_decoder else "left"
    with torch.no_grad():
        answers, logits = model_generate(adapter, _inputs(adapter, image, reference_side), steps)
    assert ours.tokens == answers
    assert len(ours.logits) == len(logits) == steps
    for step, (mine, theirs) in enumerate(zip(ours.logits, logits, strict=True)):
        if reference_side == side:
            assert torch.equal(mine, theirs), f"step {step}"
        else:
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5, msg=f"step {step}")


def _appended(inputs, new_tokens: list[list[int]]):
    """The left-padded batch with generated tokens appended, as text."""
    ids = torch.tensor(new_tokens)
    return replace(
        inputs,
        input_ids=torch.cat([inputs.input_ids, ids], 1),
        attention_mask=torch.cat([inputs.attention_mask, torch.ones_like(ids)], 1),
        image_token_mask=torch.cat([inputs.image_token_mask, torch.zeros_like(ids, dtype=torch.bool)], 1),
    )


@pytest.mark.parametrize(
    "name", ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-gemma3", "tiny-deepseek-vl"]
)
def test_cached_decoding_after_a_drop_matches_recomputing_the_pruned_sequence(name, image):
    """Each decoding step through the stretches' caches gives the logits of a fresh pruned prefill of
    prompt + tokens so far (same decision; PDrop ranked from the same query token). The two differ
    only in summation order (one query row against cached keys, measured about 3e-7); decoding
    with the positions renumbered after the drop, as `generate` would, moves them by far more."""
    adapter = build_preset(name, **DEEP, **(GEMMA_MIXED if name == "tiny-gemma3" else {}))
    adapter.use_eager_attention()
    inputs = _inputs(adapter, image, "left")
    query = last_real_positions(inputs.attention_mask)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        for pruner in (RandomPruner(1), TextAttention(1), PDrop()):
            decision = pruner.decide(adapter, inputs, tokens, 0.5)
            ours = generate(adapter, inputs, tokens, decision, max_new_tokens=3, keep_logits=True)
            for step in (1, 2):
                so_far = [[int(logits[row].argmax()) for logits in ours.logits[:step]] for row in range(2)]
                fresh = prefill(
                    adapter,
                    _appended(inputs, so_far),
                    tokens,
                    replace(decision, hidden_entering=None),
                    generation=True,
                    query_positions=query,
                )
                torch.testing.assert_close(
                    ours.logits[step],
                    fresh.output.logits[:, -1],
                    rtol=0,
                    atol=1e-5,
                    msg=f"{pruner.name} step {step}",
                )
        # The check has teeth: positions renumbered to the pruned length change the logits.
        decision = RandomPruner(1).decide(adapter, inputs, tokens, 0.5)
        right = generate(adapter, inputs, tokens, decision, max_new_tokens=2, keep_logits=True)
        renumbered = generation.next_positions
        try:
            generation.next_positions = lambda state, mask: state.attention_mask.sum(1)
            wrong = generate(adapter, inputs, tokens, decision, max_new_tokens=2, keep_logits=True)
        finally:
            generation.next_positions = renumbered
    assert (right.logits[1] - wrong.logits[1]).abs().max() > 1e-3


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_pdrop_keeping_everything_is_the_model_and_its_stages_shrink_the_sequence(name, side, image):
    adapter = build_preset(name, **DEEP, **(GEMMA_MIXED if name == "tiny-gemma3" else {}))
    adapter.use_eager_attention()  # the ranking reads attention weights
    inputs = _inputs(adapter, image, side)
    flags = {"decoder_input_ids": torch.tensor([[1, 2], [1, 2]])} if adapter.family == "t5gemma2" else {}
    pruner = PDrop()
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        reference = adapter.forward(inputs, tokens, **flags)
        kept_all = prefill(
            adapter, inputs, tokens, pruner.decide(adapter, inputs, tokens, 1.0), **flags
        ).output
        key = "logits" if reference.logits is not None else "last_hidden_state"
        assert torch.equal(getattr(kept_all, key), getattr(reference, key))

        state = prefill(adapter, inputs, tokens, pruner.decide(adapter, inputs, tokens, 0.25), **flags)
    assert [stretch.start for stretch in state.stretches] == [0, 1, 2, 3]
    structural = [len(adapter.structural_offsets(g)) for g in inputs.geometries]
    candidates = [count - layout for count, layout in zip(tokens.counts, structural, strict=True)]
    share = 0.25 ** (1 / 3)
    expected = list(candidates)
    for _ in range(3):  # each stage keeps ceil(share * what is left) of the candidates
        expected = [max(1, math.ceil(share * count)) for count in expected]
    assert [len(k) for k in state.keep] == [e + s for e, s in zip(expected, structural, strict=True)]
    real = [int(length) for length in inputs.attention_mask.sum(1)]
    dropped_total = [c - e for c, e in zip(candidates, expected, strict=True)]
    assert [int(x) for x in state.lengths[-1][1]] == [r - d for r, d in zip(real, dropped_total, strict=True)]
    lengths = [lengths.tolist() for _, lengths in state.lengths]
    assert all(later[0] < earlier[0] for earlier, later in zip(lengths[:-1], lengths[1:], strict=True))
    for image_index, keep in enumerate(state.keep):
        assert set(adapter.structural_offsets(inputs.geometries[image_index])) <= set(keep.tolist())


def test_pdrop_refuses_layers_outside_the_model_and_needs_eager_attention(image):
    adapter = build_preset("tiny-llava")
    inputs = _inputs(adapter, image, "right")
    tokens = adapter.encode_images(inputs)
    with pytest.raises(ValueError, match="within 1..1"):
        PDrop(layers=[1, 2]).decide(adapter, inputs, tokens, 0.5)
    with torch.no_grad(), pytest.raises(ValueError, match="needs eager attention"):
        prefill(adapter, inputs, tokens, PDrop().decide(adapter, inputs, tokens, 0.5))


LLAVA_1_5_TEMPLATE = (
    # llava-hf/llava-1.5-7b-hf, chat_template.json (the user turn, image before text, "ASSISTANT:").
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] "
    "!= 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_chat_prompt_uses_the_checkpoints_template_and_refuses_a_checkpoint_without_one(image):
    adapter = build_preset("tiny-llava")
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(adapter, "is there a cat?")
    assert chat_prompt(adapter, "is there a cat?", "plain") == "<image>\nis there a cat?"
    adapter.processor.chat_template = LLAVA_1_5_TEMPLATE
    text = chat_prompt(adapter, "is there a cat?")
    assert text == "USER: <image>\nis there a cat? ASSISTANT:"
    inputs = adapter.build_inputs([image(112, 112, 1)], [text])
    bos = adapter.tokenizer.bos_token_id
    assert inputs.input_ids[0].tolist().count(bos) <= 1
    assert inputs.image_token_mask.sum() == 64


@pytest.mark.parametrize("release", ["llava-1.5-7b-hf", "qwen2.5-vl-3b-instruct", "gemma-3-4b-it"])
def test_released_chat_templates_prompt_real_shaped_checkpoints_and_generation_is_the_models(release, image):
    """The release's own chat_template.json, its special ids and its padding side: the prompt holds
    the family's image marker and the generation prompt, and keep-all generation is `generate`."""
    from tests.hub_checkpoints import checkpoint
    from visionloom.backbones import load

    adapter = load(checkpoint(release))
    texts = [
        chat_prompt(adapter, "is there a cat?"),
        chat_prompt(adapter, "what colour is the large square?"),
    ]
    ending = {"llava-1.5-7b-hf": "ASSISTANT:", "qwen2.5-vl-3b-instruct": "<|im_start|>assistant\n"}
    assert texts[0].endswith(ending.get(release, "<start_of_turn>model\n"))
    with padded_on(adapter, "left"):
        inputs = adapter.build_inputs([image(200, 300, 1), image(336, 336, 2)], texts)
    assert inputs.attention_mask[0].sum() < inputs.attention_mask.shape[1]
    bos = adapter.tokenizer.bos_token_id
    if bos is not None:
        assert all(
            row[mask.bool()].tolist().count(bos) <= 1
            for row, mask in zip(inputs.input_ids, inputs.attention_mask, strict=True)
        )
    ours = keep_all_generation(adapter, inputs, 4)
    with torch.no_grad():
        answers, logits = model_generate(adapter, inputs, 4)
    assert ours.tokens == answers
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(ours.logits, logits, strict=True))


def test_a_qwen_chat_template_survives_saving_and_loading(tmp_path):
    """Qwen's processor is assembled by the layer (no torchvision video processor); it must still
    carry the checkpoint's template, written as chat_template.jinja by transformers 5."""
    from tests.hub_checkpoints import FIXTURES
    from visionloom.backbones import load

    adapter = build_preset("tiny-qwen2.5-vl")
    released = json.loads((FIXTURES / "qwen2.5-vl-3b-instruct" / "chat_template.json").read_text())
    adapter.processor.chat_template = released["chat_template"]
    adapter.save_pretrained(tmp_path / "qwen")
    assert (tmp_path / "qwen" / "chat_template.jinja").is_file()
    reloaded = load(tmp_path / "qwen")
    assert chat_prompt(reloaded, "is it red?") == chat_prompt(adapter, "is it red?")
    assert "<|vision_start|><|image_pad|><|vision_end|>is it red?<|im_end|>" in chat_prompt(
        reloaded, "is it red?"
    )


@pytest.mark.parametrize("side", SIDES)
def test_pdrop_with_rows_that_keep_different_counts(side, image):
    """LLaVA-NeXT images of different sizes have different token counts, so the rows of a stretch
    differ in length and the shorter ones end (or start) in fill; the kept tokens must still be
    found and gathered by their full-sequence positions."""
    adapter = build_preset("tiny-llava-next", **DEEP)
    adapter.use_eager_attention()
    # Row 0: the larger image and a short question, the longest row, unpadded. Row 1: a smaller
    # image and a long question; it loses fewer tokens and ends longer, so row 0 needs fill.
    long_question = "<image> " + " ".join(["is the red circle left of the blue square"] * 3) + "?"
    with padded_on(adapter, side):
        inputs = adapter.build_inputs(
            [image(112, 112, 1), image(56, 112, 2)], ["<image> what?", long_question]
        )
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        assert tokens.counts[0] > tokens.counts[1]
        assert inputs.attention_mask[0].all()
        state = prefill(adapter, inputs, tokens, PDrop().decide(adapter, inputs, tokens, 0.3))
    assert (state.layout < 0).any()  # the rows really differ in length
    for image_index, (sample, positions) in enumerate(inputs.placeholders()):
        present = state.layout[sample][state.layout[sample] >= 0]
        in_image = present[torch.isin(present, positions)]
        assert torch.equal(in_image, positions[state.keep[image_index]])
