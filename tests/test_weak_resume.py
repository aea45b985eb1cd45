"""A stopped weak -> dense segmenter training resumes with ``--resume true`` (``weak_train_segmenter.json`` of
both bundles).

The segmenter trains on the pseudo-masks of a tiny training set; one run stops after ``STOP`` of ``EPOCHS`` epochs
(the state of the finished epochs on disk, as after a kill: ``tests/test_training_checkpoint.py`` kills with SIGKILL),
a new workflow resumes it, and the result equals an uninterrupted run: epoch count, Adam's step count, the loss and
validation curves, and the final weights bit for bit. The segmenter's state has its own file name, so it never
loads or replaces the classifier's ``training_state.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES, bundle_root, error_messages, kill, make_workflow, run_workflow
from ignite.engine import Events

EPOCHS, STOP = 4, 2
SEGMENTER = ["train.json", "weak_train_segmenter.json"]
# a small UNet, small batches, no early stop: the epoch count is fixed
SEG_TINY = {"segmenter#channels": [8, 16, 32], "segmenter#strides": [2, 2], "train#dataloader#batch_size": 4,
            "early_stop_patience": 100, "num_threads": 1}

SYNTHETIC = {"num_train": 16, "num_val": 8, "synthetic#spatial_size": [32, 32], "synthetic#radius_range": [4.0, 8.0],
             "synthetic#contrast": 3.0}


def _brats_common(root: Path) -> dict:
    return {"dataset_dir": str(root), "train_cases": ["s1", "s2"], "crop_size": [32, 32], "spatial_size": [16, 16],
            "min_tumour_pixels": 5, "validation_blocks#block": 4}


@pytest.fixture(scope="module")
def pseudo_masks(tmp_path_factory):
    """Pseudo-masks of the committed classifiers on tiny training sets, made once per bundle through the bundles."""
    made: dict[str, tuple[dict, Path]] = {}

    def make(name: str) -> tuple[dict, Path]:
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            if name == "synthetic_localisation":
                common = dict(SYNTHETIC)
                pseudo = out / "pseudo_masks_2d"
            else:
                from test_brats_data import make_brats_cases

                make_brats_cases(out / "data", (32, 32, 16), range(3, 9), names=("s1", "s2"))
                common = _brats_common(out / "data")
                pseudo = out / "pseudo_masks"
            run_workflow(name, ["train.json", "weak_pseudo_masks.json"], None, output_dir=str(out), **common)
            assert (pseudo / "pseudo_masks.json").is_file()
            made[name] = ({**common, "pseudo_dir": str(pseudo), **SEG_TINY}, pseudo)
        return made[name]

    return make


def _train(name: str, overrides: dict, ckpt: Path, stop_after: int | None = None, **extra) -> None:
    """Train the segmenter into ``ckpt``; with ``stop_after`` the trainer stops after that epoch (its state saved)."""
    wf = make_workflow(name, SEGMENTER, "train", output_dir=str(ckpt.parent), ckpt_dir=str(ckpt),
                       max_epochs=EPOCHS, segmenter_epochs=EPOCHS, **overrides, **extra)
    wf.initialize()
    assert not wf.check_properties()  # MONAI's bundle contract (it reads the handlers list as config dicts)
    if stop_after is not None:  # attached after the bundle's handlers: runs once the epoch's state is written
        trainer = wf.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), kill)
        with pytest.raises(Exception) as info:  # a kill, not an ending: engine.terminate() would mark the run ended
            wf.run()
        assert "Killed" in error_messages(info.value)
    else:
        wf.run()
    wf.finalize()


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt / "training_state_segmenter.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", ["synthetic_localisation", "brats_tumour_localisation"])
def test_stopped_segmenter_training_resumes_to_the_uninterrupted_result(name, pseudo_masks, tmp_path):
    overrides, _ = pseudo_masks(name)
    _train(name, overrides, tmp_path / "uninterrupted" / "segmenter")
    reference = _state(tmp_path / "uninterrupted" / "segmenter")

    ckpt = tmp_path / "run" / "segmenter"
    _train(name, overrides, ckpt, stop_after=STOP)
    stopped = _state(ckpt)
    per_epoch = stopped["trainer"]["epoch_length"]
    assert stopped["trainer"]["iteration"] == STOP * per_epoch
    _train(name, overrides, ckpt, resume="true")  # as typed on the command line

    final = _state(ckpt)
    total = EPOCHS * per_epoch
    assert final["trainer"]["iteration"] == reference["trainer"]["iteration"] == total
    # Adam counts its steps: a restored optimizer continues the count, a fresh one would end at (EPOCHS - STOP)
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {total}
    assert final["lr_scheduler"] == reference["lr_scheduler"]
    for key, value in reference["network"].items():
        assert torch.equal(final["network"][key], value), f"{name}: {key} differs from the uninterrupted run"
    assert final["evaluator"] == reference["evaluator"] and final["early_stop"] == reference["early_stop"]
    curves = json.loads((ckpt / "curves.json").read_text())
    ref_curves = json.loads((tmp_path / "uninterrupted" / "segmenter" / "curves.json").read_text())
    assert curves["epoch"] == list(range(1, EPOCHS + 1))
    assert curves["loss"] == ref_curves["loss"] and curves["val_mean_dice"] == ref_curves["val_mean_dice"]
    assert (ckpt / "model_segmenter.pt").is_file()
    assert not (ckpt / "training_state.pt").exists()  # the classifier's file name is never used


def test_resume_without_a_segmenter_state_names_the_file(pseudo_masks, tmp_path):
    """As train.json: resume requested and no state file -> an error naming the segmenter's state file. A classifier
    state in the same folder is not taken for it."""
    overrides, _ = pseudo_masks("synthetic_localisation")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "training_state.pt").write_bytes(b"the classifier's state, never read by the segmenter")
    wf = make_workflow("synthetic_localisation", SEGMENTER, "train", output_dir=str(tmp_path), ckpt_dir=str(ckpt),
                       max_epochs=EPOCHS, resume=True, **overrides)
    wf.initialize()
    with pytest.raises(RuntimeError) as info:
        wf.run()
    messages = error_messages(info.value)
    assert f"TrainingCheckpointError: {ckpt / 'training_state_segmenter.pt'}: no training state to resume from" \
        in messages
    assert not (ckpt / "model_segmenter.pt").exists()


@pytest.mark.parametrize("name, stacks", [
    ("synthetic_localisation", [["train.json"], ["train.json", "3d.json"], ["train.json", "weak_train_segmenter.json"],
                                ["train.json", "3d.json", "weak_train_segmenter.json"]]),
    ("brats_tumour_localisation", [["train.json"], ["train.json", "weak_train_segmenter.json"]]),
    ("lgg_tumour_localisation", [["train.json"], ["train.json", "weak_train_segmenter.json"]]),
])
def test_every_training_of_a_bundle_has_its_own_state_file(name, stacks):
    """With one --ckpt_dir for all of them, the classifier's and each segmenter's training states stay apart, and
    every one of these trainings writes one (the TrainingCheckpoint is among its trainer's handlers)."""
    from monai.bundle import ConfigParser


    paths = []
    for files in stacks:
        parser = ConfigParser()
        parser.read_config([str(bundle_root(name) / "configs" / f) for f in files])
        parser["ckpt_dir"] = "/ckpt"
        assert "%training_checkpoint" in parser["train#handlers"], f"{files}: no TrainingCheckpoint"
        assert parser["training_checkpoint#path"] == "@training_state"
        paths.append(parser.get_parsed_content("training_state", instantiate=True))
    assert len(set(paths)) == len(paths), paths
    assert paths[0] == "/ckpt/training_state.pt"


NOT_LAYERED = ("metadata.json", "split.json", "train.json")


def _training_stacks() -> list[tuple[str, tuple[str, ...]]]:
    """Every config stack of every bundle whose ``run`` trains (``train#trainer.run()``): ``train.json`` alone and
    with each other config file layered on it (``3d.json`` also under the weak configs; ``split.json`` is data)."""
    from monai.bundle import ConfigParser


    stacks = []
    for configs in sorted(BUNDLES.glob("*/configs")):
        names = sorted(p.name for p in configs.glob("*.json") if p.name not in NOT_LAYERED)
        candidates = [("train.json",)] + [("train.json", n) for n in names]
        if "3d.json" in names:
            candidates += [("train.json", "3d.json", n) for n in names if n != "3d.json"]
        for files in candidates:
            parser = ConfigParser()
            parser.read_config([str(configs / f) for f in files])
            if any("train#trainer.run()" in str(step) for step in parser.get("run", [])):
                stacks.append((configs.parent.name, files))
    return stacks


@pytest.mark.parametrize("name, files", _training_stacks(), ids=lambda v: "+".join(v) if isinstance(v, tuple) else v)
def test_every_config_stack_that_trains_writes_a_resumable_state(name, files):
    """No training of any bundle silently ignores --resume: its trainer's handlers include a TrainingCheckpoint
    whose ``resume`` reads the bundle's ``resume`` id."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle_root(name) / "configs" / f) for f in files])
    assert "@train#handlers" in str(parser["train#trainer#train_handlers"]), files
    checkpoints = []
    for item in parser["train#handlers"]:
        if isinstance(item, str) and item.startswith("%"):  # a MONAI macro: a copy of that config block
            item = parser[item[1:]]
        if isinstance(item, dict) and item.get("_target_") == "medcnn.handlers.TrainingCheckpoint":
            checkpoints.append(item)
    assert len(checkpoints) == 1, f"{name} {files}: {len(checkpoints)} TrainingCheckpoint handlers"
    assert checkpoints[0]["resume"] == "$medcnn.config.flag(@resume, 'resume')"
