"""What `prune eval` writes for people: a Markdown table and accuracy plotted against tokens and FLOPs."""

from __future__ import annotations

from pathlib import Path

# The benchmark metrics a row may carry besides accuracy (POPE's), in the order the papers give them.
EXTRA_METRICS = (("precision", "precision %"), ("recall", "recall %"), ("f1", "F1 %"), ("yes_ratio", "yes %"))


def write_table(report: dict, path: Path) -> None:
    first = report["results"]["keep-all"]["1.0"]
    extra = [(key, title) for key, title in EXTRA_METRICS if key in first]
    timing = [("prefill_ms_per_question", "prefill ms/question")]
    if "generate_ms_per_question" in first:
        timing.append(("generate_ms_per_question", "generate ms/question"))
    columns = [
        ("image_tokens_kept", "image tokens"),
        ("accuracy", "accuracy %"),
        *extra,
        *timing,
        ("mflops_per_question", "MFLOPs/question"),
    ]
    lines = [
        "| pruner | keep | " + " | ".join(title for _, title in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, by_ratio in report["results"].items():
        for ratio, row in by_ratio.items():
            cells = [
                f"{row[key]:.1f}" if "ms" not in key and "flops" not in key else f"{row[key]:.2f}"
                for key, _ in columns
            ]
            lines.append(f"| {name} | {float(ratio):.0%} | " + " | ".join(cells) + " |")
    benchmark = report.get("benchmark", "scenes")
    answers = report.get("answers", "teacher-forced exact match")
    lines.append(
        f"\n{report['questions']} questions of {benchmark}; answers {answers}; VLM {report['vlm']}; "
        f"language-model attention {report['attention']} in every row."
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
