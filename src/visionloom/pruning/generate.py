"""Generated answers from a pruned prefill: chat prompts and greedy decoding with a key/value cache.

Instruction-tuned VLMs are evaluated by what they generate. Here the prefill runs on the pruned
sequence (`prefill.py`, a cache per stretch of layers) and each new token then goes through the
same stretches with their own caches and masks, so decoding sees exactly the tokens the prefill
kept at each layer.

Positions continue from the full sequence: the t-th new token of a row takes the row's largest
prefill position + 1 + t, which is what `generate` computes (its last position + 1; Qwen2.5-VL's
`rope_deltas` give the same for the 3-D positions). Dropping tokens therefore never renumbers what
follows them.

The loop is written here, not `model.generate`: `generate` derives positions from the attention
mask (which after a drop would renumber the kept tokens) and runs every layer over one mask, which
cannot hold FastV's and PDrop's shorter later layers. Each step is the model's own forward.

Padding: each row's first new token is read at its last real token, and new tokens follow the
padding (masked) under right padding, so a batch padded on either side gives the same answers as
`generate` on the left-padded batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache, EncoderDecoderCache, GenerationConfig
from transformers.modeling_outputs import BaseModelOutput

from visionloom.backbones.base import ImageTokenAdapter
from visionloom.backbones.types import MultimodalInputs, VisionTokens
from visionloom.pruning.apply import last_real_positions, padding_side
from visionloom.pruning.decision import Decision
from visionloom.pruning.prefill import Prefill, prefill, run_stretch

PROMPT_STYLES = ("chat", "plain")


@dataclass
class Generated:
    """Greedy answers per sample (token ids, the end token excluded) and, when kept, the logits
    [B, V] of every step (for comparison with `generate`'s own)."""

    tokens: list[list[int]]
    logits: list[torch.Tensor] | None = None
    # [B, T]: the new tokens as `generate` returns them, each row's end token kept and the steps
    # after it filled with the pad id.
    sequences: torch.Tensor | None = None
    keep: list[torch.Tensor] | None = None  # per image, the placeholders left after the last drop
    lengths: list[tuple[int, torch.Tensor]] | None = None  # per stretch: layers, real tokens [B]
    prefill_seconds: float = 0.0  # wall clock of the pruned prefill
    cache_bytes: int = 0  # the key/value caches' size at the end (every stretch's layers)


def cache_nbytes(cache) -> int:
    """Bytes held by a transformers cache's keys and values (every layer that has them)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def chat_prompt(adapter: ImageTokenAdapter, question: str, style: str = "chat", images: int = 1) -> str:
    """The text for `images` images and one question: the checkpoint's chat template with a
    generation prompt ("chat"), or `<image>\\n{question}` as the scene VLMs were trained ("plain")."""
    if style == "plain":
        return "<image>\n" * images + question
    if style != "chat":
        raise ValueError(f"prompt style {style!r} is not one of {', '.join(PROMPT_STYLES)}")
    template = getattr(adapter.processor, "chat_template", None) or adapter.tokenizer.chat_template
    if not template:
        raise ValueError(
            f"{adapter.family}: the checkpoint has no chat template (chat_template.jinja or "
            f"chat_template.json); for a model trained without one, use the plain prompt (--set prompt=plain)"
        )
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    text = adapter.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokenizer = adapter.tokenizer
    bos = tokenizer.bos_token
    # Templates that write <bos> themselves: the processor adds it again when it tokenizes.
    if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos) :]
    return text


def _end_ids(config: GenerationConfig) -> list[int]:
    """The generation config's end tokens (one id or a list), in order."""
    ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    return [int(i) for i in ids if i is not None]


def stop_token_ids(adapter: ImageTokenAdapter, config: GenerationConfig | None = None) -> set[int]:
    """The ids that end an answer: the generation config's end tokens (default: the model's), as
    `generate` stops. A generation config without one runs to `max_new_tokens`, as `generate` does."""
    return set(_end_ids(config or adapter.model.generation_config))


def pad_token_id(adapter: ImageTokenAdapter, config: GenerationConfig | None = None) -> int:
    """The id `generate` writes after a row's end token: the generation config's pad id, else its
    first end token, else the tokenizer's pad id."""
    config = config or adapter.model.generation_config
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    ends = _end_ids(config)
    return ends[0] if ends else int(adapter.tokenizer.pad_token_id or 0)


def sliding_window_layers(adapter: ImageTokenAdapter) -> bool:
    """Whether some language-model layer attends within a sliding window (Gemma 3, Gemma 4)."""
    return "sliding_attention" in (getattr(adapter.config.get_text_config(), "layer_types", None) or [])


def left_padded(inputs: MultimodalInputs) -> MultimodalInputs:
    """The batch with each right-padded row's padding moved in front of its tokens.

    A sliding window counts cache columns, not positions: new tokens decoded after a right-padded
    row's padding would see that padding inside their window instead of the row's own last tokens
    (`generate` itself only works left-padded). Each row is rolled right by its padding length, and
    the image spans and placeholder positions with it; the pixels are unchanged.
    """
    if padding_side(inputs.attention_mask) == "left" or bool(inputs.attention_mask.all()):
        return inputs
    length = inputs.input_ids.shape[1]
    shifts = (length - inputs.attention_mask.sum(1)).cpu()  # [B] padding per row, all at its end
    source = (torch.arange(length)[None, :] - shifts[:, None]) % length  # [B, S] column taken from

    def roll(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.gather(1, source.to(tensor.device))

    owners = [sample for sample, _span in inputs.image_owner()]
    return replace(
        inputs,
        input_ids=roll(inputs.input_ids),
        attention_mask=roll(inputs.attention_mask),
        image_token_mask=roll(inputs.image_token_mask),
        image_spans=[
            [(start + int(shifts[row]), end + int(shifts[row])) for start, end in spans]
            for row, spans in enumerate(inputs.image_spans)
        ],
        image_positions=[
            positions + int(shifts[owner])
            for positions, owner in zip(inputs.image_positions, owners, strict=True)
        ],
    )


def next_positions(state: Prefill, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: each row's largest full-sequence position over its real tokens (every axis), plus one."""
    positions = state.full_positions  # [B, S] or [3, B, S]
    real = attention_mask.bool().to(positions.device)
    masked = positions.masked_fill(~real, -1)
    while masked.ndim > 2:
        masked = masked.amax(0)
    return masked.amax(-1) + 1


@torch.no_grad()
def generate(
    adapter: ImageTokenAdapter,
    inputs: MultimodalInputs,
    tokens: VisionTokens,
    decision: Decision,
    *,
    max_new_tokens: int,
    keep_logits: bool = False,
    generation_config: GenerationConfig | None = None,
) -> Generated:
    """Greedy answers decoded from the pruned key/value cache.

    The prefill runs on the kept tokens only (a cache per stretch of layers when tokens are dropped
    inside the language model); every kept token keeps its position in the full sequence, and new
    tokens continue from the largest one, as `generate` numbers them.

    Args:
        adapter: the image-token layer of the VLM.
        inputs: from `adapter.build_inputs`, the prompts (padded on either side).
        tokens: from `adapter.encode_images`.
        decision: from a pruner's `decide` (keep-all gives the model's own `generate` output).
        max_new_tokens: the most tokens to generate per sample; a sample stops at its end token.
        keep_logits: also return every step's logits [B, V].
        generation_config: where the end, pad and decoder start ids come from (default: the
            model's own).

    Returns:
        `Generated`: per sample, the answer's token ids (without the end token), and the kept
        tokens, stretch lengths and prefill time.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    config = generation_config or adapter.model.generation_config
    if adapter.model.config.is_encoder_decoder:
        return _generate_encoder_decoder(
            adapter, inputs, tokens, decision, max_new_tokens, keep_logits, config
        )
    if sliding_window_layers(adapter):
        inputs = left_padded(inputs)
    # Under left padding every row ends in the last column (`sequence_layout`), and only that one
    # goes through the output head, as in generate; otherwise each row's last real token is read.
    left = padding_side(inputs.attention_mask) == "left"
    started = time.perf_counter()
    state = prefill(
        adapter, inputs, tokens, decision, generation=True, use_cache=True, logits_to_keep=1 if left else 0
    )
    seconds = time.perf_counter() - started
    if left:
        column = torch.zeros(inputs.batch_size, dtype=torch.long)  # the one column kept
    else:
        last = last_real_positions(inputs.attention_mask).to(state.layout.device)  # [B], full sequence
        column = (state.layout == last.unsqueeze(1)).int().argmax(1)  # [B]
    logits = state.output.logits[
        torch.arange(inputs.batch_size), column.to(state.output.logits.device)
    ]  # [B, V]
    position = next_positions(state, inputs.attention_mask)  # [B]
    generated = _decode(
        adapter,
        config,
        logits,
        max_new_tokens,
        lambda token, step: _step(adapter, state, token, position + step),
        keep_logits,
    )
    held = sum(cache_nbytes(stretch.cache) for stretch in state.stretches if stretch.cache is not None)
    return replace(
        generated, keep=state.keep, lengths=state.lengths, prefill_seconds=seconds, cache_bytes=held
    )


def _step(
    adapter: ImageTokenAdapter, state: Prefill, token: torch.Tensor, position: torch.Tensor
) -> torch.Tensor:
    """One new token [B] at `position` [B] through every stretch; logits [B, V]."""
    hidden = adapter.text_embeddings(token.unsqueeze(1))  # [B, 1, D]
    if state.full_positions.ndim == 3:  # Qwen's 3-D positions: a text token has one on every axis
        positions = position.view(1, -1, 1).expand(3, -1, 1)  # [3, B, 1]
    else:
        positions = position.view(-1, 1)  # [B, 1]
    for index, stretch in enumerate(state.stretches):
        ones = torch.ones_like(stretch.attention_mask[:, :1])
        stretch.attention_mask = torch.cat([stretch.attention_mask, ones], dim=1)  # [B, S_i + t]
        last = index == len(state.stretches) - 1
        output, hidden = run_stretch(
            adapter, stretch, hidden, {"position_ids": positions.to(hidden.device)}, last=last
        )
    return output.logits[:, -1]


def _decode(
    adapter: ImageTokenAdapter,
    config: GenerationConfig,
    logits: torch.Tensor,
    max_new_tokens: int,
    step,
    keep_logits: bool,
) -> Generated:
    """Greedy decoding from the first logits [B, V]; `step(token [B], t)` gives the next logits."""
    stops = stop_token_ids(adapter, config)
    pad = pad_token_id(adapter, config)
    batch = logits.shape[0]
    answers: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    kept: list[torch.Tensor] = []
    columns: list[list[int]] = []  # per step, each row's token as generate writes it
    for t in range(max_new_tokens):
        if keep_logits:
            kept.append(logits)
        token = logits.argmax(-1)  # [B]
        # One transfer per step: the stopping test needs the values on the host anyway.
        values = token.tolist()
        column = []
        for row, value in enumerate(values):
            if finished[row]:
                column.append(pad)
                continue
            column.append(value)
            finished[row] = value in stops
            if not finished[row]:
                answers[row].append(value)
        columns.append(column)
        if all(finished) or t == max_new_tokens - 1:
            break
        # A finished row is fed the pad id, as generate feeds it: its logits go on but are unused.
        token = torch.tensor(column, dtype=token.dtype, device=token.device)
        logits = step(token, t)
    sequences = torch.tensor(columns, dtype=torch.long).T.contiguous()  # [B, T]
    return Generated(answers, kept if keep_logits else None, sequences=sequences)


def _generate_encoder_decoder(
    adapter, inputs, tokens, decision, max_new_tokens, keep_logits, config: GenerationConfig
) -> Generated:
    """T5Gemma2: the pruned prefill is the encoder; the decoder cross-attends to what it kept."""
    started = time.perf_counter()
    state = prefill(adapter, inputs, tokens, decision, generation=True)
    seconds = time.perf_counter() - started
    encoded = BaseModelOutput(last_hidden_state=state.output.last_hidden_state)
    # generate's rule: the decoder starts from decoder_start_token_id, or else from bos_token_id.
    start = (
        config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
    )
    if start is None:
        raise ValueError(
            f"{adapter.family}: the generation config names neither decoder_start_token_id nor bos_token_id"
        )
    cache = EncoderDecoderCache(
        DynamicCache(config=adapter.config.get_text_config(decoder=True)), DynamicCache()
    )

    def run(token: torch.Tensor) -> torch.Tensor:
        out = adapter.model(
            encoder_outputs=encoded,
            attention_mask=state.attention_mask,
            decoder_input_ids=token.view(-1, 1),
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1]

    first = torch.full((inputs.batch_size,), int(start), dtype=torch.long, device=state.attention_mask.device)
    generated = _decode(
        adapter, config, run(first), max_new_tokens, lambda token, step: run(token), keep_logits
    )
    return replace(generated, keep=state.keep, lengths=state.lengths, prefill_seconds=seconds)
