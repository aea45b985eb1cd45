"""Weights files: a bad ``model.pt`` is refused with its name, and nothing but tensors is ever unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medcnn.errors import user_error
from medcnn.networks import CheckpointError, load_weights
from tests.bundle_helpers import BUNDLES, run_workflow

COMMITTED = BUNDLES / "synthetic_localisation" / "models" / "model.pt"  # a real checkpoint (1.5 MB)


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    data = COMMITTED.read_bytes()
    files = {"empty": tmp_path / "empty.pt", "truncated": tmp_path / "truncated.pt",
             "not_torch": tmp_path / "notes.pt", "pickle_with_code": tmp_path / "code.pt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not_torch"].write_text("these are not weights\n")
    torch.save({"fc2.weight": _RunsCode()}, files["pickle_with_code"])
    return files


def test_committed_weights_load_as_a_state_dict():
    state = load_weights(COMMITTED)
    assert "fc2.weight" in state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(load_weights(COMMITTED, key="model")) == set(state)  # a bare state dict has no "model" entry


@pytest.mark.parametrize("kind,problem", [("empty", "empty (0 bytes)"), ("truncated", "truncated or corrupt"),
                                          ("not_torch", "truncated or corrupt"),
                                          ("pickle_with_code", "objects other than tensors")])
def test_bad_weights_file_is_refused_by_name(tmp_path, kind, problem):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError) as info:
        load_weights(path)
    assert str(info.value).startswith(str(path)) and problem in str(info.value)


def test_full_training_checkpoint_gives_the_model_entry(tmp_path):
    state = load_weights(COMMITTED)
    torch.save({"model": state, "epoch": 3}, tmp_path / "full.pt")
    assert set(load_weights(tmp_path / "full.pt", key="model")) == set(state)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="mine.pt: weights file not found"):
        load_weights(tmp_path / "mine.pt")


def test_bundle_evaluation_with_a_truncated_checkpoint_names_it(tmp_path):
    bad = _bad_files(tmp_path)["truncated"]
    with pytest.raises(Exception) as info:  # MONAI's runner wraps it; medcnn.errors finds it in the chain
        run_workflow("synthetic_localisation", ["train.json", "evaluate.json"], "eval", output_dir=str(tmp_path / "o"),
                     ckpt_path=str(bad), num_test=4, **{"synthetic#spatial_size": [32, 32],
                                                         "synthetic#radius_range": [4.0, 8.0]})
    err = user_error(info.value)
    assert isinstance(err, CheckpointError) and str(err).startswith(f"{bad}: not a readable PyTorch weights file")


def _saver_run(tmp_path, fail_on_save: int | None, monkeypatch):
    """Three epochs with a rising key metric; the ``fail_on_save``-th torch.save dies half-way (a killed run)."""
    from ignite.engine import Engine, Events

    from medcnn.handlers import CheckpointSaver

    net = torch.nn.Linear(4, 2)
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):
        e.state.metrics["acc"] = 0.5 + 0.1 * e.state.epoch
        with torch.no_grad():
            net.weight.fill_(float(e.state.epoch))

    CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="acc",
                    key_metric_filename="model.pt").attach(engine)
    real_save, calls = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_on_save:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt("killed while saving")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    try:
        engine.run([0], max_epochs=3)
    except KeyboardInterrupt:
        pass
    return tmp_path / "model.pt"


def test_checkpoint_saver_keeps_the_previous_best_whole_when_killed(tmp_path, monkeypatch):
    path = _saver_run(tmp_path, fail_on_save=2, monkeypatch=monkeypatch)
    state = load_weights(path)  # epoch 1's weights, whole: not a truncated file, not a missing one
    assert float(state["weight"].mean()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tmp")) == ["model.pt"]


def test_checkpoint_saver_replaces_the_best_with_a_readable_file(tmp_path, monkeypatch):
    path = _saver_run(tmp_path, fail_on_save=None, monkeypatch=monkeypatch)
    assert float(load_weights(path)["weight"].mean()) == 3.0
    assert path.stat().st_mode & 0o044 == 0o044  # group / others can read it, as with MONAI's own saver
