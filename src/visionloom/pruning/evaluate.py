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
from visionloom.config import read_json
from visionloom.data.errors import DatasetFormatError, all_or_refuse, resolve_inside
from visionloom.data.scenes import SceneText, read_scene_texts, require_readable
from visionloom.engine.samplers import Items
from visionloom.images import read_rgb
from visionloom.pruning.benchmarks import METRICS, BenchmarkQuestion, read_benchmark
from visionloom.pruning.build import make_pruner
from visionloom.pruning.config import PruneConfig
from visionloom.pruning.generate import chat_prompt, generate
from visionloom.pruning.prefill import prefill
from visionloom.pruning.pruners import KeepAll, Pruner
from visionloom.pruning.report import plot, write_table
from visionloom.results import config_sha256, write_results
from visionloom.vlm.answers import AnswerCollate, answers_correct


def read_questions(config: PruneConfig, data_root: Path) -> list[SceneText]:
    """The questions `prune eval scenes` asks: the scenes' own, or `questions=FILE`, a JSON list of
    {"image", "question", "answer"} whose image paths stay inside the file's folder."""
    if not config.questions:
        texts = [t for t in read_scene_texts(data_root, config.split) if t.task.startswith("qa")]
        return texts[: config.max_questions]
    path = Path(config.questions)
    items = read_json(path, DatasetFormatError)
    if not isinstance(items, list):
        raise DatasetFormatError(f"questions {path}: expected a JSON list of {{image, question, answer}}")

    def check(index: int, item: object) -> tuple[SceneText | None, list[str]]:
        if not isinstance(item, dict) or {"image", "question", "answer"} - set(item):
            return None, [f"item {index}: needs image, question and answer"]
        image, why = resolve_inside(path.parent, item["image"])
        if why:
            return None, [f"item {index}: {why}"]
        return SceneText(image, f"<image>\n{item['question']}", str(item["answer"]), "qa"), []

    texts = all_or_refuse(path, (check(i, item) for i, item in enumerate(items)), "questions")
    return texts[: config.max_questions]


def prefill_flops(adapter: ImageTokenAdapter, lengths: list[tuple[int, torch.Tensor]]) -> float:
    """Per layer 2 * parameters * tokens for the projections plus 4 * S^2 * width for attention.

    `lengths`: per stretch of layers (`Prefill.lengths`), its layer count and the real tokens of
    each sample there. FastV's and PDrop's early stretches run on more tokens than their last.
    """
    language = adapter.language_module
    layers, width = len(language.layers), adapter.text_width
    per_layer = sum(p.numel() for p in language.layers[0].parameters())
    outside = sum(p.numel() for p in language.parameters()) - layers * per_layer  # embeddings, final norm
    total = 2 * outside * lengths[-1][1].double()
    for count, stretch_lengths in lengths:
        tokens = stretch_lengths.double()
        total = total + count * (2 * per_layer * tokens + 4 * tokens**2 * width)
    return float(total.sum())


@torch.no_grad()
def run_pruner(
    adapter: ImageTokenAdapter, pruner: Pruner, texts: list[SceneText], keep_ratio: float, batch_size: int
) -> dict:
    """The scene questions, teacher-forced: accuracy is exact match under greedy decoding."""
    loader = DataLoader(Items(texts), batch_size=batch_size, collate_fn=AnswerCollate(adapter))
    hits: list[int] = []
    seconds, flops, kept_tokens, images = 0.0, 0.0, 0, 0
    for batch in loader:
        inputs = batch["inputs"]
        started = time.perf_counter()
        tokens = adapter.encode_images(inputs)
        # The answer is teacher-forced here: a pruner that ranks from the text reads the last prompt token.
        query = (batch["answer_labels"] != -100).int().argmax(1) - 1  # [B]
        decision = pruner.decide(adapter, inputs, tokens, keep_ratio, query_positions=query)
        state = prefill(adapter, inputs, tokens, decision, query_positions=query)
        seconds += time.perf_counter() - started
        # The answer's labels follow their tokens to wherever the layout put them (both padding sides).
        source = batch["answer_labels"].gather(1, state.layout.clamp(min=0))  # [B, S']
        labels = source.masked_fill(state.layout < 0, -100)
        hits += answers_correct(state.output.logits, labels).int().tolist()
        kept_tokens += sum(len(keep) for keep in state.keep)
        images += len(state.keep)
        flops += prefill_flops(adapter, state.lengths)
    return {
        "accuracy": 100.0 * sum(hits) / len(texts),
        "prefill_ms_per_question": 1000.0 * seconds / len(texts),
        "mflops_per_question": flops / len(texts) / 1e6,
        "image_tokens_kept": kept_tokens / images,
        "hits": hits,  # 1 where question i was answered exactly; `evaluate_pruning` files them apart
    }


class PromptCollate:
    """BenchmarkQuestions -> {"inputs", "questions"}: one image and its chat prompt per sample."""

    def __init__(self, adapter: ImageTokenAdapter, style: str):
        self.adapter, self.style = adapter, style

    def __call__(self, questions: list[BenchmarkQuestion]) -> dict:
        images = []
        for question in questions:
            images.append(read_rgb(question.image))
        texts = [chat_prompt(self.adapter, q.question, self.style) for q in questions]
        return {"inputs": self.adapter.build_inputs(images, texts), "questions": questions}


@torch.no_grad()
def run_generated(
    adapter: ImageTokenAdapter,
    pruner: Pruner,
    questions: list[BenchmarkQuestion],
    keep_ratio: float,
    config: PruneConfig,
    answers_file: Path,
) -> dict:
    """A released benchmark answered by generating (greedy, `config.max_new_tokens`); the answers
    go to `answers_file` (JSON lines: question_id, text), the metrics into the returned row."""
    loader = DataLoader(
        Items(questions), batch_size=config.batch_size, collate_fn=PromptCollate(adapter, config.prompt)
    )
    answers: list[str] = []
    prefill_seconds, total_seconds, flops, kept_tokens, images = 0.0, 0.0, 0.0, 0, 0
    with answers_file.open("w", encoding="utf-8") as written:
        for batch in loader:
            inputs = batch["inputs"]
            started = time.perf_counter()
            tokens = adapter.encode_images(inputs)
            decision = pruner.decide(adapter, inputs, tokens, keep_ratio)
            decided = time.perf_counter()
            generated = generate(adapter, inputs, tokens, decision, max_new_tokens=config.max_new_tokens)
            total_seconds += time.perf_counter() - started
            prefill_seconds += (decided - started) + generated.prefill_seconds
            texts = adapter.tokenizer.batch_decode(generated.tokens, skip_special_tokens=True)
            for question, text in zip(batch["questions"], texts, strict=True):
                written.write(json.dumps({"question_id": question.question_id, "text": text.strip()}) + "\n")
            answers += texts
            kept_tokens += sum(len(keep) for keep in generated.keep)
            images += len(generated.keep)
            flops += prefill_flops(adapter, generated.lengths)
    metrics = METRICS[config.benchmark](answers, [q.gold for q in questions])
    return {
        **metrics,
        "prefill_ms_per_question": 1000.0 * prefill_seconds / len(questions),
        "generate_ms_per_question": 1000.0 * total_seconds / len(questions),
        "mflops_per_question": flops / len(questions) / 1e6,
        "image_tokens_kept": kept_tokens / images,
    }


QUESTION_OUTCOMES = "question_outcomes.json"


def question_key(text: SceneText) -> str:
    """What names a scene question in OUT/question_outcomes.json: its image and prompt."""
    return f"{text.image_path.name}|{text.prompt}"


def write_question_outcomes(config: PruneConfig, texts: list[SceneText], results: dict, path: Path) -> None:
    """OUT/question_outcomes.json: each row's per-question hits (moved out of `results`), the
    questions they belong to, and the config's hash; what `prune compare` pairs runs by."""
    hits = {
        name: {ratio: row.pop("hits") for ratio, row in by_ratio.items()}
        for name, by_ratio in results.items()
    }
    record = {
        "config_sha256": config_sha256(config),
        "questions": [question_key(t) for t in texts],
        "hits": hits,
    }
    path.write_text(json.dumps(record))


def evaluate_pruning(
    config: PruneConfig, data_root: str | Path, out: str | Path, progress: bool = True
) -> dict:
    """Every pruner at every keep ratio on the config's benchmark; writes results.json,
    prune_table.md, accuracy_vs_tokens.png (and the generated answers, answers/*.jsonl, or the
    scene questions' own outcomes, question_outcomes.json)."""
    if config.vlm is None:
        raise ValueError("no VLM: give --vlm DIR (from `visionloom vlm pretrain`, or a real checkpoint)")
    generated = config.benchmark != "scenes"
    if generated and "learned" in config.pruners:
        raise ValueError(
            f"pruners: 'learned' trains on the scene questions and has nothing to train on for "
            f"{config.benchmark}; leave it out (e.g. --set pruners=[random,visionzip,text-attention,pdrop])"
        )
    data_root, out = Path(data_root), Path(out)
    if generated:
        questions = read_benchmark(config.benchmark, data_root, subset=config.subset, image_dir=config.images)
        questions = questions[: config.max_questions]
    else:
        texts = read_questions(config, data_root)
    images = [q.image for q in questions] if generated else [t.image_path for t in texts]
    require_readable(images, data_root if generated or not config.questions else config.questions)
    adapter = load(config.vlm)
    adapter.model.eval()
    if generated:
        chat_prompt(
            adapter, "", config.prompt
        )  # a checkpoint without a chat template fails here, not mid-run
    out.mkdir(parents=True, exist_ok=True)
    if generated:
        (out / "answers").mkdir(exist_ok=True)
    if {"text-attention", "pdrop"} & set(config.pruners):
        # They rank by attention weights, which only eager attention gives. Switch before the first
        # row, so every row's prefill time is taken with the same attention implementation.
        adapter.use_eager_attention()
    train_texts = (
        [t for t in read_scene_texts(data_root, "train") if t.task.startswith("qa")]
        if "learned" in config.pruners
        else []
    )

    def evaluate(name: str, pruner: Pruner, ratio: float) -> dict:
        if not generated:
            return run_pruner(adapter, pruner, texts, ratio, config.batch_size)
        return run_generated(
            adapter, pruner, questions, ratio, config, out / "answers" / f"{name}-{ratio}.jsonl"
        )

    jobs = [(name, ratio) for name in config.pruners for ratio in config.keep_ratios if ratio < 1.0]
    count = len(questions) if generated else len(texts)
    if progress:
        from visionloom.progress import track

        jobs = track([("keep-all", 1.0), *jobs], description=f"{count} questions x pruners x keep ratios")
    else:
        jobs = [("keep-all", 1.0), *jobs]
    results: dict[str, dict[str, dict]] = {}
    pruners: dict[str, Pruner] = {"keep-all": KeepAll()}
    for name, ratio in jobs:
        if name not in pruners:
            pruners[name] = make_pruner(name, config, adapter, train_texts, out)
        results.setdefault(name, {})[str(ratio)] = evaluate(name, pruners[name], ratio)
    if not generated:
        write_question_outcomes(config, texts, results, out / QUESTION_OUTCOMES)
    report = {
        "vlm": config.vlm,
        "benchmark": config.benchmark + (f" ({config.subset})" if config.benchmark == "pope" else ""),
        "questions": count,
        "attention": adapter.attention_implementation(),
        "answers": f"generated, greedy, at most {config.max_new_tokens} tokens, {config.prompt} prompt"
        if generated
        else "teacher-forced exact match",
        "results": results,
    }
    write_results(out / "results.json", "prune_eval", report, seeds=[config.seed], config=config)
    write_table(report, out / "prune_table.md")
    plot(report, out / "accuracy_vs_tokens.png")
    return report
