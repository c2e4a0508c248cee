"""Text-to-image retrieval metrics with IRRA's definitions: R@1/5/10, mAP and mINP, in percent.

IRRA sorts every row of the full similarity matrix. Sorting is not needed: a metric depends only
on where each query's relevant gallery items land, and the rank of one item is a count,

    rank(c) = #{g : s_g > s_c} + #{g < c : s_g == s_c}        (0-based)

which is the position a stable descending sort (IRRA's argsort) gives it, ties included. So the
evaluator forms the similarity a chunk of query rows at a time, looks up each query's relevant
columns in a per-identity table (no [queries x gallery] relevance mask), and counts, block by
block of the chunk while it is in the CPU's cache, for each relevant score, the scores above it and the scores
equal to it. Only rows where a score ties with a relevant one pay for the exact tie rule. From the
sorted ranks p_1 < ... < p_R: R@k = [p_1 < k], AP = mean_i i / (p_i + 1), INP = R / (p_R + 1).

The two counts per relevant item can run eagerly (two passes over the chunk) or as one fused pass
built by `torch.compile` (`kernel="compiled"`). Both give the same integers, so the same metrics;
the compiled kernel is faster once built but costs a compile (seconds, cached on disk), so
`kernel="auto"` uses it only for problems large enough to repay that, and falls back to the eager
counts, saying so, where no C++ compiler is available. `benchmarks/eval_speed.py` measures both
against the floor (forming the similarity and reading it once).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

KS = (1, 5, 10)
Kernel = Literal["auto", "eager", "compiled"]

# Two sizes. The similarity is formed a large chunk of query rows at a time, so the matrix product
# runs at full speed (with 2 threads, 13-row products at dim 512 cost 3.8x the floor's large ones);
# the counting passes then run over blocks of that chunk that stay in the CPU's cache. With 2
# threads at 20k x 20k, blocks of 8 MiB (the shared L3 holds 32) measured best: 1.32x the floor at
# dim 64 against 1.95x with 1 MiB blocks, whose passes are too short to split over threads (one
# thread alone did best with 1 MiB, its L2).
DEFAULT_CHUNK_BYTES = 64 * 2**20
COUNT_BLOCK_BYTES = 8 * 2**20
# "auto" compiles the fused count only from this many scores (queries x gallery) up: below it the
# compile (about 3.5 s with a warm cache, 18 s cold, on the 2-core machine) costs more than it saves.
AUTO_COMPILE_MIN_SCORES = 2 * 10**9

# (rows [C, G], relevant scores [C, R] with +inf padding, relevant counts [C] descending)
#   -> (above [C, R], equal [C, R]): per relevant score, how many scores of its row lie above it
#      and how many equal it (itself included); 0 and 0 at padding.
CountFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def count_eager(
    rows: torch.Tensor, scores: torch.Tensor, num_relevant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The counts with one comparison per pass, slot by slot.

    The rows having a slot are a prefix of the chunk (counts descend), so padding costs nothing.
    Comparisons are written as 0.0/1.0 into a float32 buffer and summed as floats: summing a bool
    tensor casts it to an integer copy first, which measured 3.5x slower. Float32 sums of ones are
    exact below 2**24, which `_check_inputs` guarantees for the gallery size.
    """
    above = torch.zeros(scores.shape, device=rows.device)
    equal = torch.zeros(scores.shape, device=rows.device)
    buffer = torch.empty_like(rows)
    for slot in range(scores.shape[1]):
        having = int((num_relevant > slot).sum())
        threshold = scores[:having, slot : slot + 1]  # [c, 1]
        above[:having, slot] = torch.gt(rows[:having], threshold, out=buffer[:having]).sum(1)
        equal[:having, slot] = torch.eq(rows[:having], threshold, out=buffer[:having]).sum(1)
    return above, equal


def _count_fused(rows: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # torch.compile turns this into one loop over each row: no [C, R, G] tensor, no casts, and one
    # reduction that carries both counts (above in the high bits, equal below 2**24; both are at
    # most the gallery size, which `_check_inputs` keeps below 2**24). Of the formulations tried
    # (two int32 sums, float sums, sign sums, slot by slot), this one measured fastest.
    # rows [C, G], scores [C, R] -> [C, R], [C, R]
    above = rows[:, None, :] > scores[:, :, None]  # [C, R, G], never materialised
    equal = rows[:, None, :] == scores[:, :, None]
    code = (above.to(torch.int32) * 2**24 + equal.to(torch.int32)).sum(2, dtype=torch.int64)  # [C, R]
    return code // 2**24, code % 2**24


_compiled_fused: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


def count_compiled(
    rows: torch.Tensor, scores: torch.Tensor, num_relevant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same counts from one fused pass per chunk, built by torch.compile on first use."""
    global _compiled_fused
    if _compiled_fused is None:
        # dynamic=True: one kernel for every chunk height, slot count and gallery size.
        _compiled_fused = torch.compile(_count_fused, dynamic=True)
    return _compiled_fused(rows, scores)


@dataclass(frozen=True)
class RelevantTable:
    """The gallery columns of each identity, built once per gallery.

    identities: [I] sorted pids; columns: [I, R_max] long, each identity's columns ascending and
    padded with -1; counts: [I] how many columns each identity has.
    """

    identities: torch.Tensor
    columns: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, gallery_pids: torch.Tensor) -> RelevantTable:
        order = torch.argsort(gallery_pids, stable=True)  # stable: columns ascend within an identity
        sorted_pids = gallery_pids[order]
        identities, counts = torch.unique_consecutive(sorted_pids, return_counts=True)
        first = torch.cumsum(counts, 0) - counts
        identity_of = torch.repeat_interleave(torch.arange(len(identities)), counts)
        slot = torch.arange(len(order)) - first[identity_of]
        columns = torch.full((len(identities), int(counts.max())), -1, dtype=torch.long)
        columns[identity_of, slot] = order
        return cls(identities, columns, counts)

    def to(self, device: torch.device) -> RelevantTable:
        return RelevantTable(self.identities.to(device), self.columns.to(device), self.counts.to(device))

    def rows_of(self, query_pids: torch.Tensor) -> torch.Tensor:
        """Index into the table for each query; names the first query whose identity is absent."""
        index = torch.searchsorted(self.identities, query_pids).clamp(max=len(self.identities) - 1)
        missing = self.identities[index] != query_pids
        if bool(missing.any()):
            query = int(missing.nonzero()[0])
            raise ValueError(
                f"query {query} (pid {int(query_pids[query])}) has no image of its identity in the gallery"
            )
        return index


def _check_inputs(
    num_queries: int, gallery_size: int, query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> None:
    if query_pids.shape != (num_queries,) or gallery_pids.shape != (gallery_size,):
        raise ValueError(
            f"pids must be [{num_queries}] and [{gallery_size}], got {tuple(query_pids.shape)} and "
            f"{tuple(gallery_pids.shape)}"
        )
    if gallery_size == 0 or num_queries == 0:
        raise ValueError(f"retrieval needs queries and a gallery, got {num_queries} and {gallery_size}")
    if gallery_size >= 2**24:
        raise ValueError(f"the gallery has {gallery_size} images; counts are exact up to {2**24 - 1}")


def _rows_per_chunk(gallery_size: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (gallery_size * 4))


def _choose_count(kernel: Kernel, num_scores: int) -> CountFn:
    if kernel not in ("auto", "eager", "compiled"):
        raise ValueError(f"kernel must be one of auto, eager, compiled, got {kernel!r}")
    if kernel == "eager" or (kernel == "auto" and num_scores < AUTO_COMPILE_MIN_SCORES):
        return count_eager
    use_eager = False

    def count(rows: torch.Tensor, scores: torch.Tensor, num_relevant: torch.Tensor):
        # The build happens on a call (the first, or a new shape), so a failed build is caught
        # here: "compiled" stops, "auto" says so once and counts eagerly from then on (the same
        # integers, so the same metrics).
        nonlocal use_eager
        if not use_eager:
            try:
                return count_compiled(rows, scores, num_relevant)
            except Exception as error:  # torch.compile raises its backend's own types (no C++ compiler, ...)
                if kernel == "compiled":
                    raise RuntimeError(f"the compiled count kernel could not be built: {error}") from error
                warnings.warn(
                    f"the compiled count kernel could not be built ({type(error).__name__}); "
                    "counting eagerly instead: same metrics, slower",
                    stacklevel=2,
                )
                use_eager = True
        return count_eager(rows, scores, num_relevant)

    return count


def _relevant_ranks(
    rows: torch.Tensor, columns: torch.Tensor, num_relevant: torch.Tensor, count: CountFn
) -> torch.Tensor:
    """Sorted 0-based ranks of each row's relevant columns, padded with -1.

    rows [C, G] float32; columns [C, R] long (-1 padded); num_relevant [C], descending
    ->  [C, R] long, ascending, -1 = padding
    """
    padded = columns < 0
    scores = rows.gather(1, columns.clamp(min=0)).masked_fill(padded, float("inf"))  # [C, R]
    above, equal = count(rows, scores, num_relevant)  # [C, R], [C, R]
    ranks = above.long()
    # A score equal to a relevant one (another relevant item's included) is ahead of it when its
    # column is smaller: the stable sort's rule. Only the rows where that happens pay for it.
    tied_rows = (equal > 1).any(1).nonzero().squeeze(1)
    if len(tied_rows):
        gallery_index = torch.arange(rows.shape[1], device=rows.device)[None, None]  # [1, 1, G]
        tied = rows[tied_rows][:, None, :] == scores[tied_rows][:, :, None]  # [t, R, G]
        before = gallery_index < columns[tied_rows][:, :, None]
        ranks[tied_rows] += (tied & before).sum(2)
    padding = torch.iinfo(torch.long).max
    ranks = ranks.masked_fill(padded, padding).sort(1).values
    return torch.where(ranks == padding, -1, ranks)


@dataclass
class QueryOutcomes:
    """Each query's own result, in the caller's query order: what a paired comparison of two
    models over the same queries resamples (`retrieval/compare.py`)."""

    first_rank: torch.Tensor  # [Q] long: 0-based rank of the query's first relevant gallery item
    average_precision: torch.Tensor  # [Q] float64, in [0, 1]
    query_pids: torch.Tensor | None = (
        None  # [Q] long: each query's identity (queries of one are not independent)
    )

    @classmethod
    def empty(cls, num_queries: int) -> QueryOutcomes:
        return cls(
            torch.full((num_queries,), -1, dtype=torch.long), torch.zeros(num_queries, dtype=torch.float64)
        )

    def hits(self, k: int = 1) -> torch.Tensor:
        """[Q] float64: 1 where a relevant item is in the top k (the mean x 100 is R@k)."""
        return (self.first_rank < k).double()


def _metrics(
    row_chunks: Iterator[tuple[torch.Tensor, torch.Tensor]],
    table: RelevantTable,
    query_table_rows: torch.Tensor,
    count: CountFn,
    outcomes: QueryOutcomes | None = None,
) -> dict[str, float]:
    """Accumulate the metrics over (query indices [C], similarity rows [C, G]) chunks; fill
    `outcomes` per query when given."""
    num_queries = len(query_table_rows)
    hits = torch.zeros(len(KS), dtype=torch.float64)
    ap_sum = inp_sum = 0.0
    for chunk_queries, chunk_rows in row_chunks:
        block = min(len(chunk_rows), _rows_per_chunk(chunk_rows.shape[1], COUNT_BLOCK_BYTES))
        for start in range(0, len(chunk_rows), block):
            block_hits, block_ap, block_inp = _block_sums(
                chunk_queries[start : start + block],
                chunk_rows[start : start + block],
                table,
                query_table_rows,
                count,
                outcomes,
            )
            hits += block_hits
            ap_sum += block_ap
            inp_sum += block_inp
    result = {f"R{k}": float(hits[i]) / num_queries * 100 for i, k in enumerate(KS)}
    result["mAP"] = ap_sum / num_queries * 100
    result["mINP"] = inp_sum / num_queries * 100
    return result


def _block_sums(
    queries: torch.Tensor,
    rows: torch.Tensor,
    table: RelevantTable,
    query_table_rows: torch.Tensor,
    count: CountFn,
    outcomes: QueryOutcomes | None = None,
) -> tuple[torch.Tensor, float, float]:
    """A block of queries' contribution: (hits at each k [len(KS)], sum of AP, sum of INP)."""
    table_rows = query_table_rows[queries]
    num_relevant = table.counts[table_rows]  # [C], descending
    columns = table.columns[table_rows, : int(num_relevant[0])]  # [C, R]
    ranks = _relevant_ranks(rows.float(), columns, num_relevant, count)  # [C, R]
    first = ranks[:, 0]
    hits = torch.tensor([float((first < k).sum()) for k in KS], dtype=torch.float64)
    # Sums in float64, so a million queries add up without float32 rounding.
    position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=rows.device)[None]  # i = 1..R
    precision = torch.where(ranks >= 0, position / (ranks + 1).clamp(min=1), 0.0)
    average_precision = precision.sum(1) / num_relevant  # [C]
    ap_sum = float(average_precision.sum())
    if outcomes is not None:
        rows = queries.cpu()
        outcomes.first_rank[rows] = first.cpu()
        outcomes.average_precision[rows] = average_precision.cpu()
    last = ranks.gather(1, (num_relevant - 1)[:, None]).squeeze(1)
    inp_sum = float((num_relevant.double() / (last + 1)).sum())
    return hits, ap_sum, inp_sum


def _require_finite(tensor: torch.Tensor, name: str) -> None:
    # A NaN compares false with everything, so it would be ranked silently rather than refused.
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values; the ranks would be meaningless")


def _prepare(
    num_queries: int,
    gallery_size: int,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    device: torch.device,
) -> tuple[RelevantTable, torch.Tensor, torch.Tensor]:
    """The gallery's identity table, each query's row in it, and the queries ordered by how many
    relevant items they have (descending, so a block's rows with a given slot form a prefix; the
    metrics are sums over queries, so the order does not change them). All on `device`."""
    _check_inputs(num_queries, gallery_size, query_pids, gallery_pids)
    table = RelevantTable.of(gallery_pids.cpu())
    query_table_rows = table.rows_of(query_pids.cpu())
    order = torch.argsort(table.counts[query_table_rows], descending=True, stable=True)
    return table.to(device), query_table_rows.to(device), order.to(device)


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    memory_budget_bytes: int = DEFAULT_CHUNK_BYTES,
    kernel: Kernel = "auto",
) -> dict[str, float]:
    """Text-to-image retrieval metrics as IRRA defines them, counted chunk by chunk.

    Args:
        similarity: [Q, G] scores of each query against each gallery item.
        query_pids: [Q] identity of each query.
        gallery_pids: [G] identity of each gallery item.
        memory_budget_bytes: the size of the chunks the scores are counted in.
        kernel: "eager", "compiled" (`torch.compile`) or "auto" (compiled from 2e9 scores up).

    Returns:
        {"R1", "R5", "R10", "mAP", "mINP"} in percent; ties are ranked as a stable sort would.
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [queries, gallery], got shape {tuple(similarity.shape)}")
    num_queries, gallery_size = similarity.shape
    table, query_table_rows, order = _prepare(
        num_queries, gallery_size, query_pids, gallery_pids, similarity.device
    )
    _require_finite(similarity, "similarity")
    chunk = _rows_per_chunk(gallery_size, memory_budget_bytes)
    chunks = (
        (order[start : start + chunk], similarity[order[start : start + chunk]])
        for start in range(0, num_queries, chunk)
    )
    return _metrics(chunks, table, query_table_rows, _choose_count(kernel, num_queries * gallery_size))


def retrieval_metrics_from_features(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    memory_budget_bytes: int = DEFAULT_CHUNK_BYTES,
    kernel: Kernel = "auto",
    outcomes: QueryOutcomes | None = None,
) -> dict[str, float]:
    """`retrieval_metrics` with the similarity (dot products) made one chunk of queries at a time.

    The [Q, G] matrix is never held, so a million-image gallery needs memory for a chunk of rows
    only.

    Args:
        query_features: [Q, D], normalised by the caller.
        gallery_features: [G, D], normalised by the caller.
        query_pids: [Q] identities.
        gallery_pids: [G] identities.
        memory_budget_bytes: the size of the chunks the similarity is formed in.
        kernel: as `retrieval_metrics`.
        outcomes: `QueryOutcomes.empty(Q)` to receive each query's own result (for paired
            comparisons), or None.

    Returns:
        {"R1", "R5", "R10", "mAP", "mINP"} in percent.
    """
    num_queries, gallery_size = len(query_features), len(gallery_features)
    table, query_table_rows, order = _prepare(
        num_queries, gallery_size, query_pids, gallery_pids, query_features.device
    )
    _require_finite(query_features, "query features")
    _require_finite(gallery_features, "gallery features")
    chunk = _rows_per_chunk(gallery_size, memory_budget_bytes)
    gallery_t = gallery_features.t().contiguous()  # [D, G]: contiguous, for the matrix product
    chunks = (
        (order[start : start + chunk], query_features[order[start : start + chunk]] @ gallery_t)  # [C, G]
        for start in range(0, num_queries, chunk)
    )
    return _metrics(
        chunks, table, query_table_rows, _choose_count(kernel, num_queries * gallery_size), outcomes
    )
