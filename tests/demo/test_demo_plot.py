"""The demo's loss curves: a grid of panels, each loss on a scale where its fall shows."""

from __future__ import annotations

import csv

from PIL import Image

from visionloom.demo.run import plot_curves


def fake_run(directory, gen_start: float):
    directory.mkdir(parents=True)
    with open(directory / "train_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "sdm_loss", "gen_loss", "val_R1"])
        writer.writeheader()
        for step in range(10, 110, 10):
            sdm, gen = 25.0 - step / 10, gen_start * (1 - step / 200)
            writer.writerow({"step": step, "loss": sdm + gen, "sdm_loss": sdm, "gen_loss": gen})
        writer.writerow({"step": 100, "val_R1": 40.0})
    return directory


def test_six_phases_are_laid_out_in_a_grid(tmp_path):
    runs = {f"phase{i}": fake_run(tmp_path / f"p{i}", 2.5) for i in range(6)}
    width, height = Image.open(plot_curves(runs, tmp_path / "curves.png")).size
    assert width / height < 2.5  # 3 x 2 panels, not one strip of six (which was 3300 x 396)


def test_each_loss_is_drawn_relative_to_its_start(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.plot

    def record(self, x, y, *args, label=None, **kwargs):
        drawn[label] = list(y)
        return original(self, x, y, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    plot_curves({"phase4": fake_run(tmp_path / "p", 2.5)}, tmp_path / "curves.png")
    gen = next(values for label, values in drawn.items() if label.startswith("gen_loss (from 2.38"))
    sdm = next(values for label, values in drawn.items() if label.startswith("sdm_loss (from 24"))
    # Both start at 1, and the small loss's fall spans as much of the axis as the large one's.
    assert gen[0] == sdm[0] == 1.0
    assert 1 - gen[-1] > 0.4 and 1 - sdm[-1] > 0.35
