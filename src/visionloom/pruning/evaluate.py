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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader

from visionloom import config as config_io
from visionloom.backbones import load
from visionloom.backbones.base import ImageTokenAdapter
from visionloom.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ShareOfOne
from visionloom.data.scenes import SceneText, SceneTextSet, read_scene_texts
from visionloom.pruning.apply import forward_pruned, prune_sequence, run_pruned
from visionloom.pruning.pruners import (
    KeepAll,
    LearnedScorer,
    RandomPruner,
    TextAttention,
    TowerAttention,
)
from visionloom.vlm.answers import AnswerCollate, answers_correct


@dataclass
class ScorerConfig:
    steps: PositiveInt = 200
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    budget_weight: NonNegativeFloat = (
        1.0  # pulls the mean soft weight toward the keep ratio being trained for
    )
    keep_ratio: ShareOfOne = 0.25


@dataclass
class PruneConfig:
    name: str = "scenes"
    vlm: str | None = None  # a checkpoint directory (from `vlm pretrain`, or a real VLM)
    split: str = "test"
    questions: str | None = None  # a JSON list of {"image", "question", "answer"}; None: the scenes' qa.json
    max_questions: PositiveInt = 400
    batch_size: PositiveInt = 32
    keep_ratios: list[ShareOfOne] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.11])
    pruners: list[
        Literal["random", "tower-attention", "tower-attention-merge", "text-attention", "learned"]
    ] = field(default_factory=lambda: ["random", "tower-attention", "text-attention", "learned"])
    text_layer: NonNegativeInt = 0  # language-side pruner (FastV's K): rank at this layer, drop after it
    tower_block: int | None = None  # vision-side pruner: score at this tower block; None: the family's
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    seed: int = 0


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> PruneConfig:
    return config_io.load(PruneConfig, config_io.find_config("pruning", name_or_path), overrides)


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


def train_scorer(
    adapter: ImageTokenAdapter, texts: list[SceneText], config: ScorerConfig, seed: int
) -> LearnedScorer:
    """Soft weights during training (the VLM frozen); the budget term keeps them from all staying at one."""
    torch.manual_seed(seed)
    scorer = LearnedScorer(adapter.text_width)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr)
    collate = AnswerCollate(adapter)
    generator = torch.Generator().manual_seed(seed)
    adapter.model.requires_grad_(False)
    for _ in range(config.steps):
        picks = torch.randint(0, len(texts), (config.batch_size,), generator=generator).tolist()
        batch = collate([texts[i] for i in picks])
        with torch.no_grad():
            tokens = adapter.encode_images(batch["inputs"])
        decision = scorer.soft(tokens)
        logits = forward_pruned(adapter, batch["inputs"], tokens, decision).logits
        labels = batch["answer_labels"]
        answer = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
        )
        budget = (torch.cat(decision.weights).mean() - config.keep_ratio) ** 2
        loss = answer + config.budget_weight * budget
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return scorer.eval()


def make_pruner(name: str, config: PruneConfig, adapter, train_texts):
    if name == "random":
        return RandomPruner(config.seed)
    if name == "tower-attention":
        return TowerAttention(config.tower_block)
    if name == "tower-attention-merge":
        return TowerAttention(config.tower_block, merge=True)
    if name == "text-attention":
        return TextAttention(config.text_layer)
    if name == "learned":
        return train_scorer(adapter, train_texts, config.scorer, config.seed)
    raise ValueError(
        f"unknown pruner {name!r}; known: random, tower-attention, tower-attention-merge, text-attention, learned"
    )


@torch.no_grad()
def run_pruner(adapter, pruner, texts: list[SceneText], keep_ratio: float, batch_size: int) -> dict:
    loader = DataLoader(SceneTextSet(texts), batch_size=batch_size, collate_fn=AnswerCollate(adapter))
    correct, seconds, flops, kept_tokens, images = 0, 0.0, 0.0, 0, 0
    for batch in loader:
        inputs = batch["inputs"]
        started = time.perf_counter()
        tokens = adapter.encode_images(inputs)
        if isinstance(pruner, TextAttention):
            # Rank from the last prompt token: the answer is teacher-forced here, and must not steer it.
            first_answer = (batch["answer_labels"] != -100).int().argmax(1)  # [B]
            decision = pruner.decide(adapter, inputs, tokens, keep_ratio, query_positions=first_answer - 1)
        else:
            decision = pruner.decide(adapter, inputs, tokens, keep_ratio)
        if isinstance(pruner, TowerAttention) and pruner.merge:
            tokens = pruner.merged_tokens(adapter, tokens, decision)
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
        from rich.progress import track

        jobs = track(jobs, description=f"{len(texts)} questions x pruners x keep ratios")
    pruners = {}
    for name, ratio in jobs:
        if name not in pruners:
            pruners[name] = make_pruner(name, config, adapter, train_texts)
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


def write_table(report: dict, path: Path) -> None:
    lines = [
        "| pruner | keep | image tokens | accuracy % | prefill ms/question | MFLOPs/question |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_ratio in report["results"].items():
        for ratio, row in by_ratio.items():
            lines.append(
                f"| {name} | {float(ratio):.0%} | {row['image_tokens_kept']:.1f} | {row['accuracy']:.1f} | "
                f"{row['prefill_ms_per_question']:.2f} | {row['mflops_per_question']:.2f} |"
            )
    lines.append(
        f"\n{report['questions']} questions; VLM {report['vlm']}; language-model attention "
        f"{report['attention']} in every row."
    )
    path.write_text("\n".join(lines) + "\n")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Left: what the issue asks for (accuracy per kept token). Right: the same runs against the
    # language model's estimated prefill cost, where FastV's full-length early layers show up.
    figure, (by_tokens, by_flops) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    full = report["results"]["keep-all"]["1.0"]
    for name, by_ratio in report["results"].items():
        if name == "keep-all":
            continue
        rows = sorted(by_ratio.values(), key=lambda row: row["image_tokens_kept"]) + [full]
        accuracy = [r["accuracy"] for r in rows]
        (line,) = by_tokens.plot([r["image_tokens_kept"] for r in rows], accuracy, "o-", label=name)
        by_flops.plot([r["mflops_per_question"] for r in rows], accuracy, "o-", color=line.get_color())
    for axis in (by_tokens, by_flops):
        axis.axhline(full["accuracy"], color="grey", linestyle="--", label="unpruned")
    by_tokens.set_xlabel("image tokens kept per image")
    by_tokens.set_ylabel("answer accuracy (%)")
    by_tokens.set_xscale("log", base=2)
    by_tokens.legend(fontsize=8)
    by_flops.set_xlabel("estimated language-model prefill MFLOPs per question")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
