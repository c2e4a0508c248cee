"""`visionloom prune eval CONFIG`: accuracy kept and prefill saved, per pruner and keep ratio.

For each pruner and each keep ratio, every question of the split is answered by the frozen VLM
on the pruned sequence (exact match under greedy decoding, see `vlm/answers.py`). Prefill time
is measured per batch (wall clock, the pruner's own cost included) and FLOPs are estimated from
the language model's size and the kept sequence length. Output: RUN/prune_table.md, results.json
and accuracy_vs_tokens.png (one line per pruner).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from visionloom.backbones import load
from visionloom.backbones.base import ImageTokenAdapter
from visionloom.data.scenes import SceneText, read_scene_texts
from visionloom.engine.samplers import Items
from visionloom.pruning.apply import prune_sequence, run_pruned
from visionloom.pruning.build import PruneConfig, make_pruner
from visionloom.pruning.pruners import KeepAll, Pruner
from visionloom.pruning.report import plot, write_table
from visionloom.vlm.answers import AnswerCollate, answers_correct


def read_questions(config: PruneConfig, data_root: Path) -> list[SceneText]:
    if config.questions:
        path = Path(config.questions)
        items = json.loads(path.read_text())
        texts = []
        for index, item in enumerate(items):
            missing = {"image", "question", "answer"} - set(item)
            if missing:
                raise ValueError(f"{path}: item {index} lacks {sorted(missing)}")
            image = Path(item["image"])
            texts.append(
                SceneText(
                    image if image.is_absolute() else path.parent / image,
                    f"<image>\n{item['question']}",
                    item["answer"],
                    "qa",
                )
            )
    else:
        texts = [t for t in read_scene_texts(data_root, config.split) if t.task.startswith("qa")]
    return texts[: config.max_questions]


def prefill_flops(
    adapter: ImageTokenAdapter, full_lengths: torch.Tensor, kept_lengths: torch.Tensor, from_layer: int = 0
) -> float:
    """Per layer 2 * parameters * tokens for the projections plus 4 * S^2 * width for attention.

    Layers before `from_layer` (FastV) run on the full lengths, the rest on the kept lengths.
    """
    language = adapter.language_module
    layers, width = len(language.layers), adapter.text_width
    per_layer = sum(p.numel() for p in language.layers[0].parameters())
    outside = sum(p.numel() for p in language.parameters()) - layers * per_layer  # embeddings, final norm
    full, kept = full_lengths.double(), kept_lengths.double()

    def layer(lengths: torch.Tensor) -> torch.Tensor:
        return 2 * per_layer * lengths + 4 * lengths**2 * width

    return float((2 * outside * kept + from_layer * layer(full) + (layers - from_layer) * layer(kept)).sum())


@torch.no_grad()
def run_pruner(
    adapter: ImageTokenAdapter, pruner: Pruner, texts: list[SceneText], keep_ratio: float, batch_size: int
) -> dict:
    loader = DataLoader(Items(texts), batch_size=batch_size, collate_fn=AnswerCollate(adapter))
    correct, seconds, flops, kept_tokens, images = 0, 0.0, 0.0, 0, 0
    for batch in loader:
        inputs = batch["inputs"]
        started = time.perf_counter()
        tokens = adapter.encode_images(inputs)
        # The answer is teacher-forced here: a pruner that ranks from the text reads the last prompt token.
        first_answer = (batch["answer_labels"] != -100).int().argmax(1)  # [B]
        decision = pruner.decide(adapter, inputs, tokens, keep_ratio, query_positions=first_answer - 1)
        pruned = prune_sequence(adapter, inputs, tokens, decision)
        output = run_pruned(adapter, pruned, decision)
        seconds += time.perf_counter() - started
        # The answer's labels follow their tokens to wherever the layout put them (both padding sides).
        source = batch["answer_labels"].gather(1, pruned.layout.clamp(min=0))  # [B, S']
        labels = source.masked_fill(pruned.layout < 0, -100)
        dropped = dropped_per_sample(inputs, tokens, decision)
        correct += int(answers_correct(output.logits, labels).sum())
        kept = decision.kept_counts(tokens)
        kept_tokens += sum(kept)
        images += len(kept)
        full_lengths = inputs.attention_mask.sum(1)
        kept_lengths = full_lengths - torch.tensor(dropped)
        flops += prefill_flops(adapter, full_lengths, kept_lengths, decision.from_layer)
    return {
        "accuracy": 100.0 * correct / len(texts),
        "prefill_ms_per_question": 1000.0 * seconds / len(texts),
        "mflops_per_question": flops / len(texts) / 1e6,
        "image_tokens_kept": kept_tokens / images,
    }


def dropped_per_sample(inputs, tokens, decision) -> list[int]:
    kept = decision.kept_counts(tokens)
    dropped = [0] * inputs.batch_size
    for image, (sample, _) in enumerate(inputs.image_owner()):
        dropped[sample] += tokens.counts[image] - kept[image]
    return dropped


def evaluate_pruning(
    config: PruneConfig, data_root: str | Path, out: str | Path, progress: bool = True
) -> dict:
    if config.vlm is None:
        raise ValueError("no VLM: give --vlm DIR (from `visionloom vlm pretrain`, or a real checkpoint)")
    data_root, out = Path(data_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = load(config.vlm)
    adapter.model.eval()
    if "text-attention" in config.pruners:
        # It needs attention weights, which only eager attention gives. Switch before the first row,
        # so every row's prefill time is taken with the same attention implementation.
        adapter.use_eager_attention()
    texts = read_questions(config, data_root)
    train_texts = (
        [t for t in read_scene_texts(data_root, "train") if t.task.startswith("qa")]
        if "learned" in config.pruners
        else []
    )
    results: dict[str, dict[str, dict]] = {
        "keep-all": {"1.0": run_pruner(adapter, KeepAll(), texts, 1.0, config.batch_size)}
    }
    jobs = [(name, ratio) for name in config.pruners for ratio in config.keep_ratios if ratio < 1.0]
    if progress:
        from visionloom.progress import track

        jobs = track(jobs, description=f"{len(texts)} questions x pruners x keep ratios")
    pruners = {}
    for name, ratio in jobs:
        if name not in pruners:
            pruners[name] = make_pruner(name, config, adapter, train_texts, out)
        results.setdefault(name, {})[str(ratio)] = run_pruner(
            adapter, pruners[name], texts, ratio, config.batch_size
        )
    report = {
        "vlm": config.vlm,
        "questions": len(texts),
        "attention": adapter.attention_implementation(),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    write_table(report, out / "prune_table.md")
    plot(report, out / "accuracy_vs_tokens.png")
    return report
