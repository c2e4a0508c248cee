"""The evaluator's metrics against a straightforward full-argsort implementation of the same definitions.

Both run on the same random problem (normalised features, 3 gallery images per identity), each
in its own process so that its peak memory (max RSS) is its own. The evaluator forms the
similarity chunk by chunk from features and ranks only the relevant items; the baseline is IRRA's
rank function applied to query chunks of the similarity matrix (a full argsort of every row;
holding the whole 100k x 100k matrix, 40 GB, as IRRA does, would not fit this machine at all).
Prints per problem: baseline time / evaluator time, both peaks, and whether the metrics agree.

    .venv/bin/python benchmarks/eval_speed.py                      # 20k x 20k, and 100k gallery x 10k queries
    .venv/bin/python benchmarks/eval_speed.py --problems 20000x20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def problem(queries: int, gallery: int, dim: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(gallery) // 3
    query_pids = gallery_pids[torch.randint(0, gallery, (queries,), generator=generator)]
    # Queries near their identity's centre, so ranks are spread rather than random.
    centres = F.normalize(torch.randn(int(gallery_pids.max()) + 1, dim, generator=generator), dim=-1)
    gallery_features = F.normalize(
        centres[gallery_pids] + 0.9 * torch.randn(gallery, dim, generator=generator), dim=-1
    )
    query_features = F.normalize(
        centres[query_pids] + 0.9 * torch.randn(queries, dim, generator=generator), dim=-1
    )
    return query_features, gallery_features, query_pids, gallery_pids


def argsort_metrics(query_features, gallery_features, query_pids, gallery_pids, chunk: int = 1024) -> dict:
    """IRRA's utils/metrics.py::rank, literally, over chunks of query rows."""
    hits = torch.zeros(10, dtype=torch.float64)
    ap_sum = inp_sum = 0.0
    for start in range(0, len(query_features), chunk):
        similarity = query_features[start : start + chunk] @ gallery_features.t()
        indices = torch.argsort(similarity, dim=1, descending=True, stable=True)
        matches = (gallery_pids[indices] == query_pids[start : start + chunk, None]).long()
        cmc = (matches.cumsum(1)[:, :10] >= 1).double()
        hits += cmc.sum(0)
        num_rel = matches.sum(1)
        tmp_cmc = matches.cumsum(1)
        positions = torch.arange(1, matches.shape[1] + 1, dtype=torch.float64)[None]
        ap_sum += float((((tmp_cmc / positions) * matches).sum(1) / num_rel).sum())
        last = (matches * torch.arange(matches.shape[1])[None]).max(1).values
        inp_sum += float((num_rel.double() / (last + 1)).sum())
        del similarity, indices, matches, tmp_cmc
    count = len(query_features)
    return {
        "R1": float(hits[0]) / count * 100,
        "R5": float(hits[4]) / count * 100,
        "R10": float(hits[9]) / count * 100,
        "mAP": ap_sum / count * 100,
        "mINP": inp_sum / count * 100,
    }


def child(method: str, queries: int, gallery: int) -> None:
    from visionloom.retrieval.metrics import retrieval_metrics_from_features

    data = problem(queries, gallery)
    started = time.perf_counter()
    metrics = retrieval_metrics_from_features(*data) if method == "evaluator" else argsort_metrics(*data)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "metrics": metrics}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--problems", nargs="+", default=["20000x20000", "10000x100000"], help="QUERIESxGALLERY"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    for spec in args.problems:
        queries, gallery = (int(x) for x in spec.split("x"))
        results = {}
        for method in ("argsort", "evaluator"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(queries), str(gallery)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        agree = all(
            abs(results["argsort"]["metrics"][k] - results["evaluator"]["metrics"][k]) < 1e-6
            for k in results["argsort"]["metrics"]
        )
        ratio = results["argsort"]["seconds"] / results["evaluator"]["seconds"]
        print(
            f"{queries} queries x {gallery} gallery: argsort/evaluator time {ratio:.2f} "
            f"({results['argsort']['seconds']:.1f} s vs {results['evaluator']['seconds']:.1f} s); "
            f"peak RSS {results['argsort']['peak_mb']:.0f} MB vs {results['evaluator']['peak_mb']:.0f} MB; "
            f"metrics agree: {agree}"
        )


if __name__ == "__main__":
    main()
