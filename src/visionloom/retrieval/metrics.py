"""Text-to-image retrieval metrics with IRRA's definitions: R@1/5/10, mAP and mINP, in percent.

IRRA sorts every row of the full similarity matrix. Here only the ranks of each query's relevant
gallery items are computed, in chunks of queries sized to a memory budget, so a gallery of a
million images needs no [queries x gallery] index matrix. Ties are ordered by gallery index, as a
stable descending sort orders them. From the sorted relevant ranks p_1 < ... < p_R (0-based):
R@k = [p_1 < k], AP = mean_i i / (p_i + 1), INP = R / (p_R + 1).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

KS = (1, 5, 10)


def relevant_ranks(similarity: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Sorted 0-based ranks of the relevant items of each row; padded with -1.

    similarity: [C, G] float, relevant: [C, G] bool  ->  [C, R_max] long, ascending, -1 = padding
    """
    num_relevant = relevant.sum(1)  # [C]
    r_max = int(num_relevant.max())
    # Column index of each relevant item, packed left: [C, R_max], -1 where a row has fewer.
    rows, cols = relevant.nonzero(as_tuple=True)  # row-major, so each row's columns ascend
    first_of_row = torch.cumsum(num_relevant, 0) - num_relevant
    slots = torch.arange(len(rows), device=similarity.device) - first_of_row[rows]
    columns = torch.full((similarity.shape[0], r_max), -1, dtype=torch.long, device=similarity.device)
    columns[rows, slots] = cols
    slot_used = columns >= 0
    gallery_index = torch.arange(similarity.shape[1], device=similarity.device)[None]  # [1, G]
    ranks = torch.full_like(columns, -1)
    for slot in range(r_max):
        column = columns[:, slot : slot + 1].clamp(min=0)  # [C, 1]
        score = similarity.gather(1, column)  # [C, 1]
        ahead = (similarity > score).sum(1)
        equal = similarity == score
        if int(equal.sum()) > equal.shape[0]:  # ties beyond each item itself: order them by gallery index
            ahead += (equal & (gallery_index < column)).sum(1)
        ranks[:, slot] = torch.where(slot_used[:, slot], ahead, -1)
    ranks = torch.where(ranks < 0, torch.iinfo(ranks.dtype).max, ranks).sort(1).values
    return torch.where(ranks == torch.iinfo(ranks.dtype).max, -1, ranks)


def _check_pids(
    num_queries: int, gallery_size: int, query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> None:
    if query_pids.shape != (num_queries,) or gallery_pids.shape != (gallery_size,):
        raise ValueError(
            f"pids must be [{num_queries}] and [{gallery_size}], got {tuple(query_pids.shape)} and "
            f"{tuple(gallery_pids.shape)}"
        )


def _rows_per_chunk(gallery_size: int, memory_budget_bytes: int) -> int:
    # Per query row: the float row, two bool temporaries and the relevance mask.
    return max(1, memory_budget_bytes // (gallery_size * 8))


def _metrics(
    row_chunks: Iterator[tuple[int, torch.Tensor]], query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> dict[str, float]:
    """Accumulate the metrics over (first query index, similarity rows [C, G]) chunks."""
    num_queries = len(query_pids)
    hits = torch.zeros(len(KS), dtype=torch.float64)
    ap_sum = inp_sum = 0.0
    for start, rows in row_chunks:
        rows = rows.float()  # [C, G]
        gallery_pids = gallery_pids.to(rows.device)
        relevant = query_pids[start : start + len(rows)].to(rows.device)[:, None] == gallery_pids[None]
        num_relevant = relevant.sum(1)
        if bool((num_relevant == 0).any()):
            query = start + int((num_relevant == 0).nonzero()[0])
            raise ValueError(
                f"query {query} (pid {int(query_pids[query])}) has no image of its identity in the gallery"
            )
        ranks = relevant_ranks(rows, relevant)  # [C, R_max]
        valid = ranks >= 0
        first = ranks[:, 0]
        for i, k in enumerate(KS):
            hits[i] += float((first < k).sum())
        # Sums in float64, so a million queries add up without float32 rounding.
        position = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)[
            None
        ]  # i = 1..R
        precision = torch.where(valid, position / (ranks + 1).clamp(min=1), 0.0)
        ap_sum += float((precision.sum(1) / num_relevant).sum())
        last = ranks.gather(1, (num_relevant - 1)[:, None]).squeeze(1)
        inp_sum += float((num_relevant.double() / (last + 1)).sum())
    result = {f"R{k}": float(hits[i]) / num_queries * 100 for i, k in enumerate(KS)}
    result["mAP"] = ap_sum / num_queries * 100
    result["mINP"] = inp_sum / num_queries * 100
    return result


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """{"R1", "R5", "R10", "mAP", "mINP"} in percent for a [queries, gallery] similarity matrix."""
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be [queries, gallery], got shape {tuple(similarity.shape)}")
    num_queries, gallery_size = similarity.shape
    _check_pids(num_queries, gallery_size, query_pids, gallery_pids)
    chunk = _rows_per_chunk(gallery_size, memory_budget_bytes)
    chunks = ((start, similarity[start : start + chunk]) for start in range(0, num_queries, chunk))
    return _metrics(chunks, query_pids, gallery_pids)


def retrieval_metrics_from_features(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    *,
    memory_budget_bytes: int = 256 * 2**20,
) -> dict[str, float]:
    """The same metrics with the similarity (dot products) made one chunk of queries at a time.

    query_features [Q, D], gallery_features [G, D], normalised by the caller: the [Q, G] matrix is
    never held, so a million-image gallery needs memory for a chunk of rows only.
    """
    num_queries, gallery_size = len(query_features), len(gallery_features)
    _check_pids(num_queries, gallery_size, query_pids, gallery_pids)
    chunk = _rows_per_chunk(gallery_size, memory_budget_bytes)
    gallery_t = gallery_features.t()  # [D, G]
    chunks = (
        (start, query_features[start : start + chunk] @ gallery_t) for start in range(0, num_queries, chunk)
    )
    return _metrics(chunks, query_pids, gallery_pids)
