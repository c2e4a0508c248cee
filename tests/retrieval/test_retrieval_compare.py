"""`retrieval compare`: seeds, mean ± std, the paired bootstrap (against a literal one), sweeps, and
a comparison that continues where it stopped."""

from __future__ import annotations

import csv
import json
import random
import statistics

import numpy as np
import pytest
import torch

from visionloom.engine import compare
from visionloom.retrieval.compare import (
    Entry,
    compare_pair,
    make_entries,
    paired_bootstrap,
    parse_pairs,
    run_comparison,
)
from visionloom.retrieval.metrics import QueryOutcomes, retrieval_metrics_from_features


def _differences(count: int = 400, seed: int = 3) -> torch.Tensor:
    """Per-query R@1 differences of two models with one seed each: -100, 0 or +100 points."""
    generator = torch.Generator().manual_seed(seed)
    a = (torch.rand(count, generator=generator) < 0.55).double()
    b = (torch.rand(count, generator=generator) < 0.45).double()
    return 100.0 * (a - b)


def test_bootstrap_equals_a_literal_loop_over_the_same_draws(monkeypatch):
    differences = _differences()
    monkeypatch.setattr(compare, "RESAMPLE_CHUNK_ELEMENTS", 7 * len(differences))  # several chunks
    low, high = paired_bootstrap(differences, resamples=1000, seed=11)
    generator = torch.Generator().manual_seed(11)
    means = []
    for _ in range(1000):  # one resample at a time, as the textbook writes it
        picked = [
            float(differences[int(i)])
            for i in torch.randint(len(differences), (len(differences),), generator=generator)
        ]
        means.append(sum(picked) / len(picked))
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-9)


def test_bootstrap_agrees_with_an_independent_literal_bootstrap_and_the_normal_interval():
    differences = _differences()
    low, high = paired_bootstrap(differences, resamples=10_000, seed=0)
    values = differences.tolist()
    draw = random.Random(7)
    means = sorted(statistics.fmean(draw.choices(values, k=len(values))) for _ in range(4000))
    literal = np.percentile(means, [2.5, 97.5])
    # Monte-Carlo error of each end: about 0.15 points here (4000 and 10000 resamples)
    assert low == pytest.approx(literal[0], abs=0.8) and high == pytest.approx(literal[1], abs=0.8)
    mean, error = statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5
    assert low == pytest.approx(mean - 1.96 * error, abs=0.8) and high == pytest.approx(
        mean + 1.96 * error, abs=0.8
    )
    assert low < mean < high


def test_pair_difference_is_the_difference_of_mean_r1_and_pairs_queries_not_seeds():
    generator = torch.Generator().manual_seed(0)
    hits_a = (torch.rand(3, 200, generator=generator) < 0.6).double()  # [seeds, Q]
    hits_b = (torch.rand(3, 200, generator=generator) < 0.4).double()
    result = compare_pair(hits_a, hits_b, resamples=2000)
    r1_a, r1_b = 100 * hits_a.mean(1), 100 * hits_b.mean(1)
    assert result["difference"] == pytest.approx(float(r1_a.mean() - r1_b.mean()))
    assert result["per_seed_difference"] == pytest.approx((r1_a - r1_b).tolist())
    low, high = result["interval"]
    assert low < result["difference"] < high
    with pytest.raises(ValueError, match="different queries"):
        compare_pair(hits_a, hits_b[:, :150])


def test_query_outcomes_agree_with_the_metrics():
    generator = torch.Generator().manual_seed(1)
    queries, gallery = torch.randn(50, 8, generator=generator), torch.randn(30, 8, generator=generator)
    query_pids, gallery_pids = torch.randint(0, 10, (50,), generator=generator), torch.arange(30) % 10
    outcomes = QueryOutcomes.empty(50)
    metrics = retrieval_metrics_from_features(queries, gallery, query_pids, gallery_pids, outcomes=outcomes)
    assert float(outcomes.hits(1).mean() * 100) == pytest.approx(metrics["R1"])
    assert float(outcomes.hits(5).mean() * 100) == pytest.approx(metrics["R5"])
    assert float(outcomes.average_precision.mean() * 100) == pytest.approx(metrics["mAP"])
    # in the callers' order: query 0's first hit is where its best relevant item ranks
    scores = queries[0] @ gallery.t()
    best_relevant = scores[gallery_pids == query_pids[0]].max()
    assert int(outcomes.first_rank[0]) == int((scores > best_relevant).sum())


def test_entries_sweeps_and_pairs_and_their_errors():
    entries = make_entries(["phase3", "phase4"], "loss.gen_weight=0,0.5")
    assert [e.name for e in entries] == [
        "phase3 loss.gen_weight=0",
        "phase3 loss.gen_weight=0.5",
        "phase4 loss.gen_weight=0",
        "phase4 loss.gen_weight=0.5",
    ]
    assert entries[3].overrides == ["loss.gen_weight=0.5"] and "/" not in entries[3].folder
    assert parse_pairs([], entries)[0] == ("phase3 loss.gen_weight=0.5", "phase3 loss.gen_weight=0")
    referenced = make_entries(["phase4"], "model.image_mask_ratio=0.25,0.75", reference="phase3")
    assert [e.name for e in referenced] == [
        "phase3",
        "phase4 model.image_mask_ratio=0.25",
        "phase4 model.image_mask_ratio=0.75",
    ]
    assert referenced[0].overrides == [] and parse_pairs([], referenced) == [
        ("phase4 model.image_mask_ratio=0.25", "phase3"),
        ("phase4 model.image_mask_ratio=0.75", "phase3"),
    ]
    with pytest.raises(
        ValueError, match=r"--pair 'phase4,phase9': expected A,B with A and B among the entries"
    ):
        parse_pairs(["phase4,phase9"], make_entries(["phase3", "phase4"]))
    with pytest.raises(ValueError, match="expected KEY=V1,V2"):
        make_entries(["phase4"], "loss.gen_weight")
    with pytest.raises(ValueError, match="the entries must differ"):
        make_entries(["phase3", "phase3"])


SMALL = [
    "model.image_size=[64, 32]",
    "train.steps=2",
    "train.batch_size=4",
    "data.ids_per_batch=2",
    "train.warmup_steps=1",
    "train.checkpoint_every=2",
    "train.eval_every=2",
]


def test_compare_trains_every_seed_once_reports_and_continues(pedes_root, tmp_path, capsys):
    entries = [Entry("baseline", "baseline"), Entry("phase1 lr", "phase1", ["train.lr=0.002"])]
    out = tmp_path / "cmp"
    report = run_comparison(
        entries, pedes_root, out, seeds=2, common_overrides=SMALL, resamples=500, progress=False
    )
    baseline = report["entries"]["baseline"]
    for seed in range(2):
        run = out / "baseline" / f"seed{seed}"
        assert (
            json.loads((run / "test_metrics.json").read_text())["test"]["R1"]
            == baseline["per_seed"][seed]["R1"]
        )
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    values = [run["mAP"] for run in baseline["per_seed"]]
    assert baseline["summary"]["mAP"]["mean"] == pytest.approx(statistics.fmean(values))
    assert baseline["summary"]["mAP"]["std"] == pytest.approx(statistics.stdev(values))
    assert values[0] != values[1]  # the seeds really differ
    (pair,) = report["pairs"]
    assert (pair["a"], pair["b"]) == ("phase1 lr", "baseline")
    low, high = pair["interval_by_identity"]  # the test queries' identities came with the runs
    assert low <= pair["difference"] <= high
    r1 = {
        name: statistics.fmean(run["R1"] for run in report["entries"][name]["per_seed"])
        for name in ("phase1 lr", "baseline")
    }
    assert pair["difference"] == pytest.approx(r1["phase1 lr"] - r1["baseline"])
    assert "train:\n" in (out / "phase1__lr" / "seed0" / "config.yaml").read_text()
    assert "lr: 0.002" in (out / "phase1__lr" / "seed0" / "config.yaml").read_text()
    with open(out / "per_seed.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and rows[0]["selected_step"] == "2" and float(rows[0]["val_R1"]) >= 0
    assert "phase1 lr − baseline" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 10_000

    # run again: nothing trains; every run is read back
    capsys.readouterr()
    again = run_comparison(
        entries, pedes_root, out, seeds=2, common_overrides=SMALL, resamples=500, progress=False
    )
    assert capsys.readouterr().out.count("finished in an earlier run") == 4
    assert again["pairs"][0]["interval"] == pair["interval"]


def test_compare_from_the_command_line_names_a_bad_sweep_key_before_training(pedes_root, tmp_path):
    from typer.testing import CliRunner

    from visionloom.cli import app

    out = tmp_path / "cmp"
    arguments = ["retrieval", "compare", "baseline", "phase1", "--data", str(pedes_root), "--out", str(out)]
    small = [item for setting in SMALL for item in ("--set", setting)]
    result = CliRunner().invoke(
        app, [*arguments, "--seeds", "1", "--pair", "phase1,baseline", "--resamples", "200", *small]
    )
    assert result.exit_code == 0, result.output
    assert "phase1 − baseline" in result.output and (out / "compare.json").is_file()
    record = json.loads((out / "results.json").read_text())
    assert record["kind"] == "retrieval_compare" and record["seeds"] == [0]
    assert record["figures"]["pairs"][0]["a"] == "phase1" and "command" in record and "commit" in record
    bad = CliRunner().invoke(app, [*arguments, "--sweep", "loss.gen_wieght=0,1", *small])
    assert bad.exit_code != 0
    assert "unknown key(s) loss.gen_wieght" in bad.output
    assert not (out / "baseline__loss.gen_wieght_0").exists()
    missing = CliRunner().invoke(
        app,
        ["retrieval", "compare", "baseline", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
    )
    assert missing.exit_code != 0 and "no annotation file" in missing.output
    assert not (tmp_path / "x").exists()  # named before any folder is made


def test_identity_bootstrap_equals_a_literal_cluster_loop_and_singletons_give_the_query_bootstrap(
    monkeypatch,
):
    differences = _differences(300)
    groups = torch.arange(300) // 5  # 60 identities of 5 queries
    monkeypatch.setattr(compare, "RESAMPLE_CHUNK_ELEMENTS", 7 * 60)
    low, high = paired_bootstrap(differences, resamples=800, seed=4, groups=groups)
    generator = torch.Generator().manual_seed(4)
    members = {
        int(g): [float(d) for d, h in zip(differences, groups, strict=True) if h == g]
        for g in groups.unique()
    }
    means = []
    for _ in range(800):  # draw 60 identities with replacement, pool all their queries
        pooled = [
            value for g in torch.randint(60, (60,), generator=generator).tolist() for value in members[g]
        ]
        means.append(sum(pooled) / len(pooled))
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-9)
    singletons = paired_bootstrap(differences, resamples=800, seed=4, groups=torch.arange(300) * 7)
    assert singletons == pytest.approx(paired_bootstrap(differences, resamples=800, seed=4), abs=1e-12)


def test_correlated_queries_widen_the_identity_interval():
    generator = torch.Generator().manual_seed(2)
    # each identity's 6 queries share one outcome: 6 copies of 50 independent values
    per_identity = 100.0 * (torch.rand(50, generator=generator) < 0.5).double()
    differences, groups = per_identity.repeat_interleave(6), torch.arange(50).repeat_interleave(6)
    queries = paired_bootstrap(differences, resamples=4000)
    identities = paired_bootstrap(differences, resamples=4000, groups=groups)
    width = lambda interval: interval[1] - interval[0]  # noqa: E731
    assert width(identities) > 2 * width(queries)  # about sqrt(6) wider: 50 independent values, not 300


def test_tokenizers_are_prepared_from_the_configs_own_vq_fit(pedes_root, tmp_path, monkeypatch):
    from visionloom.retrieval import vq
    from visionloom.retrieval.config import load_config
    from visionloom.retrieval.train import ensure_tokenizers

    fitted = []
    monkeypatch.setattr(
        vq, "ensure_vq", lambda root, split, fit, directory, **_: fitted.append((fit, directory))
    )
    configs = [load_config("phase4", ["vq.fit.steps=7"]), load_config("phase3")]
    ensure_tokenizers(configs, pedes_root, fit_overrides={"seed": 3})
    ((fit, directory),) = fitted
    assert (fit.steps, fit.seed, directory) == (
        7,
        3,
        pedes_root / "vq",
    )  # the config's fit, the override on top
    with pytest.raises(ValueError, match="fit different VQ tokenizers into .*vq \\(their vq.fit differs\\)"):
        ensure_tokenizers([load_config("phase4"), load_config("phase4", ["vq.fit.steps=7"])], pedes_root)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="vq.path .*elsewhere: no VQ tokenizer there"):
        ensure_tokenizers([load_config("phase4", [f"vq.path={tmp_path / 'elsewhere'}"])], pedes_root)
