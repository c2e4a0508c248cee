"""Bad and untrusted input: each case gets one clear error naming the file, entry or key (never a
traceback), nothing outside a data root is opened, no pickle runs code, and no run is lost or
silently changed. One test (or parameter) per case."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.helpers import sigint_as_from_a_terminal, small_config
from visionloom.cli import app
from visionloom.config import ConfigError
from visionloom.data.check import check_pedes
from visionloom.data.errors import DatasetFormatError
from visionloom.data.refcoco import load_refs, read_refcoco
from visionloom.engine.checkpoint import latest_checkpoint
from visionloom.engine.run import RunDirectoryError, RunLock
from visionloom.engine.trainer import TrainingInterrupted
from visionloom.retrieval.config import load_config
from visionloom.retrieval.train import train_retrieval

runner = CliRunner()


def invoke(*arguments: str):
    result = runner.invoke(app, [str(a) for a in arguments])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# ------------------------------------------------------------------ a small pedes set to break
@pytest.fixture
def pedes(pedes_root, tmp_path):
    """A copy of the session's synthetic CUHK-PEDES set: (root, entries, write(entries))."""
    root = tmp_path / "pedes"
    shutil.copytree(pedes_root, root, ignore=shutil.ignore_patterns("vq"))
    entries = json.loads((root / "reid_raw.json").read_text())

    def write(changed) -> Path:
        (root / "reid_raw.json").write_text(json.dumps(changed))
        return root

    return root, entries, write


def problems_of(root: Path) -> list[str]:
    return [str(problem) for problem in check_pedes(root).problems]


# ------------------------------------------------------------------ security
class _Explodes:
    """A pickle that runs code when loaded: it writes a marker file."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


@pytest.mark.parametrize("flag", ["n", '"false"', "0", "yes please"])
def test_the_pickle_guard_takes_only_a_real_true(flag, tmp_path):
    with pytest.raises(ConfigError, match="allow_pickle: expected true or false"):
        from visionloom.grounding.config import load_config as grounding_config

        grounding_config("llava", [f"allow_pickle={flag}"])
    marker = tmp_path / "ran"
    _Explodes.marker = str(marker)
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps(_Explodes()))
    for truthy_but_not_true in ("false", "n", 1):
        with pytest.raises(DatasetFormatError, match="allow_pickle"):
            load_refs(refs, truthy_but_not_true)
    assert not marker.exists()  # no code from the file ran


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink out"])
def test_annotation_paths_cannot_leave_the_image_folder(how, pedes, tmp_path, monkeypatch):
    root, entries, write = pedes
    outside = tmp_path / "outside.png"
    Image.new("RGB", (128, 384)).save(outside)
    if how == "absolute":
        entries[0]["file_path"] = str(outside)
    elif how == "dot-dot":
        entries[0]["file_path"] = "../../outside.png"
    else:
        (root / "imgs" / "link.png").symlink_to(outside)
        entries[0]["file_path"] = "link.png"
    write(entries)
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k)
    )
    assert any(p.startswith("entry 0:") and ("outside" in p or "absolute" in p) for p in problems_of(root))
    with pytest.raises(DatasetFormatError, match="entry 0"):
        train_retrieval(small_config("baseline"), root, tmp_path / "run", progress=False)
    assert str(outside) not in opened and not any("outside.png" in path for path in opened)


def test_refcoco_file_names_cannot_leave_the_image_folder(refcoco_release, tmp_path):
    root = tmp_path / "refcoco"
    shutil.copytree(refcoco_release, root)
    instances = json.loads((root / "instances.json").read_text())
    instances["images"][1]["file_name"] = "../../../../etc/passwd"
    (root / "instances.json").write_text(json.dumps(instances))
    images = refcoco_release.parent / "images" / "mscoco" / "images" / "train2014"
    with pytest.raises(DatasetFormatError, match=r"ref \d+: image path '../../../../etc/passwd'.*outside"):
        read_refcoco(root, image_dir=images)


def _png_header(path: Path, width: int, height: int) -> None:
    """A small PNG file whose header claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_that_entrys_problem_and_the_check_goes_on(pedes):
    root, entries, write = pedes
    _png_header(root / "imgs" / entries[0]["file_path"], 20000, 20000)
    entries[3]["captions"] = []
    write(entries)
    found = problems_of(root)
    assert any(p.startswith("entry 0:") and "decompression bomb" in p for p in found)
    assert any(p.startswith("entry 3:") and "no captions" in p for p in found)  # it went on


# ------------------------------------------------------------------ data check finds it all at once
def _truncate(root, entries):
    path = root / "imgs" / entries[0]["file_path"]
    Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=90)
    data = path.with_suffix(".jpg").read_bytes()
    path.with_suffix(".jpg").write_bytes(data[: len(data) // 2])
    entries[0]["file_path"] = str(Path(entries[0]["file_path"]).with_suffix(".jpg"))


def _symlink_loop(root, entries):
    (root / "imgs" / "a.png").symlink_to(root / "imgs" / "b.png")
    (root / "imgs" / "b.png").symlink_to(root / "imgs" / "a.png")
    entries[0]["file_path"] = "a.png"


DATA_CASES = {
    "truncated JPEG": (_truncate, "entry 0:", "unreadable image"),
    "split 'Validation '": (lambda r, e: e[0].update(split="Validation "), "entry 0:", "split 'Validation '"),
    "float identity": (lambda r, e: e[0].update(id=1.7), "entry 0:", "identity 1.7 is not an integer"),
    "captions as one string": (lambda r, e: e[0].update(captions="a man"), "entry 0:", "single string"),
    "empty caption": (lambda r, e: e[0].update(captions=[""]), "entry 0:", "caption 0 is empty"),
    "no captions": (lambda r, e: e[0].update(captions=[]), "entry 0:", "no captions"),
    "captions [null, 5]": (lambda r, e: e[0].update(captions=[None, 5]), "entry 0:", "caption 0 is None"),
    "duplicate entry": (lambda r, e: e.append(dict(e[0])), "entry {n}:", "same image as entry 0"),
    "identity in two splits": (
        lambda r, e: e[0].update(split="test" if e[0]["split"] != "test" else "train"),
        "data set:",
        "is in splits",
    ),
    "symlink loop": (_symlink_loop, "entry 0:", "cannot be resolved"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_check_and_training_refuse_what_training_would_trip_on(case, pedes, tmp_path):
    root, entries, write = pedes
    mutate, where, what = DATA_CASES[case]
    mutate(root, entries)
    write(entries)
    where = where.replace("{n}", str(len(entries) - 1))
    assert any(p.startswith(where) and what in p for p in problems_of(root)), problems_of(root)
    result = invoke("data", "check", root)
    assert result.exit_code == 1 and what in result.output
    # Training reads and validates the whole set first: nothing trains, the entry is named.
    with pytest.raises(DatasetFormatError, match="nothing was trained"):
        train_retrieval(small_config("baseline"), root, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = invoke(
        "retrieval",
        "train",
        "baseline",
        "--data",
        root,
        "--out",
        tmp_path / "cli-run",
        "--set",
        "model.image_size=[64, 32]",
        "--set",
        "train.steps=2",
    )
    assert result.exit_code == 2 and what in result.output


def test_whole_file_problems_are_reported_with_every_bad_entry(pedes):
    root, entries, write = pedes
    for index in (1, 4, 6):
        del entries[index]["captions"]
    write(entries)
    found = problems_of(root)
    assert [p.split(":")[0] for p in found if "lacks captions" in p] == ["entry 1", "entry 4", "entry 6"]
    write([])
    assert any("annotation list is empty" in p for p in problems_of(root))
    (root / "reid_raw.json").write_bytes(b'[{"captions": ["caf\xe9"]}]')
    found = problems_of(root)
    assert len(found) == 1 and "not UTF-8" in found[0] and "reid_raw.json" in found[0]


# ------------------------------------------------------------------ RefCOCO
def _refcoco_edit(root: Path, refs_edit=None, instances_edit=None) -> None:
    refs = json.loads((root / "refs(unc).json").read_text())
    instances = json.loads((root / "instances.json").read_text())
    refs = refs_edit(refs) if refs_edit else refs
    instances = instances_edit(instances) if instances_edit else instances
    (root / "refs(unc).json").write_text(json.dumps(refs))
    (root / "instances.json").write_text(json.dumps(instances))


def _first(key, value):
    def edit(items):
        items[0][key] = value
        return items

    return edit


def _without(key):
    def edit(items):
        del items[0][key]
        return items

    return edit


REFCOCO_CASES = {
    "ref without sentences": (
        {"refs_edit": _without("sentences")},
        "needs ref_id, ann_id, image_id, split and sentences",
    ),
    "sentence without sent": (
        {"refs_edit": _first("sentences", [{"sent_id": 1}])},
        "sentence 0 has no text",
    ),
    "ref without split": ({"refs_edit": _without("split")}, "needs ref_id"),
    "annotation without bbox": (
        {"instances_edit": lambda i: (i["annotations"][0].pop("bbox"), i)[1]},
        "needs id, image_id, bbox and segmentation",
    ),
    "no annotations list": ({"instances_edit": lambda i: {"images": i["images"]}}, "no 'annotations' list"),
    "unknown image_id": ({"refs_edit": _first("image_id", 999999)}, "is not the image of annotation"),
    "malformed polygon": (
        {"instances_edit": lambda i: (i["annotations"][0].update(segmentation=[[1, 2, 3]]), i)[1]},
        "a polygon must be a list of at least 3 x, y pairs",
    ),
    "malformed RLE": (
        {
            "instances_edit": lambda i: (
                i["annotations"][0].update(segmentation={"size": [1, 1], "counts": "x"}),
                i,
            )[1]
        },
        "RLE size [1, 1] is not the image's",
    ),
    "refs file that is a dict": (
        {"refs_edit": lambda refs: {"refs": refs}},
        "expected a list of refs, got dict",
    ),
}


@pytest.mark.parametrize("case", list(REFCOCO_CASES))
def test_refcoco_problems_name_the_ref_or_annotation(case, refcoco_release, tmp_path):
    root = tmp_path / "refcoco"
    shutil.copytree(refcoco_release, root)
    edits, expected = REFCOCO_CASES[case]
    _refcoco_edit(root, **edits)
    images = refcoco_release.parent / "images" / "mscoco" / "images" / "train2014"
    with pytest.raises(DatasetFormatError) as caught:
        read_refcoco(root, image_dir=images)
    message = str(caught.value)
    assert expected in message and ("refs(unc).json" in message or "instances.json" in message)
    result = invoke(
        "ground",
        "train",
        "llava",
        "--vlm",
        "tiny-llava",
        "--data",
        root,
        "--out",
        tmp_path / "run",
        "--set",
        f"image_dir={images}",
    )
    assert result.exit_code == 2 and expected in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written


# ------------------------------------------------------------------ configs and command line
@pytest.mark.parametrize(
    "setting, named",
    [
        ("train.lr=abc", "train.lr: expected a number"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("train.steps=-5", "train.steps: expected an integer >= 1"),
        ("train.steps=0", "train.steps: expected an integer >= 1"),
        ("train.checkpoint_every=0", "train.checkpoint_every"),
        ("train.log_every=0", "train.log_every"),
        ("train.precision=fp8", "train.precision: expected one of 'auto', 'no', 'bf16', 'fp16'"),
        ("data.augment=foo", "data.augment: expected one of 'flip', 'irra'"),
        ("model.architecture=phase9", "model.architecture: expected one of 'baseline'"),
        ("model.image_size=[0, 0]", "model.image_size[0]"),
        ("train.bogus=1", "unknown key(s) train.bogus"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(setting, named, pedes_root, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config("baseline", [setting])
    result = invoke(
        "retrieval", "train", "baseline", "--data", pedes_root, "--out", tmp_path / "r", "--set", setting
    )
    assert result.exit_code == 2 and setting.split("=")[0] in result.output
    assert not (tmp_path / "r").exists()


def test_broken_yaml_names_the_file_and_line(tmp_path, pedes_root):
    config = tmp_path / "broken.yaml"
    config.write_text("name: x\ntrain:\n  steps: [1, 2\n")
    result = invoke("retrieval", "train", str(config), "--data", pedes_root, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "broken.yaml" in result.output and "line" in result.output


def test_missing_data_folder_bogus_split_and_bad_image_sizes(pedes_root, tmp_path):
    result = invoke("retrieval", "train", "baseline", "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "nowhere" in result.output
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False)
    result = invoke("retrieval", "eval", run, "--data", pedes_root, "--split", "bogus")
    assert result.exit_code == 2 and "bogus" in result.output and "train, val, test" in result.output
    for size in ("0x0", "-5x10"):
        result = invoke("doctor", "tiny-llava", "--image-size", size)
        assert result.exit_code == 2 and size in result.output


def test_non_utf8_config_json_is_a_named_doctor_error(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"model_type": "llava\xff"}')
    result = invoke("doctor", tmp_path, "--json")
    assert result.exit_code == 1 and "config.json" in json.loads(result.output)["error"]


def test_identity_batches_larger_than_the_data_are_refused(pedes_root, tmp_path):
    config = small_config("baseline", "train.batch_size=10000", "data.ids_per_batch=2")
    with pytest.raises(ValueError, match="train.batch_size 10000 .* the split has"):
        train_retrieval(config, pedes_root, tmp_path / "run", progress=False)


# ------------------------------------------------------------------ runs are not lost
def test_a_finished_run_is_not_overwritten_without_being_asked(pedes_root, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(RunDirectoryError, match="already holds a run.*--resume.*--overwrite"):
        train_retrieval(small_config("baseline", "train.lr=0.5"), pedes_root, run, progress=False)
    result = invoke("retrieval", "train", "baseline", "--data", pedes_root, "--out", run)
    assert result.exit_code == 2 and "already holds a run" in result.output and "--overwrite" in result.output
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # not a byte changed
    train_retrieval(small_config("baseline", "train.lr=0.5"), pedes_root, run, progress=False, overwrite=True)
    assert "lr: 0.5" in (run / "config.yaml").read_text()
    assert latest_checkpoint(run / "checkpoints") is not None


def test_a_second_writer_is_refused_naming_the_holder(pedes_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run).acquire(), pytest.raises(RunDirectoryError, match=f"process {os.getpid()}"):
        train_retrieval(small_config("baseline"), pedes_root, run, progress=False)


def test_resume_on_another_data_set_or_config_names_the_difference(pedes_root, pedes, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False, evaluate_test=False)
    other, entries, write = pedes
    entries[0]["captions"] = ["a different caption"]
    write(entries)
    with pytest.raises(RunDirectoryError, match="another data set"):
        train_retrieval(small_config("baseline"), other, run, progress=False, resume=True)
    with pytest.raises(ConfigError, match=r"train.lr: 0.001 -> 0.5"):
        train_retrieval(
            small_config("baseline", "train.lr=0.5"), pedes_root, run, progress=False, resume=True
        )


# The command line of small_config("baseline", ...) for `retrieval train`, with --resume.
SMALL = [
    "model.image_size=[64, 32]",
    "train.batch_size=4",
    "data.ids_per_batch=2",
    "train.warmup_steps=1",
    "train.checkpoint_every=2",
    "train.log_every=1",
]


def resume_small(data: Path, run: Path, steps: int):
    settings = [*SMALL, f"train.steps={steps}"]
    return invoke(
        "retrieval",
        "train",
        "baseline",
        "--data",
        data,
        "--out",
        run,
        "--resume",
        *[arg for setting in settings for arg in ("--set", setting)],
    )


def _phase1(*overrides):
    return small_config("phase1", "model.text.tiny={dropout_rate: 0.1}", "train.eval_every=1", *overrides)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("where", ["during validation", "inside the optimizer step"])
def test_ctrl_c_saves_a_consistent_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(
    where, pedes_root, tmp_path, monkeypatch, sigint_from_a_terminal
):
    full = tmp_path / "full"
    summary_full = train_retrieval(_phase1(), pedes_root, full, progress=False)
    from visionloom.retrieval import evaluate as evaluate_module

    interrupted = tmp_path / "interrupted"
    calls = {"validate": 0, "step": 0}
    if where == "during validation":
        real = evaluate_module.evaluate_split

        def validate_then_ctrl_c(model, split, *args, **kwargs):
            calls["validate"] += 1
            if calls["validate"] == 3:  # step 3's validation
                raise KeyboardInterrupt
            return real(model, split, *args, **kwargs)

        monkeypatch.setattr(evaluate_module, "evaluate_split", validate_then_ctrl_c)
    else:
        real_step = torch.optim.AdamW.step

        def step_with_ctrl_c(self, *args, **kwargs):
            calls["step"] += 1
            if calls["step"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # arrives while the weights are being updated
            return real_step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step_with_ctrl_c)
    with pytest.raises(TrainingInterrupted) as caught:
        train_retrieval(_phase1(), pedes_root, interrupted, progress=False)
    stop = caught.value
    assert stop.saved is not None and stop.resume_from == stop.step == (
        3 if where == "during validation" else 2
    )
    assert str(stop.saved) in stop.message
    monkeypatch.undo()
    summary = train_retrieval(_phase1(), pedes_root, interrupted, progress=False, resume=True)
    assert _equal(_final_weights(full), _final_weights(interrupted))
    assert summary["selected"] == summary_full["selected"] and summary["test"] == summary_full["test"]


def test_resume_takes_the_newest_complete_checkpoint_and_says_when_there_is_none(pedes_root, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False, evaluate_test=False)
    # Killed between writing step 4 and pointing `latest` at it:
    (run / "checkpoints" / "latest").write_text("step_0000002")
    assert latest_checkpoint(run / "checkpoints").name == "step_0000004"
    # Killed before the first checkpoint: the run directory exists, no checkpoint does.
    shutil.rmtree(run / "checkpoints")
    result = resume_small(pedes_root, run, steps=4)
    assert (
        result.exit_code == 2 and "no complete checkpoint" in result.output and "--overwrite" in result.output
    )


@pytest.mark.slow
def test_a_real_ctrl_c_says_what_was_saved_and_how_to_continue(pedes_root, tmp_path):
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "visionloom.cli",
        "retrieval",
        "train",
        "baseline",
        "--data",
        str(pedes_root),
        "--out",
        str(run),
        "--set",
        "model.image_size=[64, 32]",
        "--set",
        "train.steps=100000",
        "--set",
        "train.batch_size=4",
        "--set",
        "data.ids_per_batch=2",
        "--set",
        "train.checkpoint_every=100000",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=sigint_as_from_a_terminal,
    )
    deadline = time.time() + 120
    while not list(run.glob("tensorboard/*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # some steps
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "interrupted after step" in stderr and "saved" in stderr
    assert "continue with: visionloom retrieval train baseline" in stderr and "--resume" in stderr
    assert latest_checkpoint(run / "checkpoints") is not None


def test_two_process_resume_loads_on_cpu_devices(tmp_path):
    """Under `accelerate launch` a CPU process's device is cpu:0, which safetensors refuses."""
    from types import SimpleNamespace

    from visionloom.engine.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    accelerator = SimpleNamespace(
        is_main_process=True,
        process_index=0,
        num_processes=1,
        device=torch.device("cpu", 0),
        wait_for_everyone=lambda: None,
        unwrap_model=lambda m: m,
    )
    path = save_checkpoint(
        tmp_path, 1, model, optimizer, scheduler, {}, {"torch": torch.get_rng_state()}, accelerator
    )
    again = torch.nn.Linear(3, 2)
    again_optimizer = torch.optim.AdamW(again.parameters())
    load_checkpoint(path, again, again_optimizer, scheduler, accelerator)
    assert torch.equal(again.weight, model.weight)
    assert np.allclose(
        again_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_ctrl_c_with_several_processes_says_plainly_that_nothing_was_saved(pedes_root, tmp_path):
    from types import SimpleNamespace

    from visionloom.engine.trainer import Trainer

    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False, evaluate_test=False)
    several = SimpleNamespace(accelerator=SimpleNamespace(num_processes=2), checkpoints=run / "checkpoints")
    several._save = lambda *args, **kwargs: pytest.fail("several processes cannot save after Ctrl-C")
    from visionloom.engine.trainer import LoopState

    stop = Trainer._interrupted(several, LoopState(step=3, position=(0, 3)), 1.0)
    assert stop.saved is None and stop.resume_from == 4
    assert "nothing was saved" in stop.message and "--resume continues from step 4" in stop.message


def test_a_pretraining_that_cannot_read_its_data_leaves_no_run_behind(tmp_path):
    """Otherwise the next attempt, with the right --data, would be refused as "already holds a run"."""
    from visionloom.engine.run import holds_a_run
    from visionloom.vlm.config import PretrainConfig
    from visionloom.vlm.train import pretrain

    out = tmp_path / "vlm"
    with pytest.raises(FileNotFoundError, match="nowhere: no instances.json"):
        pretrain(tmp_path / "nowhere", out, PretrainConfig(), progress=False)
    assert not holds_a_run(out)
    result = invoke("vlm", "pretrain", out, "--data", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no instances.json" in result.output


# ------------------------------------------------------------------ scene folders stay inside their root
def _scenes_copy(scenes_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "scenes"
    shutil.copytree(scenes_root, root)
    return root


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink out"])
def test_scene_file_names_cannot_leave_the_image_folder_in_any_command(
    how, scenes_root, tmp_path, monkeypatch
):
    from visionloom.data.scenes import read_scene_texts

    root = _scenes_copy(scenes_root, tmp_path)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (224, 224)).save(outside)
    instances = json.loads((root / "instances.json").read_text())
    name = {"absolute": str(outside), "dot-dot": "../../outside.png", "symlink out": "link.png"}[how]
    if how == "symlink out":
        (root / "images" / "link.png").symlink_to(outside)
    instances["images"][0]["file_name"] = name
    (root / "instances.json").write_text(json.dumps(instances))
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    with pytest.raises(
        DatasetFormatError, match=r"(?s)instances.json: 1 problem.*image \d+: image path .*(outside|absolute)"
    ):
        read_scene_texts(root, "train")
    prune = invoke("prune", "eval", "scenes", "--data", root, "--out", tmp_path / "p", "--vlm", "unused")
    pretrain = invoke("vlm", "pretrain", tmp_path / "v", "--data", root)
    for result in (prune, pretrain):
        assert result.exit_code == 2 and "image path" in result.output
    assert not any("outside.png" in path for path in opened)
    assert not (tmp_path / "p").exists() and not (tmp_path / "v").exists()


def test_a_questions_file_names_images_inside_its_own_folder(scenes_root, tmp_path):
    questions = tmp_path / "q" / "questions.json"
    questions.parent.mkdir()
    (tmp_path / "secret.png").write_bytes(next((scenes_root / "images").glob("*.png")).read_bytes())
    questions.write_text(json.dumps([{"image": "../secret.png", "question": "what?", "answer": "x"}]))
    result = invoke(
        "prune",
        "eval",
        "scenes",
        "--data",
        scenes_root,
        "--out",
        tmp_path / "p",
        "--vlm",
        "unused",
        "--set",
        f"questions={questions}",
    )
    assert result.exit_code == 2 and "item 0: image path '../secret.png'" in result.output
    assert "outside" in result.output and not (tmp_path / "p").exists()


# ------------------------------------------------------------------ what the user has is never lost
def _files(directory: Path) -> dict:
    return {
        p.relative_to(directory): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def test_overwrite_with_bad_data_keeps_the_finished_run(pedes_root, pedes, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False)
    before = _files(run)
    bad, entries, write = pedes
    entries[0]["captions"] = []
    write(entries)
    with pytest.raises(DatasetFormatError, match="no captions"):
        train_retrieval(small_config("baseline"), bad, run, progress=False, overwrite=True)
    assert _files(run) == before  # the bad data was found before anything was deleted


def test_overwrite_never_empties_a_run_folder_that_holds_the_data(pedes_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(pedes_root, out / "data", ignore=shutil.ignore_patterns("vq*"))
    before = _files(out)
    for arguments in (
        ("retrieval", "train", "baseline", "--data", out / "data", "--out", out, "--overwrite"),
        ("vlm", "pretrain", out, "--data", out / "data", "--overwrite"),
    ):
        result = invoke(*arguments)
        assert result.exit_code == 2 and "holds the data set" in result.output
    assert _files(out) == before


def test_a_pretraining_overwrite_with_unreadable_data_keeps_the_checkpoint(scenes_root, tmp_path):
    out = tmp_path / "vlm"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the user's trained model")
    result = invoke("vlm", "pretrain", out, "--data", tmp_path / "nowhere", "--overwrite")
    assert result.exit_code == 2 and "no instances.json" in result.output
    assert (out / "model.safetensors").read_bytes() == b"the user's trained model"


def test_writers_refuse_a_folder_that_holds_files_unless_asked(pedes_root, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "reid_raw.json").write_text("the user's annotations")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"pretrained")
    vq = tmp_path / "vq"
    vq.mkdir()
    (vq / "config.json").write_text("{}")
    for arguments in (
        ("data", "synth-pedes", data, "--ids", "10"),
        ("data", "synth-scenes", data, "--scenes", "5"),
        ("preset", "save", "tiny-llava", checkpoint),
        ("retrieval", "vq", "fit", pedes_root, "--out", vq, "--steps", "1"),
    ):
        result = invoke(*arguments)
        assert result.exit_code == 2 and "already holds" in result.output and "--overwrite" in result.output
    assert (data / "reid_raw.json").read_text() == "the user's annotations"
    assert (checkpoint / "model.safetensors").read_bytes() == b"pretrained"
    assert (vq / "config.json").read_text() == "{}"
    assert invoke("data", "synth-pedes", data, "--ids", "10", "--overwrite").exit_code == 0
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for arguments in (
        ("preset", "save", "tiny-llava", a_file),
        ("retrieval", "vq", "fit", pedes_root, "--out", a_file),
    ):
        result = invoke(*arguments)
        assert result.exit_code == 2 and "is not a directory" in result.output


def test_resume_after_the_vq_tokenizer_was_refitted_is_refused(pedes_root, vq_dir, tmp_path):
    from safetensors.torch import save_file

    from visionloom.data.pedes import read_pedes
    from visionloom.retrieval.vq import build_cache

    data = tmp_path / "data"
    shutil.copytree(pedes_root, data)
    run = tmp_path / "run"
    train_retrieval(small_config("phase4"), data, run, progress=False, evaluate_test=False)
    weights = next((data / "vq").glob("*.safetensors"))
    tensors = load_file(str(weights))
    save_file({key: value + 0.01 for key, value in tensors.items()}, str(weights))  # another fit
    build_cache(data, read_pedes(data)["train"], data / "vq", progress=False)
    before = _files(run)
    with pytest.raises(RunDirectoryError, match="another data set.*VQ tokenizer"):
        train_retrieval(small_config("phase4", "train.steps=6"), data, run, progress=False, resume=True)
    assert _files(run) == before


def test_a_resume_that_would_end_before_its_checkpoint_writes_nothing(pedes_root, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False, evaluate_test=False)
    before = _files(run)
    result = resume_small(pedes_root, run, steps=2)
    assert result.exit_code == 2 and "the run is at step 4" in result.output and "at least 4" in result.output
    assert _files(run) == before  # config.yaml still says 4


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_files(
    pedes_root, tmp_path, monkeypatch
):
    import errno

    from visionloom.engine import checkpoint as checkpoint_module
    from visionloom.engine.checkpoint import NoSpaceError

    run = tmp_path / "run"
    real_save = checkpoint_module.torch.save

    def full_at_step_4(obj, path, *args, **kwargs):
        if "step_0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_at_step_4)
    with pytest.raises(
        NoSpaceError, match=r"no space left on the disk of .*checkpoints.*MiB free.*needs about"
    ):
        train_retrieval(small_config("baseline"), pedes_root, run, progress=False, evaluate_test=False)
    leftovers = [p.name for p in run.rglob(".*tmp*")]
    assert leftovers == [] and latest_checkpoint(run / "checkpoints").name == "step_0000002"
    monkeypatch.undo()
    summary = train_retrieval(
        small_config("baseline"), pedes_root, run, progress=False, resume=True, evaluate_test=False
    )
    assert summary["steps"] == 4
    # Through the command: one line naming the disk, exit 2.
    from visionloom.commands import describe_error, is_user_error

    error = NoSpaceError("no space left on the disk of /x: 3 MiB free, a checkpoint needs about 9 MiB")
    assert is_user_error(error) and describe_error(error) == str(error)


@pytest.mark.parametrize("damage", ["truncated weights", "broken optimizer", "state not JSON"])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_is_taken(damage, pedes_root, tmp_path):
    run = tmp_path / "run"
    train_retrieval(
        small_config("baseline", "train.steps=4"), pedes_root, run, progress=False, evaluate_test=False
    )
    newest = run / "checkpoints" / "step_0000004"
    target = {
        "truncated weights": newest / "model.safetensors",
        "broken optimizer": newest / "optimizer.pt",
        "state not JSON": newest / "state.json",
    }[damage]
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    result = resume_small(pedes_root, run, steps=6)
    assert result.exit_code == 0, result.output
    log = (run / "train.log").read_text()
    assert f"resuming from {run / 'checkpoints' / 'step_0000002'}" in log and target.name in log
    assert "resumed at step 2" in log and latest_checkpoint(run / "checkpoints").name == "step_0000006"


# ------------------------------------------------------------------ nothing silently wrong
@pytest.mark.parametrize(
    "counts, named",
    [
        ("0", "cover 0 pixels"),
        ("1", "cover 1 pixels"),
        ("zzzz", "outside COCO's alphabet"),
        ("é1", "non-ASCII"),
        ("PP", "end in the middle of a run length"),
    ],
)
def test_malformed_compressed_rle_is_refused_naming_the_annotation(counts, named, refcoco_release, tmp_path):
    root = tmp_path / "refcoco"
    shutil.copytree(refcoco_release, root)
    instances = json.loads((root / "instances.json").read_text())
    annotation = instances["annotations"][0]
    image = next(i for i in instances["images"] if i["id"] == annotation["image_id"])
    annotation["segmentation"] = {"size": [image["height"], image["width"]], "counts": counts}
    (root / "instances.json").write_text(json.dumps(instances))
    images = refcoco_release.parent / "images" / "mscoco" / "images" / "train2014"
    with pytest.raises(
        DatasetFormatError, match=rf"(?s)annotation {annotation['id']}: [^\n]*{re.escape(named)}"
    ):
        read_refcoco(root, image_dir=images)


def test_every_released_style_rle_passes_the_check():
    from pycocotools import mask as mask_utils

    from visionloom.data.refcoco import compressed_rle_problem

    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (7, 300), (480, 640)]:
        mask = np.asfortranarray((rng.random((height, width)) > 0.7).astype(np.uint8))
        counts = mask_utils.encode(mask)["counts"].decode("ascii")
        assert compressed_rle_problem(counts, height * width) is None
        assert compressed_rle_problem(counts, height * width + 1) is not None


@pytest.mark.parametrize(
    "settings, named",
    [
        (["model.vision.tiny={hidden_sise: 32}"], "model.vision.tiny.hidden_sise: not a setting"),
        (["model.text.tiny={hidden_size: big}"], "model.text.tiny.hidden_size: expected int"),
        (["model.max_text_length=1"], "model.max_text_length=1: the tokenizer adds 2 special token(s)"),
    ],
)
def test_settings_a_model_would_ignore_are_refused(settings, named, pedes_root, tmp_path):
    result = invoke(
        "retrieval",
        "train",
        "baseline",
        "--data",
        pedes_root,
        "--out",
        tmp_path / "r",
        *[arg for setting in settings for arg in ("--set", setting)],
    )
    assert result.exit_code == 2 and named in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is honoured where a GPU is")
def test_fp16_without_a_gpu_is_refused_before_anything_is_written(pedes_root, scenes_root, tmp_path):
    for arguments in (
        ("retrieval", "train", "baseline", "--data", pedes_root, "--out", tmp_path / "r"),
        ("vlm", "pretrain", tmp_path / "v", "--data", scenes_root),
    ):
        result = invoke(*arguments, "--set", "train.precision=fp16")
        assert result.exit_code == 2 and "train.precision=fp16" in result.output and "CUDA" in result.output
    assert not (tmp_path / "r").exists() and not any((tmp_path / "v").glob("run/*"))


def test_yaml_aliases_are_refused_and_yaml_1_2_numbers_are_numbers(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    layers = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)
    ]
    bomb.write_text("\n".join(layers) + "\nmodel:\n  vision:\n    tiny: {hidden_size: *i}\n")
    with pytest.raises(
        ConfigError, match=r"bomb.yaml: not valid YAML at line 2.*aliases \(\*a\) are not allowed"
    ):
        load_config(str(bomb))
    config = load_config("baseline", ["train.lr=3e-4", "train.weight_decay=1e-2"])  # the README's spelling
    assert config.train.lr == 3e-4 and config.train.weight_decay == 0.01


@pytest.mark.parametrize(
    "setting, named",
    [
        ("train.lr=fast", "--set train.lr=fast: train.lr: expected a number"),
        ("train.bogus=1", "--set train.bogus=1: unknown key(s) train.bogus"),
        ("train.steps=null", "baseline.yaml with --set train.steps=null: train: give one of"),
    ],
)
def test_set_errors_name_the_set_option_not_the_shipped_file(setting, named):
    with pytest.raises(ConfigError) as caught:
        load_config("baseline", [setting])
    assert str(caught.value).startswith(named) or named in str(caught.value)
    if "baseline.yaml" not in named:
        assert "baseline.yaml" not in str(caught.value)


def test_data_check_refuses_a_set_training_would_refuse(pedes, tmp_path):
    root, entries, write = pedes
    write([entry for entry in entries if entry["split"] != "test"])
    assert any("has no test entries" in problem for problem in problems_of(root))
    result = invoke("data", "check", root)
    assert result.exit_code == 1 and "has no test entries" in result.output


def test_sixteen_bit_and_rotated_images_are_read_as_a_viewer_shows_them(pedes, tmp_path):
    from visionloom.data.check import check_pedes
    from visionloom.images import read_rgb
    from visionloom.retrieval.datasets import load_image

    root, entries, _ = pedes
    grey = (np.linspace(0, 65535, 128 * 384).reshape(384, 128)).astype(np.uint16)
    deep = root / "imgs" / entries[0]["file_path"]
    Image.fromarray(grey).save(deep)  # 16-bit greyscale PNG, mode I;16
    pixels = np.asarray(read_rgb(deep))
    assert pixels.shape == (384, 128, 3) and abs(pixels.mean() - 127.5) < 1  # not clipped to white
    assert np.array_equal(pixels[..., 0], (grey.astype(np.int64) * 255 // 65535).astype(np.uint8))

    sideways = root / "imgs" / entries[1]["file_path"]
    upright = Image.new("RGB", (128, 384), (200, 0, 0))
    upright.paste((0, 0, 200), (0, 0, 128, 40))  # blue on top when upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # stored lying down, 384 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6: turn 90 degrees clockwise to view
    stored.save(sideways.with_suffix(".jpg"), exif=exif, quality=95)
    entries[1]["file_path"] = str(Path(entries[1]["file_path"]).with_suffix(".jpg"))
    (root / "reid_raw.json").write_text(json.dumps(entries))
    shown = load_image(sideways.with_suffix(".jpg"), None)
    assert shown.size == (128, 384) and shown.getpixel((64, 10))[2] > 150  # upright: blue on top
    assert check_pedes(root, expected_size=(384, 128)).problems == []  # every image upright 384x128

    floating = root / "imgs" / "float.tiff"
    Image.fromarray(np.ones((4, 4), np.float32)).save(floating)
    with pytest.raises(ValueError, match=r"float.tiff: 32-bit float pixels"):
        read_rgb(floating)


def test_the_demo_names_the_fewest_identities_and_never_trains_on_data_it_did_not_draw(tmp_path):
    result = invoke("demo", "--quick", "--ids", "10", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "--ids 10" in result.output and "give --ids 11 or more" in result.output
    assert not (tmp_path / "d").exists()
    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "reid_raw.json").write_text("[]")
    result = invoke("demo", "--quick", "--out", foreign)
    assert result.exit_code == 2 and "holds files the demo did not draw" in result.output
    drawn = tmp_path / "drawn"
    (drawn / "data").mkdir(parents=True)
    (drawn / "data" / "demo_data.json").write_text(json.dumps({"identities": 60, "seed": 0}))
    result = invoke("demo", "--quick", "--ids", "20", "--out", drawn)
    assert result.exit_code == 2 and "--ids 60 --seed 0, not --ids 20 --seed 0" in result.output


def test_the_demo_runs_at_its_fewest_identities(tmp_path):
    from rich.console import Console

    from visionloom.demo.run import run_demo

    out = tmp_path / "d"
    run_demo(out, [], identities=11, steps=2, console=Console(quiet=True), progress=False)
    assert (out / "table.md").is_file()


# ------------------------------------------------------------------ one line, never a traceback
def test_file_system_errors_and_unexpected_ones_are_one_line(pedes_root, tmp_path, monkeypatch):
    import errno

    from visionloom.commands import describe_error, is_user_error
    from visionloom.retrieval import train as retrieval_train

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert describe_error(full).startswith(
        f"No space left on device: {tmp_path / 'x'} ("
    ) and "MiB free" in describe_error(full)
    for error, exit_code in (
        (full, 2),
        (FileExistsError(errno.EEXIST, "File exists", "o"), 2),
        (TypeError("bad"), 1),
    ):

        def fail(*_args, error=error, **_kwargs):
            raise error

        monkeypatch.setattr(retrieval_train, "train_retrieval", fail)
        result = invoke("retrieval", "train", "baseline", "--data", pedes_root, "--out", tmp_path / "r")
        assert result.exit_code == exit_code and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ")
        assert is_user_error(error) == (exit_code == 2)
    assert "unexpected TypeError: bad" in result.output and "--verbose" in result.output
    for error, said in ((MemoryError(), "out of memory"), (RecursionError(), "nested too deeply")):
        assert is_user_error(error) and said in describe_error(error)


def test_deeply_nested_json_and_decompression_bombs_are_named(pedes, tmp_path):
    from visionloom.images import ImageReadError, read_rgb

    root, entries, _ = pedes
    (root / "reid_raw.json").write_text("[" * 200_000 + "]" * 200_000)
    result = invoke("data", "check", root)
    assert result.exit_code == 1 and "nested too deeply" in result.output
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20000, 20000)
    with pytest.raises(ImageReadError, match="bomb.png: refused as a decompression bomb"):
        read_rgb(bomb)


def test_user_text_in_messages_keeps_its_square_brackets(pedes, tmp_path):
    root, entries, write = pedes
    bracketed = tmp_path / "pedes [v2]"
    root.rename(bracketed)
    (bracketed / "reid_raw.json").write_text(json.dumps([{**entries[0], "captions": []}, *entries[1:]]))
    result = invoke("data", "check", bracketed)
    assert result.exit_code == 1 and "pedes [v2]" in result.output and "[red]" not in result.output
    result = invoke(
        "retrieval", "train", "baseline", "--data", bracketed / "nothing [here]", "--out", tmp_path / "r"
    )
    assert result.exit_code == 2 and "nothing [here]" in result.output


def test_search_with_a_split_the_data_set_lacks_names_the_splits(pedes_root, tmp_path):
    run = tmp_path / "run"
    train_retrieval(small_config("baseline"), pedes_root, run, progress=False, evaluate_test=False)
    result = invoke("retrieval", "search", run, "a man", "--data", pedes_root, "--split", "bogus")
    assert result.exit_code == 2 and "'bogus'" in result.output and "train, val, test" in result.output


def test_doctor_names_mismatched_shapes_and_a_missing_tokenizer_file(tmp_path):
    from tests.helpers import edit_json

    saved = tmp_path / "llava"
    assert invoke("preset", "save", "tiny-llava", saved).exit_code == 0
    narrow, untokenized = tmp_path / "narrow", tmp_path / "untokenized"
    shutil.copytree(saved, narrow)
    shutil.copytree(saved, untokenized)
    edit_json(narrow / "config.json", lambda config: config["text_config"].update(hidden_size=48))
    (untokenized / "tokenizer.json").unlink()
    report = json.loads(invoke("doctor", narrow, "--json").output)
    assert "do not have the shape config.json gives them" in report["error"]
    assert re.search(r"\([\d, ]+\) in the weights, \([\d, ]*48[\d, ]*\) from the config", report["error"])
    report = json.loads(invoke("doctor", untokenized, "--json").output)
    assert "tokenizer.json is missing" in report["error"] and "sentencepiece" not in report["error"]


def test_pope_lines_may_hold_unicode_line_separators(tmp_path):
    from visionloom.pruning.benchmarks.pope import read_pope

    (tmp_path / "val2014").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val2014" / "a.jpg")
    lines = [
        {"question_id": 1, "image": "a.jpg", "text": "Is there a cat\u2028in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "text": "Is there a dog?", "label": "no"},
    ]
    (tmp_path / "coco_pope_random.json").write_text(
        "\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n", encoding="utf-8"
    )
    questions = read_pope(tmp_path)
    assert [q.text for q in questions] == ["Is there a cat\u2028in the image?", "Is there a dog?"]
    (tmp_path / "coco_pope_random.json").write_text(
        json.dumps(lines[0], ensure_ascii=False) + "\n{broken\n", encoding="utf-8"
    )
    with pytest.raises(DatasetFormatError, match="line 2"):
        read_pope(tmp_path)


def test_a_broken_scene_image_is_found_before_any_work(scenes_root, tmp_path):
    root = _scenes_copy(scenes_root, tmp_path)
    broken = sorted((root / "images").glob("*.png"))
    for image in broken:
        image.write_bytes(b"not a PNG")  # every split's questions hit one
    pretrain = invoke("vlm", "pretrain", tmp_path / "v", "--data", root)
    prune = invoke("prune", "eval", "scenes", "--data", root, "--out", tmp_path / "p", "--vlm", "unused")
    for result in (pretrain, prune):
        assert result.exit_code == 2 and "image(s) cannot be read" in result.output
        assert re.search(r"scene_\d+\.png: unreadable image", result.output)
    assert not (tmp_path / "v").exists() and not (tmp_path / "p").exists()
