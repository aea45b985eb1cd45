"""``scripts/cv_classifier.py --summarise ... --record <file>`` merges the summarised recipes into an existing CV
record (the bundle card's ``docs/cv_patient_folds.json``) instead of replacing it, and refuses a file it cannot
merge into, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_slice_scoring import cv_script

BUNDLE = "lgg_tumour_localisation"


def _fake_run(out: Path, name: str) -> None:
    """A finished two-fold run of recipe ``name``: per fold the held-out scores (log-odds) and fold.json."""
    folds = {  # whole-slice log-odds; AUC 0.75 on fold 0 (one of four pairs misordered), 1.0 on fold 1
        0: ([0, 0, 1, 1], [-1.0, 0.5, 0.2, 2.0]),
        1: ([0, 1, 0, 1], [-2.0, 1.0, -1.0, 3.0]),
    }
    for i, (label, whole) in folds.items():
        d = out / name / f"fold{i}"
        d.mkdir(parents=True)
        np.savez(d / "heldout.npz", whole=np.asarray(whole), flip=np.asarray(whole), label=np.asarray(label),
                 case=np.asarray([f"P{i}{j}" for j in range(4)]), z=np.zeros(4, dtype=int))
        (d / "fold.json").write_text(json.dumps({"heldout_patients": [f"P{i}"], "epochs": 3, "train_s": 1.0}))
    (out / name / "cv.json").write_text(json.dumps({"overrides": {"a": 1}, "command": "cmd", "folds": []}))


def _summarise(out: Path, record: Path, *extra: str) -> None:
    cv_script().main(["--bundle", BUNDLE, "--out", str(out), "--no_cam", "--summarise", "new", "--record",
                      str(record), *extra])


def test_record_keeps_the_other_recipes_and_keys(tmp_path):
    _fake_run(tmp_path / "runs", "new")
    record = tmp_path / "cv_patient_folds.json"
    record.write_text(json.dumps({"bundle": BUNDLE, "n_folds": 4, "protocol": "p", "note": "old note",
                                  "chosen": "default", "recipes": {"default": {"summary": "kept"},
                                                                   "new": {"summary": "stale"}}}))
    _summarise(tmp_path / "runs", record, "--note", "new note")
    got = json.loads(record.read_text())
    assert set(got["recipes"]) == {"default", "new"}
    assert got["recipes"]["default"] == {"summary": "kept"}
    assert got["protocol"] == "p" and got["chosen"] == "default"
    assert got["note"] == "old note new note"
    whole = got["recipes"]["new"]["summary"]["scoring"]["whole"]
    assert whole["auc_per_fold"] == [0.75, 1.0]
    assert whole["auc_mean"] == pytest.approx(0.875)
    assert got["recipes"]["new"]["overrides"] == {"a": 1}
    assert [f["fold"] for f in got["recipes"]["new"]["folds"]] == [0, 1]


def test_a_new_record_file_holds_only_this_run(tmp_path):
    _fake_run(tmp_path / "runs", "new")
    record = tmp_path / "fresh.json"
    _summarise(tmp_path / "runs", record)
    got = json.loads(record.read_text())
    assert list(got["recipes"]) == ["new"] and got["bundle"] == BUNDLE and got["n_folds"] == 4


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a JSON file"),
    (json.dumps([1, 2]), "not a CV record"),
    (json.dumps({"bundle": "brats_localisation", "n_folds": 4, "recipes": {}}), "its bundle is 'brats_localisation'"),
    (json.dumps({"bundle": BUNDLE, "n_folds": 5, "recipes": {}}), "its n_folds is 5"),
])
def test_a_record_that_cannot_be_merged_is_refused_naming_the_file(tmp_path, content, problem):
    _fake_run(tmp_path / "runs", "new")
    record = tmp_path / "other_record.json"
    record.write_text(content)
    with pytest.raises(SystemExit, match=problem) as err:
        _summarise(tmp_path / "runs", record)
    assert str(record) in str(err.value)
    assert record.read_text() == content  # left as it was


@pytest.mark.parametrize("no_cam", [True, False])
def test_the_recorded_command_repeats_the_cam_choice(tmp_path, monkeypatch, no_cam):
    """A recipe run's ``cv.json`` command re-runs it as it was run: with ``--no_cam`` when the CAMs were skipped."""
    cv = cv_script()
    seen = []

    def fake_fold(bundle, recipe, train, heldout, out_dir, dataset_dir, cams=True):
        seen.append(cams)
        out_dir.mkdir(parents=True)
        np.savez(out_dir / "heldout.npz", whole=np.asarray([-1.0, 1.0]), flip=np.asarray([-1.0, 1.0]),
                 label=np.asarray([0, 1]), case=np.asarray(["P", "P"]), z=np.asarray([0, 1]))
        return {"train_patients": train, "heldout_patients": heldout, "train_s": 1.0, "epochs": 1,
                "best_epoch": 1, "curves": {}}

    monkeypatch.setattr(cv, "run_patient_fold", fake_fold)
    monkeypatch.setattr(cv, "_summarise_run", lambda run_dir, name, no_cam: {})
    cv.main(["--bundle", BUNDLE, "--out", str(tmp_path), "--folds", "2", "--recipe", 'r={"seed": 1}',
             *(["--no_cam"] if no_cam else [])])
    command = json.loads((tmp_path / "r" / "cv.json").read_text())["command"]
    assert seen == [not no_cam] * 2
    assert ("--no_cam" in command) is no_cam
    assert command.endswith("""--recipe r='{"seed": 1}'""")
