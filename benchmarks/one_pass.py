"""encode_images (one tower pass) against the common two-pass pattern, on a mid-sized LLaVA.

The two-pass pattern calls the vision tower for raw features and then the model's
image-feature method, which runs the tower again. Prints one figure: two-pass time / one-pass
time, both measured in this run (median of --repeats), plus whether the two passes even agree.

    .venv/bin/python benchmarks/one_pass.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from visionloom.backbones.doctor import test_image
from visionloom.backbones.llava import LlavaAdapter, select_features, tiny_llava
from visionloom.results import write_results


def mid_sized_llava() -> LlavaAdapter:
    """A ViT-B-sized CLIP tower at 336 px (576 tokens) and a small language model, random weights."""
    tiny = tiny_llava()  # for its tokenizer and processor settings
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2048,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=len(tiny.tokenizer),
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tiny.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    processor = tiny.processor
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    return LlavaAdapter(LlavaForConditionalGeneration(config).eval(), processor)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each path; the median counts")
    parser.add_argument("--batch", type=int, default=2, help="images per batch")
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    torch.manual_seed(0)
    adapter = mid_sized_llava()
    inputs = adapter.build_inputs(
        [test_image(336, 336, seed=i) for i in range(args.batch)], ["<image> hi"] * args.batch
    )
    pixel_values = inputs.model_inputs["pixel_values"]

    def one_pass():
        return adapter.encode_images(inputs)

    def two_pass():
        raw = select_features(
            adapter.vision_tower(pixel_values, output_hidden_states=True).hidden_states, adapter.config
        )
        embeds = adapter.model.model.get_image_features(pixel_values=pixel_values).pooler_output
        return raw, embeds

    def timed(fn) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.no_grad():
        one_pass(), two_pass()  # warm-up
    t_one, t_two = timed(one_pass), timed(two_pass)
    print(
        f"one_pass {t_one:.3f}s  two_pass {t_two:.3f}s  (batch {args.batch}, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads)"
    )
    print(f"two_pass/one_pass time ratio: {t_two / t_one:.2f}")
    if args.results:
        figures = {"one_pass_s": t_one, "two_pass_s": t_two, "ratio": t_two / t_one, "batch": args.batch}
        write_results(args.results, "one_pass", figures, seeds=[0])


if __name__ == "__main__":
    main()
