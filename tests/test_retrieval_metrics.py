"""retrieval_metrics against a literal implementation of IRRA's definitions, and its edge cases."""

from __future__ import annotations

import pytest
import torch

from visionloom.retrieval.metrics import retrieval_metrics


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
        "R1": cmc[0],
        "R5": cmc[4],
        "R10": cmc[9],
        "mAP": ap.mean() * 100,
        "mINP": torch.cat(inp).mean() * 100,
    }


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True)])
def test_matches_literal_irra_definition(seed, ties):
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.randint(0, 40, (300,), generator=generator)
    query_pids = gallery_pids[torch.randint(0, 300, (120,), generator=generator)]
    similarity = torch.randn(120, 300, generator=generator)
    if ties:
        similarity = (similarity * 2).round() / 2  # many equal scores
    expected = irra_literal(similarity, query_pids, gallery_pids)
    for budget in (10**9, 4096):  # one chunk, and many chunks of a few queries
        got = retrieval_metrics(similarity, query_pids, gallery_pids, memory_budget_bytes=budget)
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), abs=1e-9), key


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
