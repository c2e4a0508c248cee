"""Prefill time with 64 of 576 image tokens kept against all 576, LLaVA-1.5- and Qwen2.5-VL-shaped.

The language models have their real widths (LLaVA-1.5-7B: 4096, MLP 11008, 32 heads; Qwen2.5-VL-7B:
3584, MLP 18944, 28 heads, 4 KV heads) but only a few layers, random weights. The vision towers are
minimal: they run once, outside the timing, because pruning does not change them. The timed part
is what pruning changes: the pruning step and the language model's prefill on the (pruned)
sequence, through `forward_pruned`. Prints the ratio full / pruned per family (median of repeats).

    .venv/bin/python benchmarks/prune_speed.py
    .venv/bin/python benchmarks/prune_speed.py --layers 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import LlavaConfig, LlavaProcessor, Qwen2_5_VLConfig

from visionloom.backbones.llava import LlavaAdapter
from visionloom.backbones.qwen2_5_vl import Qwen2_5_VLAdapter, build_qwen_processor
from visionloom.backbones.tiny_parts import llava_tokenizer, qwen_tokenizer
from visionloom.pruning.prefill import forward_pruned
from visionloom.pruning.pruners import KeepAll, RandomPruner
from visionloom.results import write_results


def llava(layers: int) -> LlavaAdapter:
    tokenizer = llava_tokenizer()
    config = LlavaConfig(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 336,
            "patch_size": 14,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": layers,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": len(tokenizer),
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaAdapter(LlavaAdapter.model_class(config).eval(), processor)


def qwen(layers: int) -> Qwen2_5_VLAdapter:
    tokenizer, ids = qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": layers,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": len(tokenizer),
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|im_end|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28 * 576, max_pixels=28 * 28 * 576, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return Qwen2_5_VLAdapter(
        Qwen2_5_VLAdapter.model_class(config).eval(), build_qwen_processor(image_processor, tokenizer)
    )


@torch.no_grad()
def measure(adapter, image_side: int, repeats: int) -> tuple[int, float, float]:
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
    )
    inputs = adapter.build_inputs(
        [image], ["<image>\nwhat is the color of the small circle at the top left of the picture?"]
    )
    tokens = adapter.encode_images(inputs)  # once: the tower is not what pruning changes
    count = tokens.counts[0]
    ratio = 64 / count
    timings = {}
    for name, pruner, keep in (("full", KeepAll(), 1.0), ("pruned", RandomPruner(), ratio)):
        forward_pruned(adapter, inputs, tokens, pruner.decide(adapter, inputs, tokens, keep))  # warm-up
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            forward_pruned(adapter, inputs, tokens, pruner.decide(adapter, inputs, tokens, keep))
            runs.append(time.perf_counter() - started)
        timings[name] = statistics.median(runs)
    return count, timings["full"], timings["pruned"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="language-model layers (real widths; default: 2)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed prefills of each setting; the median counts (default: 5)",
    )
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    torch.manual_seed(0)
    figures = {}
    for name, build, side in (("LLaVA-1.5 shape", llava, 336), ("Qwen2.5-VL shape", qwen, 672)):
        adapter = build(args.layers)
        count, full, pruned = measure(adapter, side, args.repeats)
        print(
            f"{name} ({args.layers} layers): prefill with all {count} image tokens / with 64 kept = "
            f"{full / pruned:.2f} ({full * 1000:.0f} ms vs {pruned * 1000:.0f} ms)"
        )
        figures[name] = {
            "image_tokens": count,
            "kept": 64,
            "full_ms": full * 1000,
            "pruned_ms": pruned * 1000,
            "ratio": full / pruned,
            "layers": args.layers,
        }
        del adapter
    if args.results:
        write_results(args.results, "prune_speed", figures, seeds=[0])


if __name__ == "__main__":
    main()
