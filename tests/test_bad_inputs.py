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

from tests.conftest import small_config
from visionloom.cli import app
from visionloom.config import ConfigError
from visionloom.data.check import check_pedes
from visionloom.data.pedes import DatasetFormatError
from visionloom.data.refcoco import load_refs, read_refcoco
from visionloom.engine.checkpoint import latest_checkpoint
from visionloom.engine.run import RunDirectoryError, RunLock
from visionloom.engine.trainer import TrainingInterrupted
from visionloom.retrieval.build import load_config
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
        from visionloom.grounding.build import load_config as grounding_config

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


def _phase1(*overrides):
    return small_config("phase1", "model.text.tiny={dropout_rate: 0.1}", "train.eval_every=1", *overrides)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("where", ["during validation", "inside the optimizer step"])
def test_ctrl_c_saves_a_consistent_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(
    where, pedes_root, tmp_path, monkeypatch
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
    result = invoke(
        "retrieval",
        "train",
        "baseline",
        "--data",
        pedes_root,
        "--out",
        run,
        "--resume",
        "--set",
        "model.image_size=[64, 32]",
        "--set",
        "train.steps=4",
        "--set",
        "train.batch_size=4",
        "--set",
        "data.ids_per_batch=2",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.log_every=1",
    )
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
    from visionloom.vlm.build import PretrainConfig
    from visionloom.vlm.train import pretrain

    out = tmp_path / "vlm"
    with pytest.raises(FileNotFoundError, match="nowhere: no instances.json"):
        pretrain(tmp_path / "nowhere", out, PretrainConfig(), progress=False)
    assert not holds_a_run(out)
    result = invoke("vlm", "pretrain", out, "--data", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no instances.json" in result.output
