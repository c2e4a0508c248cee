"""The retrieval evaluator against its floor, IRRA's argsort and torchmetrics.

One random problem per dimension (normalised features, 3 gallery images per identity, queries
near their identity's centre), timed in CPU seconds (`time.process_time`), so the figures hold on a
loaded machine where wall time does not:

- floor: form every similarity chunk (the matrix product) and read it once (a row max). The
  least any exact evaluator must do. Measured at the evaluator's chunk size and at 256 MiB chunks;
  the smaller time counts.
- evaluator, compiled: `retrieval_metrics_from_features(kernel="compiled")`, timed after its
  kernel is built; the build is printed on its own (it is cached on disk after the first time).
- evaluator, eager: the same counts without a compiler (`kernel="eager"`).
- IRRA's `rank` (a full stable argsort of each row), over query chunks of 1024 rows.
- torchmetrics 1.9's `RetrievalMAP`, `RetrievalHitRate` and `RetrievalRecall`, on a problem small
  enough for its flat [queries x gallery] inputs, with cosine scores near 0; their values are
  printed beside visionloom's, and its mAP again with every score shifted by +2 (the same ranking).

The metrics of every method are compared; the last line is the headline figure.

    .venv/bin/python benchmarks/eval_speed.py                       # 20000x20000, dims 64 and 512
    .venv/bin/python benchmarks/eval_speed.py --full 100000         # also 100k x 100k once, with peak RSS
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from visionloom.results import write_results
from visionloom.retrieval import metrics as evaluator


def problem(queries: int, gallery: int, dim: int, seed: int = 0, noise: float | None = None):
    """Features near their identity's centre; `noise` is the per-coordinate spread (default
    0.9 / sqrt(dim): retrieval works, ranks are spread; 0.9: scores near 0, half of them negative)."""
    noise = 0.9 / dim**0.5 if noise is None else noise
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(gallery) // 3
    query_pids = gallery_pids[torch.randint(0, gallery, (queries,), generator=generator)]
    # Queries near their identity's centre, so ranks are spread rather than random.
    centres = F.normalize(torch.randn(int(gallery_pids.max()) + 1, dim, generator=generator), dim=-1)
    gallery_features = F.normalize(
        centres[gallery_pids] + noise * torch.randn(gallery, dim, generator=generator), dim=-1
    )
    query_features = F.normalize(
        centres[query_pids] + noise * torch.randn(queries, dim, generator=generator), dim=-1
    )
    return query_features, gallery_features, query_pids, gallery_pids


def floor(query_features, gallery_features, chunk_bytes: int) -> float:
    """Form each similarity chunk and read it once; returns a value so nothing is optimised away."""
    rows_per_chunk = max(1, chunk_bytes // (len(gallery_features) * 4))
    gallery_t = gallery_features.t().contiguous()
    total = 0.0
    for start in range(0, len(query_features), rows_per_chunk):
        total += float((query_features[start : start + rows_per_chunk] @ gallery_t).amax(1).sum())
    return total


def argsort_metrics(query_features, gallery_features, query_pids, gallery_pids, chunk: int = 1024) -> dict:
    """IRRA's utils/metrics.py::rank, literally, over chunks of query rows."""
    hits = torch.zeros(10, dtype=torch.float64)
    ap_sum = inp_sum = 0.0
    for start in range(0, len(query_features), chunk):
        similarity = query_features[start : start + chunk] @ gallery_features.t()
        indices = torch.argsort(similarity, dim=1, descending=True, stable=True)
        matches = (gallery_pids[indices] == query_pids[start : start + chunk, None]).long()
        hits += (matches.cumsum(1)[:, :10] >= 1).double().sum(0)
        num_rel = matches.sum(1)
        tmp_cmc = matches.cumsum(1)
        positions = torch.arange(1, matches.shape[1] + 1, dtype=torch.float64)[None]
        ap_sum += float((((tmp_cmc / positions) * matches).sum(1) / num_rel).sum())
        last = (matches * torch.arange(matches.shape[1])[None]).max(1).values
        inp_sum += float((num_rel.double() / (last + 1)).sum())
    count = len(query_features)
    return {
        "R1": float(hits[0]) / count * 100,
        "R5": float(hits[4]) / count * 100,
        "R10": float(hits[9]) / count * 100,
        "mAP": ap_sum / count * 100,
        "mINP": inp_sum / count * 100,
    }


def torchmetrics_metrics(similarity, query_pids, gallery_pids) -> dict:
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalRecall

    target = query_pids[:, None] == gallery_pids[None]
    indexes = torch.arange(len(similarity))[:, None].expand_as(similarity)
    flat = (similarity.reshape(-1), target.reshape(-1), indexes.reshape(-1))
    result = {f"R{k}": float(RetrievalHitRate(top_k=k)(*flat)) * 100 for k in (1, 5, 10)}
    result["recall@5"] = float(RetrievalRecall(top_k=5)(*flat)) * 100
    result["mAP"] = float(RetrievalMAP()(*flat)) * 100
    # The same scores shifted to be all positive: the ranking, so every true metric, is unchanged.
    result["mAP_shifted"] = float(RetrievalMAP()(flat[0] + 2.0, *flat[1:])) * 100
    return result


def cpu_seconds(function, *args, **kwargs):
    started = time.process_time()
    value = function(*args, **kwargs)
    return time.process_time() - started, value


REPEATS = 3  # the floor and the evaluator are each timed this many times; the median counts


def median_cpu_seconds(function, *args, **kwargs):
    """CPU seconds of `function` (median of REPEATS calls: one run moved by up to 25% here), value."""
    timings = [cpu_seconds(function, *args, **kwargs) for _ in range(REPEATS)]
    return statistics.median(seconds for seconds, _ in timings), timings[-1][1]


def agree(a: dict, b: dict, keys=("R1", "R5", "R10", "mAP", "mINP")) -> bool:
    return all(abs(a[k] - b[k]) < 1e-6 for k in keys)


def compare(queries: int, gallery: int, dim: int, with_argsort: bool) -> dict:
    data = problem(queries, gallery, dim)
    floor_seconds = min(
        median_cpu_seconds(floor, data[0], data[1], evaluator.DEFAULT_CHUNK_BYTES)[0],
        median_cpu_seconds(floor, data[0], data[1], 256 * 2**20)[0],
    )
    build_seconds, _ = cpu_seconds(evaluator.retrieval_metrics_from_features, *data, kernel="compiled")
    compiled_seconds, compiled = median_cpu_seconds(
        evaluator.retrieval_metrics_from_features, *data, kernel="compiled"
    )
    eager_seconds, eager = median_cpu_seconds(
        evaluator.retrieval_metrics_from_features, *data, kernel="eager"
    )
    print(
        f"{queries}x{gallery}, dim {dim}: floor {floor_seconds:.2f} s; evaluator compiled "
        f"{compiled_seconds:.2f} s ({compiled_seconds / floor_seconds:.2f}x floor; first call with the "
        f"build {build_seconds:.1f} s), eager {eager_seconds:.2f} s ({eager_seconds / floor_seconds:.2f}x "
        f"floor); compiled and eager metrics identical: {compiled == eager}"
    )
    figures = {
        "floor_s": floor_seconds,
        "compiled_s": compiled_seconds,
        "eager_s": eager_seconds,
        "build_s": build_seconds,
        "compiled_ratio": compiled_seconds / floor_seconds,
        "eager_ratio": eager_seconds / floor_seconds,
        "identical": compiled == eager,
    }
    if with_argsort:
        argsort_seconds, reference = cpu_seconds(argsort_metrics, *data)
        figures |= {"argsort_s": argsort_seconds, "argsort_agrees": agree(reference, compiled)}
        print(
            f"  IRRA argsort {argsort_seconds:.1f} s = {argsort_seconds / compiled_seconds:.1f}x the compiled "
            f"evaluator, {argsort_seconds / eager_seconds:.1f}x the eager one; metrics agree: "
            f"{agree(reference, compiled)}  {json.dumps({k: round(v, 3) for k, v in compiled.items()})}"
        )
    return figures


def compare_torchmetrics(size: int) -> dict:
    """On cosine scores near 0 (noise 0.9), where many relevant scores are negative."""
    query_features, gallery_features, query_pids, gallery_pids = problem(size, size, 64, noise=0.9)
    similarity = query_features @ gallery_features.t()
    relevant = query_pids[:, None] == gallery_pids[None]
    ours_seconds, ours = cpu_seconds(
        evaluator.retrieval_metrics, similarity, query_pids, gallery_pids, kernel="eager"
    )
    peer_seconds, peer = cpu_seconds(torchmetrics_metrics, similarity, query_pids, gallery_pids)
    print(
        f"{size}x{size}, dim 64, scores near 0 ({100 * float((similarity[relevant] <= 0).float().mean()):.0f}% of "
        f"relevant scores <= 0): torchmetrics {peer_seconds:.1f} s = {peer_seconds / ours_seconds:.0f}x the eager "
        f"evaluator; HitRate@1/5/10 = R@1/5/10: {agree(ours, peer, ('R1', 'R5', 'R10'))}; mAP visionloom "
        f"{ours['mAP']:.3f}, torchmetrics {peer['mAP']:.3f} ({peer['mAP_shifted']:.3f} with every score + 2); "
        f"RetrievalRecall@5 {peer['recall@5']:.3f} vs R@5 {ours['R5']:.3f}"
    )
    return {
        "size": size,
        "time_ratio": peer_seconds / ours_seconds,
        "mAP": ours["mAP"],
        "torchmetrics_mAP": peer["mAP"],
        "torchmetrics_mAP_shifted": peer["mAP_shifted"],
        "R5": ours["R5"],
        "torchmetrics_recall5": peer["recall@5"],
    }


def child_full(size: int) -> None:
    data = problem(size, size, 64)
    seconds, metrics = cpu_seconds(evaluator.retrieval_metrics_from_features, *data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "metrics": metrics}))


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20000, help="queries and gallery images (default: 20000)")
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[64, 512], help="feature dims (default: 64 512)"
    )
    parser.add_argument(
        "--peer-size", type=int, default=3000, help="queries and gallery for torchmetrics (default: 3000)"
    )
    parser.add_argument(
        "--full",
        type=int,
        default=0,
        help="also time SIZExSIZE once in its own process, with peak RSS (default: off)",
    )
    parser.add_argument("--no-argsort", action="store_true", help="skip IRRA's argsort baseline")
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"timings of the floor and the evaluator; the median counts (default: {REPEATS})",
    )
    parser.add_argument("--child-full", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--results", help="also write the figures to this results file (JSON)")
    args = parser.parse_args()
    if args.child_full:
        child_full(args.child_full)
        return
    REPEATS = args.repeats
    print(f"torch threads: {torch.get_num_threads()}, median of {REPEATS} timings")
    by_dim = {dim: compare(args.size, args.size, dim, not args.no_argsort) for dim in args.dims}
    figures = {
        "size": args.size,
        "repeats": REPEATS,
        "dims": by_dim,
        "torchmetrics": compare_torchmetrics(args.peer_size),
    }
    if args.full:
        out = subprocess.run(
            [sys.executable, __file__, "--child-full", str(args.full)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{args.full}x{args.full}, dim 64, default kernel: {result['seconds']:.0f} CPU s, peak RSS "
            f"{result['peak_mb']:.0f} MB  {json.dumps({k: round(v, 3) for k, v in result['metrics'].items()})}"
        )
        figures["full"] = {"size": args.full, "cpu_s": result["seconds"], "peak_mb": result["peak_mb"]}
    worst = max(figures["compiled_ratio"] for figures in by_dim.values())
    print(f"evaluator / floor (compiled kernel, worst of dims {args.dims}): {worst:.2f}")
    if args.results:
        write_results(args.results, "eval_speed", figures, seeds=[0])


if __name__ == "__main__":
    main()
