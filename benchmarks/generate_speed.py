"""Generation end to end, LLaVA-1.5- and Qwen2.5-VL-shaped: visionloom's loop against transformers'
`generate`, and what pruning 512 of 576 image tokens buys when answers are generated.

The models are `prune_speed.py`'s: the language models' real widths, a few layers, random weights;
minimal vision towers. End tokens are switched off so every run generates exactly `--new-tokens`.
For batch 1 and 8 (one image each), the figures (medians of `--repeats`):

- loop / generate: visionloom's keep-all generation (`wrap(...).generate_from_inputs`: the tower
  pass, the keep decision, the prefill, greedy decoding) over transformers' `generate` on the same
  inputs, in one process. Goal: at most 1.05.
- time to first token, all 576 image tokens / 64 kept, and that speed-up over the ratio of the
  FLOPs the first token costs (counted by torch's `FlopCounterMode` over the whole call: the tower,
  the projector, which run before any token is dropped, and the prefill). Goal: at least 0.8.
  The language model's share alone (`prune eval`'s estimate) is reported beside it.
- decoding: new tokens per second after the first (each run's time less its first-token time),
  full and pruned;
- key/value cache: bytes held at the end, full / pruned (the dropped tokens' share).

    .venv/bin/python benchmarks/generate_speed.py
    .venv/bin/python benchmarks/generate_speed.py --layers 2 --repeats 3 --results FILE
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from prune_speed import llava, qwen
from torch.utils.flop_counter import FlopCounterMode

from visionloom.pruning.dropin import PrunedModel
from visionloom.pruning.evaluate import prefill_flops
from visionloom.pruning.pruners import KeepAll, RandomPruner
from visionloom.results import write_results

QUESTION = "<image>\nwhat is the color of the small circle at the top left of the picture?"


def batch_inputs(adapter, side: int, batch: int):
    images = [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))
        for seed in range(batch)
    ]
    return adapter.build_inputs(images, [QUESTION] * batch)


def median_seconds(runs: dict, repeats: int) -> dict[str, float]:
    """Each run's median wall time over `repeats`, the runs taken in turn (A B A B ...) so that a
    drift of the machine's speed falls on all of them alike; one warm-up each first."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def measure(adapter, side: int, batch: int, new_tokens: int, repeats: int) -> dict:
    model = adapter.model
    model.generation_config.eos_token_id = None  # every run generates all its tokens
    model.generation_config.pad_token_id = adapter.tokenizer.pad_token_id
    inputs = batch_inputs(adapter, side, batch)
    model_inputs = {
        "input_ids": inputs.input_ids,
        "attention_mask": inputs.attention_mask,
        **adapter.image_token_types(inputs),
        **inputs.model_inputs,
    }
    count = int(inputs.image_token_mask[0].sum())
    keep_all = PrunedModel(adapter, KeepAll(), 1.0)
    pruned = PrunedModel(adapter, RandomPruner(), 64 / count)

    def transformers_generate(steps: int):
        return lambda: model.generate(**model_inputs, max_new_tokens=steps, do_sample=False)

    def ours(wrapper: PrunedModel, steps: int):
        return lambda: wrapper.generate_from_inputs(inputs, max_new_tokens=steps)

    seconds = median_seconds(
        {
            "generate": transformers_generate(new_tokens),
            "full": ours(keep_all, new_tokens),
            "full first": ours(keep_all, 1),
            "pruned": ours(pruned, new_tokens),
            "pruned first": ours(pruned, 1),
        },
        repeats,
    )
    reference, loop = seconds["generate"], seconds["full"]
    figures = {"image_tokens": count, "batch": batch, "new_tokens": new_tokens}
    figures.update(generate_s=reference, loop_s=loop, loop_over_generate=loop / reference)
    for name, wrapper in (("full", keep_all), ("pruned", pruned)):
        first, whole = seconds[f"{name} first"], seconds[name]
        generated = wrapper.generate_from_inputs(inputs, max_new_tokens=new_tokens)
        with FlopCounterMode(display=False) as counter:
            wrapper.generate_from_inputs(inputs, max_new_tokens=1)
        figures[name] = {
            "ttft_s": first,
            "first_token_flops": counter.get_total_flops(),
            "decode_tokens_per_s": batch * (new_tokens - 1) / (whole - first)
            if whole > first
            else float("nan"),
            "cache_bytes": generated.cache_bytes,
            "prefill_flops": prefill_flops(adapter, generated.lengths),
        }
    full, cut = figures["full"], figures["pruned"]
    figures["ttft_speedup"] = full["ttft_s"] / cut["ttft_s"]
    figures["flops_ratio"] = full["first_token_flops"] / cut["first_token_flops"]
    figures["language_model_flops_ratio"] = full["prefill_flops"] / cut["prefill_flops"]
    figures["ttft_speedup_over_flops_ratio"] = figures["ttft_speedup"] / figures["flops_ratio"]
    figures["cache_ratio"] = full["cache_bytes"] / cut["cache_bytes"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="language-model layers (real widths; default: 2)"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=32, help="tokens generated per answer (default: 32)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each setting; the median counts"
    )
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    torch.manual_seed(0)
    figures = {}
    for name, build, side in (("LLaVA-1.5 shape", llava, 336), ("Qwen2.5-VL shape", qwen, 672)):
        adapter = build(args.layers)
        for batch in args.batches:
            row = measure(adapter, side, batch, args.new_tokens, args.repeats)
            figures[f"{name}, batch {batch}"] = {**row, "layers": args.layers}
            print(
                f"{name} ({args.layers} layers), batch {batch}, {args.new_tokens} new tokens: "
                f"loop / generate = {row['loop_over_generate']:.3f}; "
                f"time to first token full / 64 of {row['image_tokens']} kept = {row['ttft_speedup']:.2f} "
                f"(FLOPs ratio {row['flops_ratio']:.2f}, language model alone "
                f"{row['language_model_flops_ratio']:.2f}; speed-up / FLOPs ratio "
                f"{row['ttft_speedup_over_flops_ratio']:.2f}); decoding "
                f"{row['full']['decode_tokens_per_s']:.1f} -> {row['pruned']['decode_tokens_per_s']:.1f} tokens/s; "
                f"KV cache full / pruned = {row['cache_ratio']:.2f}",
                flush=True,
            )
        del adapter
    if args.results:
        write_results(args.results, "generate_speed", figures, seeds=[0])


if __name__ == "__main__":
    main()
