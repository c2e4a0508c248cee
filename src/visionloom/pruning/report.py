"""What `prune eval` writes for people: a Markdown table and accuracy plotted against tokens and FLOPs."""

from __future__ import annotations

from pathlib import Path


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
