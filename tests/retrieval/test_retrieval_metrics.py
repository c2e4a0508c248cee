"""retrieval_metrics against a literal implementation of IRRA's definitions, and its edge cases."""

from __future__ import annotations

import shutil

import pytest
import torch

from visionloom.retrieval import metrics
from visionloom.retrieval.metrics import RelevantTable, retrieval_metrics, retrieval_metrics_from_features


def irra_literal(similarity, query_pids, gallery_pids):
    """IRRA's rank(): full (stable) descending sort of every row, then CMC, AP and INP (in float64)."""
    indices = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    matches = gallery_pids[indices].eq(query_pids.view(-1, 1))
    cmc = matches[:, :10].cumsum(1).clamp(max=1).double().mean(0) * 100
    num_rel = matches.sum(1)
    tmp_cmc = matches.cumsum(1).double()
    inp = [tmp_cmc[i][row.nonzero()[-1]] / (row.nonzero()[-1] + 1.0) for i, row in enumerate(matches)]
    precision = torch.stack([tmp_cmc[:, i] / (i + 1.0) for i in range(tmp_cmc.shape[1])], 1) * matches
    ap = precision.sum(1) / num_rel
    return {
        # A gallery smaller than k: every query finds its identity within k.
        "R1": cmc[0],
        "R5": cmc[min(4, len(cmc) - 1)],
        "R10": cmc[min(9, len(cmc) - 1)],
        "mAP": ap.mean() * 100,
        "mINP": torch.cat(inp).mean() * 100,
    }


def assert_same(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), abs=1e-9), key


def uneven_problem(seed: int, ties: bool | str, queries: int = 120, gallery: int = 300):
    """Identity sizes from 1 to dozens (randint over 40 pids, plus one identity holding a sixth of
    the gallery). ties=True rounds the scores to a few values so that most of them tie; "few" copies
    one relevant score of each query onto a single other column, so ties come in pairs."""
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.randint(0, 40, (gallery,), generator=generator)
    gallery_pids[torch.randperm(gallery, generator=generator)[: gallery // 6]] = 99
    query_pids = gallery_pids[torch.randint(0, gallery, (queries,), generator=generator)]
    similarity = torch.randn(queries, gallery, generator=generator)
    if ties == "few":
        for row, pid in enumerate(query_pids.tolist()):
            relevant = (gallery_pids == pid).nonzero().squeeze(1)
            source = relevant[torch.randint(0, len(relevant), (1,), generator=generator)]
            target = torch.randint(0, gallery, (1,), generator=generator)
            similarity[row, target] = similarity[row, source]
    elif ties:
        similarity = (similarity * 2).round() / 2  # about 15 distinct values per row
    return similarity, query_pids, gallery_pids


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True), (3, True), (6, "few"), (7, "few")])
def test_matches_literal_irra_definition(seed, ties, monkeypatch):
    similarity, query_pids, gallery_pids = uneven_problem(seed, ties)
    expected = irra_literal(similarity, query_pids, gallery_pids)
    # One chunk; chunks of a few queries; one query per chunk.
    for budget in (10**9, 4096, 1):
        got = retrieval_metrics(
            similarity, query_pids, gallery_pids, memory_budget_bytes=budget, kernel="eager"
        )
        assert_same(got, expected)
    # One chunk, counted in blocks of a few rows.
    monkeypatch.setattr(metrics, "COUNT_BLOCK_BYTES", 5000)
    got = retrieval_metrics(similarity, query_pids, gallery_pids, memory_budget_bytes=10**9, kernel="eager")
    assert_same(got, expected)


def test_every_score_tied_orders_by_gallery_index():
    # All scores equal: the stable sort keeps gallery order, so a relevant item's rank is its column.
    gallery_pids = torch.tensor([3, 1, 3, 2, 1, 3])
    query_pids = torch.tensor([1, 3, 2])
    similarity = torch.zeros(3, 6)
    expected = irra_literal(similarity, query_pids, gallery_pids)
    assert_same(retrieval_metrics(similarity, query_pids, gallery_pids, kernel="eager"), expected)
    # Query 0 (pid 1) finds its items at columns 1 and 4: AP = (1/2 + 2/5) / 2.
    ap = ((1 / 2 + 2 / 5) / 2 + (1 / 1 + 2 / 3 + 3 / 6) / 3 + (1 / 4)) / 3
    assert retrieval_metrics(similarity, query_pids, gallery_pids)["mAP"] == pytest.approx(ap * 100)


def test_features_with_ties_match_the_literal_definition():
    # Quantised features give exactly equal dot products, as duplicated or saturated features do.
    generator = torch.Generator().manual_seed(4)
    gallery_pids = torch.arange(90) // 3
    gallery_pids[:20] = 0  # one large identity among threes
    query_pids = gallery_pids[torch.randint(0, 90, (70,), generator=generator)]
    queries = torch.randint(-1, 2, (70, 4), generator=generator).float()
    gallery = torch.randint(-1, 2, (90, 4), generator=generator).float()
    expected = irra_literal(queries @ gallery.t(), query_pids, gallery_pids)
    for budget in (10**9, 500):
        got = retrieval_metrics_from_features(
            queries, gallery, query_pids, gallery_pids, memory_budget_bytes=budget, kernel="eager"
        )
        assert_same(got, expected)


def test_relevant_table_lists_each_identitys_columns_in_order():
    table = RelevantTable.of(torch.tensor([5, 2, 5, 9, 2, 5]))
    assert table.identities.tolist() == [2, 5, 9]
    assert table.counts.tolist() == [2, 3, 1]
    assert table.columns.tolist() == [[1, 4, -1], [0, 2, 5], [3, -1, -1]]


def test_non_finite_scores_and_unknown_kernel_are_refused():
    similarity = torch.zeros(2, 3)
    similarity[1, 2] = float("nan")
    with pytest.raises(ValueError, match="similarity contains NaN"):
        retrieval_metrics(similarity, torch.tensor([1, 2]), torch.tensor([1, 2, 2]))
    with pytest.raises(ValueError, match="kernel must be one of auto, eager, compiled"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([1, 2]), torch.tensor([1, 2, 2]), kernel="fast")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile's CPU backend needs a C++ compiler; the eager counts are the required path",
)
def test_compiled_counts_equal_the_eager_ones_with_ties():
    similarity, query_pids, gallery_pids = uneven_problem(5, ties=True)
    expected = irra_literal(similarity, query_pids, gallery_pids)
    for budget in (10**9, 4096):
        got = retrieval_metrics(
            similarity, query_pids, gallery_pids, memory_budget_bytes=budget, kernel="compiled"
        )
        assert_same(got, expected)


def test_hand_computed_example():
    # Query 0 (pid 1): gallery order by score is [g1 (pid 1), g0 (pid 2), g2 (pid 1)] -> ranks 0 and 2.
    # Query 1 (pid 2): order [g2 (pid 1), g1 (pid 1), g0 (pid 2)] -> rank 2.
    similarity = torch.tensor([[0.5, 0.9, 0.1], [0.1, 0.5, 0.9]])
    metrics = retrieval_metrics(similarity, torch.tensor([1, 2]), torch.tensor([2, 1, 1]))
    assert metrics["R1"] == 50.0 and metrics["R5"] == 100.0
    ap_0 = (1 / 1 + 2 / 3) / 2
    ap_1 = 1 / 3
    assert metrics["mAP"] == pytest.approx((ap_0 + ap_1) / 2 * 100)
    assert metrics["mINP"] == pytest.approx((2 / 3 + 1 / 3) / 2 * 100)


def test_query_without_its_identity_in_the_gallery_is_named():
    with pytest.raises(ValueError, match=r"query 1 \(pid 7\) has no image of its identity"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([1, 7]), torch.tensor([1, 2, 3]))


def test_a_failed_build_stops_compiled_and_auto_says_so_and_counts_eagerly(monkeypatch):
    similarity, query_pids, gallery_pids = uneven_problem(8, ties="few")
    expected = irra_literal(similarity, query_pids, gallery_pids)
    calls = []

    def failing_build(*_args):
        calls.append(1)
        raise OSError("no C++ compiler")

    monkeypatch.setattr(metrics, "count_compiled", failing_build)
    with pytest.raises(
        RuntimeError, match="the compiled count kernel could not be built: no C\\+\\+ compiler"
    ):
        retrieval_metrics(similarity, query_pids, gallery_pids, kernel="compiled")
    monkeypatch.setattr(metrics, "AUTO_COMPILE_MIN_SCORES", 0)
    calls.clear()
    with pytest.warns(UserWarning, match="counting eagerly instead: same metrics, slower"):
        got = retrieval_metrics(similarity, query_pids, gallery_pids, memory_budget_bytes=4096, kernel="auto")
    assert_same(got, expected)
    assert len(calls) == 1  # tried once, then eager for every later block
