"""Drop-in pruning for code written against `transformers`: `wrap(model, processor, pruner=..., keep_ratio=...)`.

An evaluation script built on `model.generate(**processor(text=..., images=...), max_new_tokens=...)`
keeps its code: the wrapped model's `generate` takes the processor's outputs and the usual options,
and returns what `generate` returns (the `sequences` tensor, or with `return_dict_in_generate=True`
a `GenerateDecoderOnlyOutput` / `GenerateEncoderDecoderOutput` with `scores` and `logits` when
asked), with the image tokens pruned on the way. Keeping every token gives `generate`'s own tokens.

Decoding is greedy, stops where the generation config says (its `eos_token_id`, `max_new_tokens`
or `max_length`), and writes the pad id after a row's end, as `generate` does. Any other option,
passed or set in the model's generation config (sampling, beams, repetition penalty, ...), is
refused by name rather than ignored. The wrapper delegates every other attribute to the model.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.registry import ADAPTERS
from visionloom.backbones.types import MultimodalInputs
from visionloom.pruning.build import PRUNERS
from visionloom.pruning.config import PruneConfig
from visionloom.pruning.generate import Generated
from visionloom.pruning.generate import generate as pruned_generate
from visionloom.pruning.pruners import KeepAll, Pruner

# Names the papers use, beside visionloom's own.
ALIASES = {"fastv": "text-attention", "prumerge": "tower-attention-merge"}

# Pruner settings `wrap` passes on (the rest of a PruneConfig concerns `prune eval`'s benchmark runs).
PRUNER_SETTINGS = ("tower_block", "text_layer", "pdrop_layers", "seed")

# GenerationConfig's defaults: which names are generation options, and each one's default.
DEFAULTS = GenerationConfig()

# Generation settings the pruned loop follows; the sampling settings below only matter when sampling,
# and `generate` ignores them too when decoding greedily.
FOLLOWED = {
    "max_new_tokens",
    "max_length",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "decoder_start_token_id",
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "transformers_version",
    "_from_model_config",
}
SAMPLING_ONLY = {"temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}
# Settings followed only at the value that turns them off.
NEUTRAL = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    "use_cache": True,
    "repetition_penalty": 1.0,
    "output_attentions": False,
    "output_hidden_states": False,
}


def pruner_names() -> list[str]:
    """The pruners `wrap` takes by name (the learned scorer trains on scene questions: not here)."""
    return ["keep-all", *[name for name in PRUNERS if name != "learned"], *ALIASES]


def wrap(
    model: PreTrainedModel,
    processor: Any,
    *,
    pruner: str = "keep-all",
    keep_ratio: float = 1.0,
    **settings: Any,
) -> PrunedModel:
    """A loaded transformers VLM whose `generate` prunes image tokens.

    Args:
        model: any model of a supported family (`visionloom preset list`, or from `from_pretrained`).
        processor: its processor (the one whose outputs `generate` will get).
        pruner: `keep-all`, `random`, `tower-attention`, `tower-attention-merge` (PruMerge-style,
            alias `prumerge`), `visionzip`, `text-attention` (FastV, alias `fastv`) or `pdrop`.
        keep_ratio: the share of each image's tokens kept, in (0, 1].
        **settings: the pruner's settings, as in a pruning config: `tower_block`, `text_layer`
            (FastV's K), `pdrop_layers`, `seed` (the random pruner's).

    Returns:
        `PrunedModel`: `generate` as transformers' own, every other attribute the model's.

    Raises:
        ValueError: an unknown family, pruner or setting, or a keep ratio outside (0, 1].
    """
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{type(model).__name__} (model_type {model_type!r}) is not a supported family; "
            f"supported: {', '.join(sorted(ADAPTERS))}"
        )
    adapter = ADAPTERS[model_type](model, processor)
    return PrunedModel(adapter, make_named_pruner(adapter, pruner, settings), keep_ratio)


def make_named_pruner(adapter: ImageTokenAdapter, name: str, settings: dict[str, Any]) -> Pruner:
    """A pruner by name with settings from `PRUNER_SETTINGS`; ValueError naming what is unknown."""
    unknown = sorted(set(settings) - set(PRUNER_SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown pruner setting(s) {', '.join(unknown)}; known: {', '.join(PRUNER_SETTINGS)}"
        )
    if name == "learned":
        raise ValueError(
            "pruner 'learned' is trained on the scene questions by `visionloom prune eval`; it cannot be "
            f"built here. Known here: {', '.join(pruner_names())}"
        )
    canonical = ALIASES.get(name, name)
    if canonical == "keep-all":
        return KeepAll()
    if canonical not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; known: {', '.join(pruner_names())}")
    config = PruneConfig(**settings)
    if canonical in ("text-attention", "pdrop"):
        adapter.use_eager_attention()  # they rank by attention weights, which only eager attention returns
    return PRUNERS[canonical](config, adapter, [], None)


class PrunedModel:
    """A transformers VLM with a pruning `generate`; every other attribute is the model's own."""

    def __init__(self, adapter: ImageTokenAdapter, pruner: Pruner, keep_ratio: float):
        if not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio {keep_ratio} must be in (0, 1]")
        self.adapter = adapter
        self.pruner = pruner
        self.keep_ratio = keep_ratio
        self.model = adapter.model
        self._model_input_names = set(inspect.signature(self.model.forward).parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"PrunedModel({type(self.model).__name__}, pruner={self.pruner.name}, keep_ratio={self.keep_ratio})"

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | GenerateDecoderOnlyOutput | GenerateEncoderDecoderOutput:
        """`generate` with the image tokens pruned: the processor's outputs in, transformers' outputs out.

        Args:
            input_ids: LongTensor [B, S] from the processor (padded on either side).
            attention_mask: LongTensor [B, S] (default: all ones).
            generation_config: as in `generate` (default: the model's).
            **kwargs: the processor's other outputs (pixel values, grids, sizes) and generation
                options (`max_new_tokens`, `max_length`, `eos_token_id`, `pad_token_id`,
                `do_sample=False`, `num_beams=1`, `return_dict_in_generate`, `output_scores`,
                `output_logits`). `image_sizes=[(height, width), ...]` gives each image's size
                where the processed outputs do not tell its tile layout (InternVL mosaics).

        Returns:
            LongTensor [B, S + T] (decoder-only: the ids as given, then the new tokens; T5Gemma 2:
            the decoder's start token, then the new tokens), or with `return_dict_in_generate=True`
            transformers' output class with `sequences` and, when asked, `scores` and `logits`
            (tuples of [B, V] per step; greedy decoding applies no processor, so the two agree).
            `past_key_values` is None: the pruned cache has a stretch per drop, not one cache.

        Raises:
            ValueError: an option the pruned generation does not follow, an input the model does
                not take, or inputs without an image.
        """
        options = {key: kwargs.pop(key) for key in list(kwargs) if hasattr(DEFAULTS, key)}
        config = self.generation_config_for(generation_config, options)
        # Each image's (height, width): a processor output of some families, a hint for others.
        sizes = kwargs.get("image_sizes")
        if sizes is not None and "image_sizes" not in self._model_input_names:
            kwargs.pop("image_sizes")
        adapter = self.adapter
        model_inputs = adapter.normalise_processed(dict(kwargs))
        unknown = sorted(key for key in model_inputs if key not in self._model_input_names)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: neither an input of {type(self.model).__name__}.forward nor a "
                "generate option the pruned generation follows"
            )
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        geometries = adapter.geometries_from_processed(input_ids, model_inputs, sizes)
        if not geometries:
            raise ValueError(
                "the inputs hold no image (no pixel values): nothing to prune; call the model's own generate"
            )
        inputs = adapter.inputs_from_processed(input_ids, attention_mask, model_inputs, geometries)
        generated = self._generate(inputs, config)
        new = generated.sequences.to(input_ids.device)  # [B, T]
        if self.model.config.is_encoder_decoder:
            start = (
                config.decoder_start_token_id
                if config.decoder_start_token_id is not None
                else config.bos_token_id
            )
            prefix = torch.full((new.shape[0], 1), int(start), dtype=new.dtype, device=new.device)
        else:
            prefix = input_ids
        sequences = torch.cat([prefix, new.to(prefix.dtype)], dim=1)
        if not config.return_dict_in_generate:
            return sequences
        steps = tuple(logits.float() for logits in generated.logits or [])
        fields_ = {
            "sequences": sequences,
            "scores": steps if config.output_scores else None,
            "logits": steps if config.output_logits else None,
        }
        if self.model.config.is_encoder_decoder:
            return GenerateEncoderDecoderOutput(**fields_)
        return GenerateDecoderOnlyOutput(**fields_)

    @torch.no_grad()
    def generate_from_inputs(self, inputs: MultimodalInputs, **options: Any) -> Generated:
        """The pruned generation of inputs the layer built (`adapter.build_inputs`), for code that
        starts from images and texts rather than processor outputs (the lmms-eval model).

        Args:
            inputs: from `self.adapter.build_inputs` (padded on either side).
            **options: generation options, as `generate` takes them.

        Returns:
            `Generated`: per sample the answer's ids up to its end token, and `sequences` [B, T].
        """
        return self._generate(inputs, self.generation_config_for(None, options))

    def generation_config_for(
        self, generation_config: GenerationConfig | None, options: dict
    ) -> GenerationConfig:
        """The model's (or the given) generation config updated with `options`; ValueError naming
        a setting the pruned loop would not follow."""
        unknown = sorted(key for key in options if not hasattr(DEFAULTS, key))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a generation option")
        config = copy.deepcopy(generation_config or self.model.generation_config)
        config.update(**options)
        refuse_unfollowed(config)
        return config

    def _generate(self, inputs: MultimodalInputs, config: GenerationConfig) -> Generated:
        adapter = self.adapter
        inputs = inputs.to(self.model.device)
        max_new_tokens = self._max_new_tokens(config, inputs.input_ids.shape[1])
        want_logits = bool(config.return_dict_in_generate and (config.output_scores or config.output_logits))
        tokens = adapter.encode_images(inputs)
        decision = self.pruner.decide(adapter, inputs, tokens, self.keep_ratio)
        return pruned_generate(
            adapter,
            inputs,
            tokens,
            decision,
            max_new_tokens=max_new_tokens,
            keep_logits=want_logits,
            generation_config=config,
        )

    def _max_new_tokens(self, config: GenerationConfig, prompt_length: int) -> int:
        """`max_new_tokens`, or what `max_length` leaves after the prompt (the decoder's start token)."""
        if config.max_new_tokens is not None:
            count = int(config.max_new_tokens)
        else:
            count = int(config.max_length) - (1 if self.model.config.is_encoder_decoder else prompt_length)
        if count < 1:
            raise ValueError(
                f"max_length {config.max_length} leaves no new token after the {prompt_length}-token prompt; "
                "pass max_new_tokens"
            )
        return count


def refuse_unfollowed(config: GenerationConfig) -> None:
    """ValueError naming the first setting (passed or in the generation config) that the pruned
    greedy loop would not follow."""
    for key, value in config.to_diff_dict().items():
        if (
            key not in FOLLOWED
            and key not in SAMPLING_ONLY
            and not (key in NEUTRAL and value == NEUTRAL[key])
        ):
            raise ValueError(
                f"{key}={value!r} (a generate option, or in the model's generation_config) is not followed by the "
                f"pruned generation, which decodes greedily and stops at the end token or the length limit; "
                f"pass {_neutral(key)} to generate"
            )


def _neutral(key: str) -> str:
    """The value that turns a setting off (else GenerationConfig's own default, mostly None)."""
    return f"{key}={NEUTRAL.get(key, getattr(DEFAULTS, key, None))!r}"
