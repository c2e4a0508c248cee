"""The benchmarks' own metrics, as the pruning papers report them.

POPE: a generated answer becomes yes or no by POPE's own rule (the release's evaluate.py): keep
the text before the first period, drop commas, split on spaces; an answer with the word "No",
"no" or "not" is no, anything else (an empty answer included) is yes. Then, with yes as the
positive class: accuracy, precision, recall, F1 and the yes-ratio (how often the model said yes;
0.5 on the balanced subsets when it is unbiased).

GQA: accuracy is exact match with the release's short answer (GQA's eval.py), after the
normalisation LLaVA's convert_gqa_for_eval.py applies to a generated answer before that script:
surrounding spaces and a final period removed, lower case.
"""

from __future__ import annotations

NEGATIVE_WORDS = ("No", "no", "not")


def pope_answer(text: str) -> str:
    """ "yes" or "no" for a generated answer, by POPE's rule."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if any(word in words for word in NEGATIVE_WORDS) else "yes"


def pope_metrics(answers: list[str], labels: list[str]) -> dict[str, float]:
    """{"accuracy", "precision", "recall", "f1", "yes_ratio"} in percent; `answers` are generated
    texts (normalised here), `labels` the file's yes/no."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} labels")
    if not labels:
        raise ValueError("no answers to score")
    predicted = [pope_answer(answer) for answer in answers]
    pairs = list(zip(predicted, labels, strict=True))
    true_positive = sum(p == "yes" and t == "yes" for p, t in pairs)
    false_positive = sum(p == "yes" and t == "no" for p, t in pairs)
    false_negative = sum(p == "no" and t == "yes" for p, t in pairs)
    true_negative = sum(p == "no" and t == "no" for p, t in pairs)
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall = true_positive / (true_positive + false_negative) if true_positive + false_negative else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (true_positive + true_negative) / len(pairs),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * predicted.count("yes") / len(predicted),
    }


def gqa_answer(text: str) -> str:
    """A generated answer as GQA's evaluation compares it (see the module docstring)."""
    return text.strip().rstrip(".").lower()


def gqa_metrics(answers: list[str], gold: list[str]) -> dict[str, float]:
    """{"accuracy"} in percent: normalised generated answers equal to the release's answers."""
    if len(answers) != len(gold):
        raise ValueError(f"{len(answers)} answers for {len(gold)} questions")
    if not gold:
        raise ValueError("no answers to score")
    return {
        "accuracy": 100.0 * sum(gqa_answer(a) == g for a, g in zip(answers, gold, strict=True)) / len(gold)
    }
