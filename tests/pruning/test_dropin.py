"""`visionloom.pruning.wrap`: transformers code keeps calling `generate(**processor_outputs, ...)`
and gets transformers' outputs, with the image tokens pruned; keep-all is `generate` token for
token for every family and padding side, stopping follows the generation config, and every option
the pruned loop does not follow is refused by name."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

from tests.helpers import FAMILIES, SIDES, padded_on
from visionloom.backbones.tiny import build_preset
from visionloom.pruning import wrap
from visionloom.pruning.generate import generate as pruned_generate
from visionloom.pruning.pruners import VisionZip

QUESTIONS = ["<image> what is this?", "and <image> a longer question here?"]
STEPS = 6


def processed(adapter, image, side: str, sizes=((112, 112), (112, 112))) -> dict:
    """The processor's outputs as a user's script gets them: its own call, padded on `side`."""
    texts = [adapter._family_markers(text) for text in QUESTIONS]
    images = [image(height, width, seed) for seed, (height, width) in enumerate(sizes, start=1)]
    # Gemma 3 and SmolVLM take the images grouped per sample.
    grouped = adapter.nested_images or adapter.family in ("gemma3", "t5gemma2")
    # InternVL's processor pads on the left unless told; the tokenizer's side is what is tested.
    side_kwargs = {"padding_side": side} if adapter.family == "internvl" else {}
    with padded_on(adapter, side):
        outputs = adapter.processor(
            text=texts,
            images=[[im] for im in images] if grouped else images,
            padding=True,
            return_tensors="pt",
            **side_kwargs,
        )
    return dict(outputs)


def new_tokens(model, outputs, sequences: torch.Tensor) -> torch.Tensor:
    start = 1 if model.config.is_encoder_decoder else outputs["input_ids"].shape[1]
    return sequences[:, start:]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", FAMILIES)
def test_keep_all_through_the_wrapper_is_generate_token_for_token(name, side, image):
    """Right padding is compared with `generate` on the same samples padded left (generate itself
    reads a pad as the last token of a right-padded decoder-only row)."""
    adapter = build_preset(name)
    model = adapter.model
    ours_in = processed(adapter, image, side)
    reference_side = side if model.config.is_encoder_decoder else "left"
    theirs_in = processed(adapter, image, reference_side)
    options = {
        "max_new_tokens": STEPS,
        "do_sample": False,
        "return_dict_in_generate": True,
        "output_logits": True,
    }
    ours = wrap(model, adapter.processor, pruner="keep-all").generate(**ours_in, **options)
    theirs = model.generate(**theirs_in, **options)
    assert isinstance(ours, type(theirs))
    assert torch.equal(ours.sequences[:, : ours_in["input_ids"].shape[1]], ours_in["input_ids"]) or (
        model.config.is_encoder_decoder
    )
    assert torch.equal(
        new_tokens(model, ours_in, ours.sequences), new_tokens(model, theirs_in, theirs.sequences)
    )
    assert len(ours.logits) == len(theirs.logits) == STEPS
    for step, (mine, reference) in enumerate(zip(ours.logits, theirs.logits, strict=True)):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl", "tiny-llava-next"])
def test_a_pruned_wrapper_generates_what_the_layer_generates_with_the_same_decision(name, image):
    adapter = build_preset(name)
    outputs = processed(adapter, image, "left")
    wrapped = wrap(adapter.model, adapter.processor, pruner="visionzip", keep_ratio=0.25)
    sequences = wrapped.generate(**outputs, max_new_tokens=STEPS)
    # The same batch through the layer's own path: inputs built, decided, generated.
    with padded_on(adapter, "left"):
        inputs = adapter.build_inputs([image(112, 112, 1), image(112, 112, 2)], QUESTIONS)
    with torch.no_grad():
        tokens = adapter.encode_images(inputs)
        decision = VisionZip().decide(adapter, inputs, tokens, 0.25)
        expected = pruned_generate(adapter, inputs, tokens, decision, max_new_tokens=STEPS)
    assert torch.equal(new_tokens(adapter.model, outputs, sequences), expected.sequences)
    assert all(len(keep) < count for keep, count in zip(decision.keep, tokens.counts, strict=True))
    keep_all = wrap(adapter.model, adapter.processor).generate(**outputs, max_new_tokens=STEPS)
    assert keep_all.shape == sequences.shape


def test_fastv_by_its_paper_name_and_its_settings(image):
    adapter = build_preset("tiny-llava")
    outputs = processed(adapter, image, "left")
    wrapped = wrap(adapter.model, adapter.processor, pruner="fastv", keep_ratio=0.5, text_layer=0)
    assert wrapped.pruner.name == "text-attention" and wrapped.pruner.layer == 0
    assert wrapped.generate(**outputs, max_new_tokens=2).shape == (2, outputs["input_ids"].shape[1] + 2)
    assert wrapped.config is adapter.model.config  # everything else is the model's


def test_a_row_that_ends_is_padded_after_its_end_token_as_generate_pads_it(image):
    adapter = build_preset("tiny-qwen2.5-vl")
    model = adapter.model
    outputs = processed(adapter, image, "left")
    free = model.generate(**outputs, max_new_tokens=STEPS, do_sample=False)
    end = int(new_tokens(model, outputs, free)[0, 2])  # row 0's third token ends it
    options = {"max_new_tokens": STEPS, "do_sample": False, "eos_token_id": end, "pad_token_id": 0}
    ours = wrap(model, adapter.processor).generate(**outputs, **options)
    theirs = model.generate(**outputs, **options)
    assert torch.equal(ours, theirs)
    row = new_tokens(model, outputs, ours)[0].tolist()
    assert row[2] == end and set(row[3:]) <= {0}


def test_stopping_follows_the_generation_config_not_the_tokenizer(image):
    """The InternVL preset's generation config names no end token: generate runs to
    max_new_tokens even past the tokenizer's end token, and so does the wrapper."""
    adapter = build_preset("tiny-internvl")
    model = adapter.model
    assert model.generation_config.eos_token_id is None
    outputs = processed(adapter, image, "left")
    free = model.generate(**outputs, max_new_tokens=STEPS, do_sample=False)
    adapter.tokenizer.eos_token = adapter.tokenizer.convert_ids_to_tokens(
        int(new_tokens(model, outputs, free)[0, 1])
    )
    ours = wrap(model, adapter.processor).generate(**outputs, max_new_tokens=STEPS)
    assert torch.equal(ours, model.generate(**outputs, max_new_tokens=STEPS, do_sample=False))
    assert new_tokens(model, outputs, ours).shape[1] == STEPS


def test_max_length_from_the_generation_config_counts_the_prompt(image):
    adapter = build_preset("tiny-llava")
    outputs = processed(adapter, image, "left")
    length = outputs["input_ids"].shape[1]
    config = GenerationConfig(**{**adapter.model.generation_config.to_dict(), "max_length": length + 3})
    ours = wrap(adapter.model, adapter.processor).generate(**outputs, generation_config=config)
    assert ours.shape[1] == length + 3
    with pytest.raises(ValueError, match=r"max_length .* leaves no new token .* pass max_new_tokens"):
        wrap(adapter.model, adapter.processor).generate(**outputs, max_length=length)


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"do_sample": True}, "do_sample=True"),
        ({"num_beams": 2}, "num_beams=2"),
        ({"repetition_penalty": 1.05}, "repetition_penalty=1.05"),
        ({"output_attentions": True}, "output_attentions=True"),
        ({"min_new_tokens": 3}, "min_new_tokens=3"),
    ],
)
def test_an_option_the_loop_does_not_follow_is_refused_by_name(option, named, image):
    adapter = build_preset("tiny-llava")
    outputs = processed(adapter, image, "left")
    with pytest.raises(ValueError, match=rf"^{named} \(a generate option.*is not followed"):
        wrap(adapter.model, adapter.processor).generate(**outputs, max_new_tokens=2, **option)


def test_sampling_settings_in_the_generation_config_are_refused_until_turned_off(image):
    """Qwen2.5-VL's released generation_config.json samples (do_sample true, repetition_penalty 1.05)."""
    adapter = build_preset("tiny-qwen2.5-vl")
    adapter.model.generation_config.update(do_sample=True, repetition_penalty=1.05, temperature=0.1, top_k=1)
    outputs = processed(adapter, image, "left")
    wrapped = wrap(adapter.model, adapter.processor)
    with pytest.raises(ValueError, match=r"do_sample=True .* pass do_sample=False"):
        wrapped.generate(**outputs, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"repetition_penalty=1.05 .* pass repetition_penalty="):
        wrapped.generate(**outputs, max_new_tokens=2, do_sample=False)
    ours = wrapped.generate(**outputs, max_new_tokens=2, do_sample=False, repetition_penalty=1.0)
    theirs = adapter.model.generate(**outputs, max_new_tokens=2, do_sample=False, repetition_penalty=1.0)
    assert torch.equal(ours, theirs)


def test_bad_names_inputs_and_ratios_are_refused_by_name(image):
    adapter = build_preset("tiny-llava")
    outputs = processed(adapter, image, "left")
    with pytest.raises(ValueError, match="unknown pruner 'fast-v'; known: keep-all, random"):
        wrap(adapter.model, adapter.processor, pruner="fast-v")
    with pytest.raises(ValueError, match="'learned' is trained on the scene questions"):
        wrap(adapter.model, adapter.processor, pruner="learned")
    with pytest.raises(ValueError, match="unknown pruner setting.*text_layers; known: tower_block"):
        wrap(adapter.model, adapter.processor, pruner="fastv", text_layers=2)
    with pytest.raises(ValueError, match=r"keep_ratio 0 must be in \(0, 1\]"):
        wrap(adapter.model, adapter.processor, pruner="random", keep_ratio=0)
    wrapped = wrap(adapter.model, adapter.processor)
    with pytest.raises(
        ValueError, match="pixel_mask: neither an input of LlavaForConditionalGeneration.forward"
    ):
        wrapped.generate(**outputs, pixel_mask=torch.ones(1), max_new_tokens=2)
    text_only = {k: v for k, v in outputs.items() if k != "pixel_values"}
    text_only["input_ids"] = text_only["input_ids"].masked_fill(
        text_only["input_ids"] == adapter.image_token_id, 5
    )
    with pytest.raises(ValueError, match="no image .* nothing to prune"):
        wrapped.generate(**text_only, max_new_tokens=2)


def test_an_unsupported_model_is_refused_by_name():
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    with pytest.raises(ValueError, match=r"BertModel \(model_type 'bert'\) is not a supported family"):
        wrap(model, None)


def test_an_internvl_mosaic_whose_layout_the_outputs_do_not_tell_asks_for_image_sizes(image):
    adapter = build_preset("tiny-internvl")
    sizes = ((40, 64), (64, 40))  # 1x2 and 2x1 tiles (+ the whole image): 3 tiles each
    outputs = processed(adapter, image, "left", sizes=sizes)
    wrapped = wrap(adapter.model, adapter.processor)
    with pytest.raises(ValueError, match=r"1x2 or 2x1.* pass image_sizes=\[\(height, width\)"):
        wrapped.generate(**outputs, max_new_tokens=2)
    ours = wrapped.generate(**outputs, image_sizes=list(sizes), max_new_tokens=STEPS)
    assert torch.equal(ours, adapter.model.generate(**outputs, max_new_tokens=STEPS, do_sample=False))


def test_the_output_class_is_transformers_own(image):
    adapter = build_preset("tiny-llava")
    outputs = processed(adapter, image, "left")
    out = wrap(adapter.model, adapter.processor).generate(
        **outputs, max_new_tokens=2, return_dict_in_generate=True, output_scores=True
    )
    assert isinstance(out, GenerateDecoderOnlyOutput)
    assert (
        out.logits is None
        and len(out.scores) == 2
        and out.scores[0].shape == (2, adapter.model.config.text_config.vocab_size)
    )
