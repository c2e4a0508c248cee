"""The trainer: loss summing, schedule, samplers and sharding, atomic checkpoints, bit-for-bit resume,
selection on val with test evaluated once, and `accelerate launch` with two processes."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import small_config
from visionloom.engine import checkpoint as checkpoint_module
from visionloom.engine.checkpoint import latest_checkpoint
from visionloom.engine.samplers import IdentityBatches, RandomBatches
from visionloom.engine.trainer import TrainConfig, warmup_cosine
from visionloom.retrieval import evaluate
from visionloom.retrieval.train import train_retrieval


def _schedule_rates(steps: int, **schedule) -> list[float]:
    """The rate warmup_cosine (lr 1) gives before each of `steps` steps, and after the last."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, **schedule)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return [*rates, scheduler.get_last_lr()[0]]


def test_warmup_then_cosine_to_zero():
    rates = _schedule_rates(12, warmup_steps=4, total_steps=12)
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == pytest.approx(1.0) and rates[8] == pytest.approx(0.5)
    assert rates[12] == pytest.approx(0.0)


def test_warm_restart_decays_to_zero_then_follows_the_whole_runs_cosine():
    rates = _schedule_rates(12, warmup_steps=2, total_steps=12, restart_step=6)
    assert rates[:2] == [0.5, 1.0]
    # Up to the restart: the cosine of a run that ends at step 6 (half-way at step 4).
    assert rates[4] == pytest.approx(0.5)
    assert rates[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))
    # From the restart on: the 12-step run's cosine, back up at step 6, half-way at step 7.
    assert rates[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 10)))
    assert rates[7] == pytest.approx(0.5)
    assert rates[6] > rates[5]
    assert rates[12] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("share", "steps", "expected"), [(0.5, 10000, 5000), (0.5, 3, 1), (0.3, 2, None), (1.0, 8, None)]
)
def test_the_restart_step_is_the_share_of_the_run_and_none_at_its_ends(share, steps, expected):
    assert TrainConfig(restart_at=share).restart_step(steps) == expected
    assert TrainConfig().restart_step(steps) is None


def test_identity_batches_are_balanced_and_shards_are_disjoint_and_complete():
    pids = [pid for pid in range(10) for _ in range(6)]
    whole = IdentityBatches(pids, batch_size=8, ids_per_batch=4, seed=5)
    shards = [IdentityBatches(pids, 8, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    global_batches = whole.global_batches()
    for batch in global_batches:
        counts = torch.bincount(torch.tensor([pids[i] for i, _ in batch]))
        assert sorted(c for c in counts.tolist() if c) == [2, 2, 2, 2]
    seen = [[tuple(b) for b in shard] for shard in shards]
    assert len(seen[0]) == len(seen[1]) == len(global_batches) // 2
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {tuple(b) for b in global_batches[: 2 * len(seen[0])]}
    shards[0].set_epoch(1)
    assert [tuple(b) for b in shards[0]] != seen[0]  # a new order each epoch
    shards[0].set_epoch(0, start=2)
    assert [tuple(b) for b in shards[0]] == seen[0][2:]  # resume skips what was done


def test_random_batches_shard_without_overlap():
    shards = [RandomBatches(50, batch_size=4, seed=1, rank=r, world_size=3) for r in range(3)]
    indices = [[i for batch in shard for i, _ in batch] for shard in shards]
    flat = [i for part in indices for i in part]
    assert len(flat) == len(set(flat)) == 48  # 12 full batches over 3 processes, each sample once


def _train(root, run_dir, *overrides, **kwargs):
    config = small_config("phase1", "model.text.tiny={dropout_rate: 0.1}", *overrides)
    return train_retrieval(config, root, run_dir, progress=False, **kwargs)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _logged_rates(run_dir: Path) -> list[tuple[str, str]]:
    """(step, lr) of each row of RUN/train_log.csv that logs a rate."""
    with open(run_dir / "train_log.csv") as handle:
        return [(row["step"], row["lr"]) for row in csv.DictReader(handle) if row["lr"]]


def _losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "train_log.csv") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle) if row["loss"]]


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(pedes_root, tmp_path):
    full = tmp_path / "full"
    _train(pedes_root, full, evaluate_test=False)
    assert [name.name for name in sorted((full / "checkpoints").glob("step_*"))] == [
        "step_0000002",
        "step_0000004",
    ]

    # A run that stopped after its step-2 checkpoint: its files, then --resume.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_0000002", resumed / "checkpoints" / "step_0000002")
    (resumed / "checkpoints" / "latest").write_text("step_0000002")
    shutil.copy(full / "config.yaml", resumed / "config.yaml")
    _train(pedes_root, resumed, resume=True, evaluate_test=False)

    final_full = _weights(full / "checkpoints" / "step_0000004")
    final_resumed = _weights(resumed / "checkpoints" / "step_0000004")
    assert final_full.keys() == final_resumed.keys()
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    assert _losses(full)[2:] == _losses(resumed)
    # and the step-2 weights really differ from the end: the test compares trained weights
    start = _weights(full / "checkpoints" / "step_0000002")
    assert not all(torch.equal(start[k], final_full[k]) for k in start)


def test_a_run_killed_mid_write_keeps_the_previous_checkpoint(pedes_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = checkpoint_module.save_model

    def dies_at_step_4(model, filename, *args, **kwargs):
        if "step_0000004" in filename:
            Path(filename).write_bytes(b"half a file")
            raise OSError("killed")
        return real_save(model, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_model", dies_at_step_4)
    with pytest.raises(OSError, match="killed"):
        _train(pedes_root, run, evaluate_test=False)
    latest = latest_checkpoint(run / "checkpoints")
    assert latest.name == "step_0000002"
    assert not (run / "checkpoints" / ".tmp_step_0000004").exists()  # the partial files removed
    monkeypatch.setattr(checkpoint_module, "save_model", real_save)
    summary = _train(pedes_root, run, resume=True, evaluate_test=False)
    assert summary["steps"] == 4
    assert latest_checkpoint(run / "checkpoints").name == "step_0000004"


def test_selection_uses_val_and_test_is_evaluated_once_at_the_end(pedes_root, tmp_path, monkeypatch):
    seen = []
    real = evaluate.evaluate_split_outcomes  # what validation (through evaluate_split) and test both call

    def recording(model, split, *args, **kwargs):
        seen.append(split.name)
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_split_outcomes", recording)
    summary = _train(pedes_root, tmp_path / "run", "train.eval_every=2")
    assert seen == ["val", "val", "test"]
    selection = json.loads((tmp_path / "run" / "best" / "selection.json").read_text())
    assert selection["step"] == summary["selected"]["step"]
    notes = json.loads((tmp_path / "run" / "run.json").read_text())["notes"]
    assert any("selected on the validation split" in note for note in notes)
    assert set(summary["test"]) == {"R1", "R5", "R10", "mAP", "mINP"}


def test_select_last_keeps_the_last_weights_whatever_validation_says(pedes_root, tmp_path, monkeypatch):
    scores = iter([90.0, 10.0, 5.0])  # validation gets worse after the first check

    def falling(model, split, *args, **kwargs):
        return {"R1": next(scores), "R5": 0.0, "R10": 0.0, "mAP": 0.0, "mINP": 0.0}

    monkeypatch.setattr(evaluate, "evaluate_split", falling)
    best = _train(pedes_root, tmp_path / "best", "train.eval_every=1", "train.steps=3")
    scores = iter([90.0, 10.0, 5.0])
    last = _train(pedes_root, tmp_path / "last", "train.eval_every=1", "train.steps=3", "train.select=last")
    assert best["selected"]["step"] == 1 and best["selected"]["R1"] == 90.0
    assert last["selected"]["step"] == 3 and last["selected"]["R1"] == 5.0
    kept = _weights(tmp_path / "last" / "best")
    latest = _weights(tmp_path / "last" / "checkpoints" / "step_0000003")
    assert kept.keys() == latest.keys() and all(torch.equal(kept[k], latest[k]) for k in kept)
    notes = json.loads((tmp_path / "last" / "run.json").read_text())["notes"]
    assert any("train.select=last" in note for note in notes)
    assert "last" not in best  # evaluated only when asked


def test_evaluate_last_tests_the_last_weights_beside_the_selected_ones(pedes_root, tmp_path, monkeypatch):
    from visionloom.retrieval.compare import selection_check
    from visionloom.retrieval.train import load_outcomes

    scores = iter([90.0, 10.0, 5.0])
    real = evaluate.evaluate_split

    def falling(model, split, *args, **kwargs):
        if split.name == "val":
            return {"R1": next(scores), "R5": 0.0, "R10": 0.0, "mAP": 0.0, "mINP": 0.0}
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_split", falling)
    run = tmp_path / "run"
    summary = _train(pedes_root, run, "train.eval_every=1", "train.steps=3", "train.evaluate_last=true")
    assert summary["selected"]["step"] == 1 and summary["last"]["step"] == 3
    # each is what its own weights give on test; the outcomes file is the selected weights'
    from visionloom.data.pedes import read_pedes
    from visionloom.retrieval.train import load_trained

    last = load_trained(run / "checkpoints" / "step_0000003")
    assert real(last, read_pedes(pedes_root)["test"]) == pytest.approx(summary["last"]["test"])
    assert 100 * float(load_outcomes(run).hits(1).double().mean()) == pytest.approx(summary["test"]["R1"])
    check = selection_check(run, summary)
    assert check == {"last_step": 3, "last_val_R1": 5.0, "last_test_R1": summary["last"]["test"]["R1"]}


def test_trainer_sums_only_loss_keys(pedes_root, tmp_path):
    _train(pedes_root, tmp_path / "run", evaluate_test=False)
    with open(tmp_path / "run" / "train_log.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["loss"]]
    for row in rows:
        assert float(row["loss"]) == pytest.approx(float(row["sdm_loss"]) + float(row["id_loss"]), abs=1e-5)


def test_resume_with_another_config_is_refused(pedes_root, tmp_path):
    run = tmp_path / "run"
    _train(pedes_root, run, evaluate_test=False)
    with pytest.raises(ValueError, match=r"cannot change what .* train\.lr: 0\.001 -> 0\.5"):
        _train(pedes_root, run, "train.lr=0.5", resume=True, evaluate_test=False)


def test_resume_with_more_steps_extends_a_finished_run_on_the_longer_schedule(
    pedes_root, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    _train(pedes_root, run, evaluate_test=False)  # 4 steps, finished
    used = []  # the learning rate each optimizer step of the second session applies
    adamw_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    summary = _train(pedes_root, run, "train.steps=8", "train.eval_every=4", resume=True, evaluate_test=False)
    assert summary["steps"] == 8
    assert (run / "checkpoints" / "step_0000008").is_dir()
    assert "steps: 8" in (run / "config.yaml").read_text()
    # From the resume point on, the learning rate is the 8-step schedule's, not the finished 4-step
    # one's (which had reached 0): warm-up 1 step, then cosine to 0 at step 8.
    logged = {int(step): float(rate) for step, rate in _logged_rates(run)}
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    schedule = warmup_cosine(optimizer, 1, 8)
    expected = {}
    for step in range(1, 9):
        optimizer.step()
        schedule.step()
        expected[step] = schedule.get_last_lr()[0]
    assert logged[4] == pytest.approx(1e-3 * 0.0, abs=1e-12)  # the first session ended at lr 0
    for step in range(5, 9):
        assert logged[step] == pytest.approx(expected[step], rel=1e-6), step
    # Step 5 applies the rate the 8-step schedule sets after step 4, not the saved 0.
    assert used == pytest.approx([expected[step] for step in range(4, 8)], rel=1e-6)
    with pytest.raises(ValueError, match=r"the run is at step 8 .* train\.steps=6 would end it before"):
        _train(pedes_root, run, "train.steps=6", resume=True, evaluate_test=False)


def test_one_run_with_a_warm_restart_equals_a_finished_run_continued_with_more_steps(pedes_root, tmp_path):
    # The two-stage recipe as one run: 8 steps restarting at step 4 ...
    restarted = tmp_path / "restarted"
    _train(pedes_root, restarted, "train.steps=8", "train.restart_at=0.5", evaluate_test=False)
    # ... against a 4-step run, finished, then resumed with train.steps=8.
    staged = tmp_path / "staged"
    _train(pedes_root, staged, evaluate_test=False)
    _train(pedes_root, staged, "train.steps=8", resume=True, evaluate_test=False)
    restarted_rates = _logged_rates(restarted)
    staged_rates = _logged_rates(staged)
    # The logged lr is the rate the next step applies: at step 4 the finished 4-step run logged its
    # schedule's end (0), the restarted run the rate step 5 applies in both.
    assert restarted_rates[:3] == staged_rates[:3] and restarted_rates[4:] == staged_rates[4:]
    assert staged_rates[3] == ("4", "0.0") and float(restarted_rates[3][1]) > 0
    assert _losses(restarted) == _losses(staged)
    final_restarted = _weights(restarted / "checkpoints" / "step_0000008")
    final_staged = _weights(staged / "checkpoints" / "step_0000008")
    assert final_restarted.keys() == final_staged.keys()
    for name in final_restarted:
        assert torch.equal(final_restarted[name], final_staged[name]), name
    # Without the restart the rates differ from step 5 on: the test can tell the two apart.
    plain = tmp_path / "plain"
    _train(pedes_root, plain, "train.steps=8", evaluate_test=False)
    plain_rates = _logged_rates(plain)
    assert plain_rates != restarted_rates


DENORMAL_SCRIPT = """
import torch
from torch.utils.data import DataLoader
from visionloom.engine.samplers import Items, RandomBatches
from visionloom.engine.trainer import TrainConfig, Trainer
subnormal = torch.tensor([1e-39])
before = bool((subnormal * 1.0 != 0).item())
loader = DataLoader(Items(list(range(4))), batch_sampler=RandomBatches(4, 2, 0))
Trainer(torch.nn.Linear(2, 1), loader, TrainConfig(steps=1, log_with=[]), sys.argv[1], progress=False)
after = bool((subnormal * 1.0 != 0).item())
print(before, after)
"""


def test_a_cpu_trainer_flushes_subnormal_floats_to_zero(tmp_path):
    # Subnormals make x86 arithmetic many times slower; a confident model produces them.
    script = "import sys\n" + DENORMAL_SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


SHARD_SCRIPT = """
import json, sys
from accelerate import Accelerator
from visionloom.retrieval.datasets import make_sampler, TrainPairs
from visionloom.data.pedes import read_pedes
from tests.helpers import small_config
from visionloom.retrieval.build import create_model
root, out = sys.argv[1], sys.argv[2]
accelerator = Accelerator(cpu=True)
split = read_pedes(root)["train"]
config = small_config("baseline")
model = create_model(config, split.num_identities)
pairs = TrainPairs(split, model.input_spec)
result = {}
for ids_per_batch in (0, 2):
    sampler = make_sampler(pairs, 4, ids_per_batch, 0, accelerator.process_index, accelerator.num_processes)
    result[ids_per_batch] = [i for batch in sampler for i, _ in batch]
json.dump(result, open(f"{out}/rank{accelerator.process_index}.json", "w"))
"""


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(pedes_root, tmp_path):
    # accelerate's torchrun launcher; without a GPU the Accelerator puts both processes on CPU (gloo).
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    script = tmp_path / "shards.py"
    script.write_text(textwrap.dedent(SHARD_SCRIPT))
    repo = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(repo), "PATH": str(Path(sys.executable).parent), "OMP_NUM_THREADS": "1"}

    def launched(*arguments: str) -> None:
        done = subprocess.run(
            [*launch, *arguments], env=env, cwd=repo, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]

    launched(str(script), str(pedes_root), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for sampler in ("0", "2"):
        first, second = ranks[0][sampler], ranks[1][sampler]
        assert first and second and len(first) == len(second)
        if sampler == "0":
            assert not set(first) & set(second)  # random batches: every sample on one process only

    run = tmp_path / "run"
    settings = ["model.image_size=[64, 32]", "train.steps=3", "train.batch_size=4", "data.ids_per_batch=2"]
    settings += ["train.checkpoint_every=2", "model.text.tiny={dropout_rate: 0.1}"]
    train = ["-m", "visionloom.cli", "retrieval", "train", "phase1", "--data", str(pedes_root)]
    train += [part for setting in settings for part in ("--set", setting)]
    launched(*train, "--out", str(run))
    state = json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())
    assert state["processes"] == 2 and state["step"] == 3
    assert {p.name for p in latest_checkpoint(run / "checkpoints").glob("rng_*.pt")} == {
        "rng_0.pt",
        "rng_1.pt",
    }
    assert json.loads((run / "test_metrics.json").read_text())["test"]["R1"] >= 0

    # A 2-process run killed after its step-2 checkpoint (its files as they were then), resumed
    # under the launcher, ends bit for bit where the uninterrupted run ended.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step_0000002", resumed / "checkpoints" / "step_0000002")
    for name in ("config.yaml", "data.json", "run.json"):
        shutil.copy(run / name, resumed / name)
    launched(*train, "--out", str(resumed), "--resume")
    final, again = (_weights(r / "checkpoints" / "step_0000003") for r in (run, resumed))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    start = _weights(run / "checkpoints" / "step_0000002")
    assert not all(torch.equal(start[k], final[k]) for k in start)  # training moved the weights


class _PartlyFrozen(torch.nn.Module):
    """A trained head next to a frozen part that is rebuilt from its own source."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Linear(3, 3)

    def weights_from_elsewhere(self) -> tuple[str, ...]:
        return ("frozen.",)


def test_weights_from_elsewhere_are_not_written_and_everything_else_must_load(tmp_path):
    from safetensors import safe_open

    from visionloom.engine.checkpoint import load_weights, save_weights

    trained = _PartlyFrozen(seed=0)
    save_weights(trained, tmp_path / "model.safetensors")
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert set(handle.keys()) == {"head.weight", "head.bias"}
    fresh = _PartlyFrozen(seed=1)
    frozen_before = fresh.frozen.weight.clone()
    load_weights(fresh, tmp_path / "model.safetensors")
    assert torch.equal(fresh.head.weight, trained.head.weight)
    assert torch.equal(fresh.frozen.weight, frozen_before)  # left as built
    # A file lacking a weight the model does not rebuild itself is refused, naming it.
    plain = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    save_weights(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="short.safetensors does not fit the model.*1.weight"):
        load_weights(plain, tmp_path / "short.safetensors")


# ---------------------------------------------------------------- optimizer groups and epochs
IRRA_GROUPS = (
    "train.param_groups=[{pattern: 'bias', lr_factor: 2.0, weight_decay: 0.0},"
    " {pattern: '^(classifier|image_proj|text_proj)\\.', lr_factor: 5.0}]"
)


def test_parameter_groups_follow_the_rules_in_order_later_rules_overriding():
    from visionloom.engine.trainer import TrainConfig, parameter_groups

    model = torch.nn.ModuleDict(
        {
            "backbone": torch.nn.Linear(4, 4),
            "norm": torch.nn.LayerNorm(4),
            "classifier": torch.nn.Linear(4, 3),
        }
    )
    config = TrainConfig(
        lr=1e-5,
        weight_decay=4e-5,
        param_groups=[
            {"pattern": "bias", "lr_factor": 2.0, "weight_decay": 0.0},
            {"pattern": "^classifier\\.", "lr_factor": 5.0},
        ],
    )
    groups = parameter_groups(model, config)
    by_parameter = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    expected = {
        "backbone.weight": (1e-5, 4e-5),
        "backbone.bias": (2e-5, 0.0),
        "norm.weight": (1e-5, 4e-5),  # with rules a norm's weight decays, as in IRRA
        "norm.bias": (2e-5, 0.0),
        "classifier.weight": (5e-5, 4e-5),
        "classifier.bias": (5e-5, 0.0),  # the later rule sets the lr; the bias rule's decay stays
    }
    for name, parameter in model.named_parameters():
        assert by_parameter[id(parameter)] == pytest.approx(expected[name]), name
    assert len(groups) == 4 and sum(len(g["params"]) for g in groups) == 6
    # without rules: decay on matrices only (CLIP's and the project's default)
    plain = parameter_groups(model, TrainConfig(weight_decay=0.01))
    assert [(g["lr_factor"], g["weight_decay"], len(g["params"])) for g in plain] == [
        (1.0, 0.01, 2),
        (1.0, 0.0, 4),
    ]


def test_a_rule_that_matches_nothing_or_is_no_regex_is_an_error(pedes_root, tmp_path):
    from visionloom.config import ConfigError
    from visionloom.engine.trainer import TrainConfig, parameter_groups

    with pytest.raises(ValueError, match=r"'\^clasifier' match no trainable parameter"):
        parameter_groups(torch.nn.Linear(2, 2), TrainConfig(param_groups=[{"pattern": "^clasifier"}]))
    with pytest.raises(
        ConfigError, match=r"train.param_groups\[0\]: pattern '\(' is not a regular expression"
    ):
        small_config("phase1", "train.param_groups=[{pattern: '('}]")
    with pytest.raises(ConfigError, match=r"give one of train.steps \(4\) and train.epochs \(2\)"):
        small_config("phase1", "train.epochs=2")


def test_warmup_starts_at_its_fraction():
    rates = _schedule_rates(5, warmup_steps=4, total_steps=12, warmup_start=0.1)
    assert rates[:5] == pytest.approx([0.325, 0.55, 0.775, 1.0, 1.0])


def _irra_epochs(root, run_dir, **kwargs):
    return _train(
        root,
        run_dir,
        "train.steps=null",
        "train.epochs=2",
        "train.warmup_steps=null",
        "train.warmup_epochs=0.5",
        "train.warmup_start=0.1",
        "train.optimizer=adam",
        "train.eps=0.001",
        "train.weight_decay=0.00004",
        "train.checkpoint_every=6",
        IRRA_GROUPS,
        evaluate_test=False,
        **kwargs,
    )


def test_epochs_warmup_and_groups_train_and_resume_bit_for_bit(pedes_root, tmp_path, monkeypatch):
    recorded = []  # (base lr, {lr_factor: lr}) of every optimizer step
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        recorded.append({group["lr_factor"]: group["lr"] for group in self.param_groups})
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    full = tmp_path / "full"
    summary = _irra_epochs(pedes_root, full)
    with open(full / "train_log.csv") as handle:
        epochs = [row["epoch"] for row in csv.DictReader(handle) if row["loss"]]
    steps_per_epoch = epochs.count("0")
    assert steps_per_epoch > 6 and epochs.count("1") == steps_per_epoch and len(epochs) == 2 * steps_per_epoch
    assert summary["steps"] == 2 * steps_per_epoch  # two epochs of the identity sampler's batches
    log = (full / "train.log").read_text()
    assert f"2 epoch(s) of {steps_per_epoch} steps, warm-up {round(0.5 * steps_per_epoch)} steps" in log
    # groups: base 1x, biases 2x, new heads 5x; each step's rates in those ratios
    assert sorted(recorded[0]) == [1.0, 2.0, 5.0]
    for rates in recorded:
        assert rates[2.0] == pytest.approx(2 * rates[1.0]) and rates[5.0] == pytest.approx(5 * rates[1.0])
    warmup = round(0.5 * steps_per_epoch)
    assert recorded[0][1.0] == pytest.approx(1e-3 * (0.1 + 0.9 / warmup))
    assert recorded[warmup - 1][1.0] == pytest.approx(1e-3)
    assert recorded[-1][1.0] < recorded[warmup][1.0]  # then the cosine

    # interrupted after an earlier checkpoint (mid-epoch: 12 of 2 x 9), resumed: the same weights and losses
    earlier = sorted((full / "checkpoints").glob("step_*"))[0].name
    assert 6 <= int(earlier.removeprefix("step_")) < 2 * steps_per_epoch
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / earlier, resumed / "checkpoints" / earlier)
    (resumed / "checkpoints" / "latest").write_text(earlier)
    shutil.copy(full / "config.yaml", resumed / "config.yaml")
    recorded.clear()
    _irra_epochs(pedes_root, resumed, resume=True)
    last = f"step_{2 * steps_per_epoch:07d}"
    final_full, final_resumed = (
        _weights(full / "checkpoints" / last),
        _weights(resumed / "checkpoints" / last),
    )
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    assert _losses(full)[int(earlier.removeprefix("step_")) :] == _losses(resumed)
