"""What every `compare` command shares: entries, pairs, mean ± std over seeds, paired bootstraps.

A comparison trains (or evaluates) several entries with several seeds each on the same test items
and asks whether a difference between two entries is more than the test set's luck. For a pair
(A, B) with per-item outcomes of each seed, the difference is taken item by item after averaging
each entry over its seeds, and its interval comes from a paired bootstrap over the items: both
entries are scored on the same resampled items, so what the items share cancels. With groups
(all queries of one identity, all expressions of one image) whole groups are drawn instead: a
cluster bootstrap, for items that are not independent within a group.

    summarise(per_seed, metrics)            {metric: {"mean", "std"}} over seeds
    paired_bootstrap(differences, ...)      interval of the mean of per-item differences
    ratio_difference_bootstrap(...)         interval of a difference of ratios of sums (cIoU)
    compare_outcomes(values_a, values_b)    difference, both intervals, per-seed differences

The bootstrap is written here, not taken from scipy: `scipy.stats.bootstrap` draws items, not
groups, and has no statistic over paired ratios of sums; the draws are torch's, chunk by chunk,
so any number of items fits in bounded memory and a fixed seed gives the same interval.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_RESAMPLES = 10_000
# Resamples drawn per [chunk, units] index matrix: bounded memory for any number of items.
RESAMPLE_CHUNK_ELEMENTS = 2**24


# ------------------------------------------------------------------------------------ entries
@dataclass
class Entry:
    """One configuration of a comparison: a named config with its overrides."""

    name: str  # how tables and folders call it, e.g. "phase4" or "phase4 loss.gen_weight=0.1"
    config: str  # a config name or YAML path
    overrides: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in self.name.replace(" ", "__"))


def parse_sweep(sweep: str) -> tuple[str, list[str]]:
    """ "loss.gen_weight=0,0.1,0.5" -> ("loss.gen_weight", ["0", "0.1", "0.5"])."""
    key, _, values = sweep.partition("=")
    choices = [value.strip() for value in values.split(",") if value.strip()]
    if not key or not choices:
        raise ValueError(f"--sweep {sweep!r}: expected KEY=V1,V2,..., e.g. loss.gen_weight=0,0.1,0.5")
    return key.strip(), choices


def entry_name(config: str) -> str:
    return Path(config).stem if config.endswith((".yaml", ".yml")) else config


def make_entries(configs: list[str], sweep: str | None = None, reference: str | None = None) -> list[Entry]:
    """One entry per config, or, with a sweep, one per (config, value); a `reference` config
    (not swept) comes first, so by default every other entry is compared with it."""
    if not configs:
        raise ValueError("name at least one config to compare, e.g. phase3 phase4")
    if sweep is None:
        entries = [Entry(entry_name(name), name) for name in configs]
    else:
        key, values = parse_sweep(sweep)
        entries = [
            Entry(f"{entry_name(name)} {key}={value}", name, [f"{key}={value}"])
            for name in configs
            for value in values
        ]
    if reference is not None:
        entries.insert(0, Entry(entry_name(reference), reference))
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"the entries must differ: {', '.join(names)}")
    return entries


def parse_pairs(pairs: list[str], entries: Sequence[str | Entry]) -> list[tuple[str, str]]:
    """ "A,B" means A minus B. With none given: every entry against the first."""
    names = [entry.name if isinstance(entry, Entry) else entry for entry in entries]
    if not pairs:
        return [(name, names[0]) for name in names[1:]]
    parsed = []
    for pair in pairs:
        first, _, second = pair.partition(",")
        first, second = first.strip(), second.strip()
        unknown = [name for name in (first, second) if name not in names]
        if not second or unknown:
            raise ValueError(
                f"--pair {pair!r}: expected A,B with A and B among the entries: {'; '.join(names)}"
            )
        parsed.append((first, second))
    return parsed


def check_seeds(seeds: int) -> range:
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: at least 1")
    return range(seeds)


# ------------------------------------------------------------------------------------ statistics
def summarise(per_seed: list[dict[str, float]], metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "std"}} over seeds; std is the sample standard deviation (0 for one seed)."""
    return {
        metric: {
            "mean": statistics.fmean(run[metric] for run in per_seed),
            "std": statistics.stdev([run[metric] for run in per_seed]) if len(per_seed) > 1 else 0.0,
        }
        for metric in metrics
    }


def bootstrap_interval(
    statistic: Callable[[torch.Tensor], torch.Tensor],
    units: int,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """The percentile interval of `statistic` over `resamples` draws of `units` units with
    replacement. `statistic` maps drawn unit indices long [c, units] to the statistic of each
    draw [c]; torch's generator, seeded with `seed`, draws them in order, chunk by chunk."""
    if units < 1:
        raise ValueError("a bootstrap needs at least one item")
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, RESAMPLE_CHUNK_ELEMENTS // units)
    values = []
    for start in range(0, resamples, chunk):
        draws = torch.randint(units, (min(chunk, resamples - start), units), generator=generator)
        values.append(statistic(draws))
    values = torch.cat(values).double()  # [resamples]
    tail = (1.0 - level) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return low, high


def _group_sums(values: torch.Tensor, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-unit sums [..., U], per-unit item counts [U]): the items themselves without groups."""
    if groups is None:
        return values, torch.ones(values.shape[-1], dtype=torch.float64)
    _, member = torch.unique(groups.flatten(), return_inverse=True)  # [Q] -> 0..G-1
    count = int(member.max()) + 1
    sums = torch.zeros(*values.shape[:-1], count, dtype=torch.float64).index_add_(-1, member, values)
    return sums, torch.bincount(member, minlength=count).double()


def paired_bootstrap(
    differences: torch.Tensor,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    groups: torch.Tensor | None = None,
) -> tuple[float, float]:
    """The percentile interval of the mean of `differences` [Q] over `resamples` bootstrap draws.

    Without `groups` the Q values are drawn with replacement. With `groups` [Q] (each item's
    group) whole groups are drawn, and each draw's mean is over all the items of the groups drawn.
    """
    values = differences.double().flatten()
    if len(values) == 0:
        raise ValueError("a bootstrap needs at least one item")
    sums, counts = _group_sums(values, groups)
    return bootstrap_interval(
        lambda draws: sums[draws].sum(1) / counts[draws].sum(1), len(sums), resamples, seed, level
    )


def ratio_difference_bootstrap(
    numerators: torch.Tensor,
    denominators: torch.Tensor,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    groups: torch.Tensor | None = None,
) -> tuple[float, float]:
    """The interval of sum(num_A)/sum(den_A) - sum(num_B)/sum(den_B) over paired draws of the items
    (or of their groups): `numerators`, `denominators` [2, Q], row 0 for A and row 1 for B. It is
    how cIoU (total intersection over total union) differs between two models."""
    if numerators.shape != denominators.shape or numerators.shape[0] != 2:
        raise ValueError(
            f"numerators {tuple(numerators.shape)} and denominators {tuple(denominators.shape)}: expected [2, Q] each"
        )
    sums, _ = _group_sums(torch.stack([numerators, denominators]).double(), groups)  # [2 (num, den), 2, U]

    def statistic(draws: torch.Tensor) -> torch.Tensor:
        drawn = sums[:, :, draws].sum(-1)  # [2, 2, c]
        ratios = drawn[0] / drawn[1].clamp(min=1e-12)  # [2 (A, B), c]
        return ratios[0] - ratios[1]

    return bootstrap_interval(statistic, sums.shape[-1], resamples, seed, level)


def compare_outcomes(
    values_a: torch.Tensor,
    values_b: torch.Tensor,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    groups: torch.Tensor | None = None,
    scale: float = 100.0,
) -> dict[str, object]:
    """A minus B from per-seed, per-item outcomes [seeds, Q] of each (the same items, in the same
    order; the seed counts may differ): the difference of the seed-averaged means (times `scale`),
    its interval resampling items, and with `groups` the one resampling groups.

    `per_seed_difference` pairs seed k of A with seed k of B, or each seed with the other entry's
    only one (a deterministic baseline)."""
    if values_a.shape[-1] != values_b.shape[-1]:
        raise ValueError(
            f"the two entries were evaluated on different items ({values_a.shape[-1]} and "
            f"{values_b.shape[-1]}); a paired comparison needs the same test split"
        )
    a, b = (
        values_a.double().reshape(-1, values_a.shape[-1]),
        values_b.double().reshape(-1, values_b.shape[-1]),
    )
    differences = scale * (a.mean(0) - b.mean(0))  # [Q]
    pairable = len(a) == len(b) or 1 in (len(a), len(b))  # a single seed broadcasts
    per_seed = (scale * (a.mean(1) - b.mean(1))).tolist() if pairable else []
    return {
        "difference": float(differences.mean()),
        "interval": list(paired_bootstrap(differences, resamples, seed)),
        "interval_by_group": list(paired_bootstrap(differences, resamples, seed, groups=groups))
        if groups is not None
        else None,
        "resamples": resamples,
        "per_seed_difference": per_seed,
    }


def filed(value: float) -> float:
    """A figure as a results file keeps it (0.01 point). Tables print figures from this, so a table
    written from the full-precision report and one rendered from the results file show the same
    digits (rounding -1.4496 to one decimal gives -1.4, rounding its filed -1.45 may give -1.5)."""
    return round(value, 2)


def points_text(value: float) -> str:
    """A difference in points, signed, to 0.1."""
    return f"{filed(value):+.1f}"


def interval_text(interval: Sequence[float] | None) -> str:
    return "n/a" if interval is None else f"[{points_text(interval[0])}, {points_text(interval[1])}]"


def mean_std_text(summary: dict[str, float], digits: int = 1) -> str:
    return f"{filed(summary['mean']):.{digits}f} ± {filed(summary['std']):.{digits}f}"


def filed_form(value):
    """A compare report as a results file keeps it (`visionloom.results`): figures to 0.01 point;
    without the pairs' per-seed differences, the "supports" sentences (their
    intervals decide them), and a per-seed list of figures where every seed gave the same one. The report
    beside it (OUT/compare.json) keeps everything at full precision."""
    if isinstance(value, float):
        return filed(value)
    if isinstance(value, list):
        return [filed_form(item) for item in value]
    if isinstance(value, dict):
        figures = value.get("per_seed")
        constant = (
            isinstance(figures, list)
            and all(isinstance(figure, float | int) for figure in figures)
            and len(set(figures)) == 1
        )
        return {
            key: filed_form(item)
            for key, item in value.items()
            if key not in ("per_seed_difference", "supports", "supports_by_image")
            and not (key == "per_seed" and constant)
        }
    return value
