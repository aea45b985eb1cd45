"""Resumable training: the atomic training state, a run killed with SIGKILL and resumed, and unusable state files."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import bundle_root, error_messages, make_workflow

from medcnn.handlers.checkpoint import atomic_torch_save

NAME = "synthetic_localisation"
ROOT = bundle_root(NAME)
# tiny and fast; patience above max_epochs so the epoch count is fixed
TINY = {
    "num_train": 32,
    "num_val": 8,
    "synthetic#spatial_size": [32, 32],
    "synthetic#radius_range": [4.0, 8.0],
    "synthetic#contrast": 3.0,
    "max_epochs": 6,
    "early_stop_patience": 100,
    "num_threads": 1,
}


def _cli(out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "train.json"),
            "--meta_file", str(ROOT / "configs" / "metadata.json"), "--bundle_root", str(ROOT),
            "--output_dir", str(out), "--ckpt_dir", str(out / "ckpt")]
    for key, value in TINY.items():
        args += [f"--{key}", json.dumps(value)]
    return args + list(extra)


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "state.pt"
    atomic_torch_save({"a": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        atomic_torch_save({"a": lambda: 0}, path)  # not picklable: fails half-way through writing
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"], "temporary file left behind"


def test_monai_internals_the_training_state_relies_on_are_still_there(tmp_path):
    """TrainingCheckpoint reads the Ignite objects inside MONAI's EarlyStopHandler and CheckpointSaver; if MONAI
    renames them this fails loudly instead of resuming without early-stopping / best-metric state."""
    from ignite.engine import Engine
    from monai.handlers import CheckpointSaver, EarlyStopHandler

    net = torch.nn.Linear(2, 2)
    stop = EarlyStopHandler(patience=3, score_function=lambda e: 0.0)
    stop.set_trainer(Engine(lambda e, b: None))
    assert {"counter", "best_score"} <= set(stop._handler.state_dict())
    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    assert "_saved" in saver._key_metric_checkpoint.state_dict()
    no_key_metric = CheckpointSaver(str(tmp_path), {"model": net}, save_final=True)
    assert no_key_metric._key_metric_checkpoint is None


def test_random_state_of_nested_monai_transforms_is_captured_and_restored():
    """RandAffined keeps three RandomStates (its own, RandAffine's, RandAffineGrid's); after restoring, the pipeline
    and the global generators draw exactly what they drew after the capture."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised

    from medcnn.handlers.checkpoint import capture_random_state, restore_random_state

    pipeline = Compose([RandFlipd("image", prob=0.5), RandAffined("image", prob=1.0, rotate_range=0.5),
                        RandGaussianNoised("image", prob=1.0)])
    loader = DataLoader(Dataset([{"image": torch.rand(1, 8, 8)} for _ in range(4)], pipeline), batch_size=2,
                        shuffle=True)
    next(iter(loader))  # advance every generator a little

    def epoch():
        return [b["image"].clone() for b in loader], torch.rand(3), np.random.rand(), random.random()

    saved = capture_random_state(loader)
    assert "dataset.transform.transforms.1.rand_affine.rand_affine_grid.R" in saved["loader"]
    assert not any(p.startswith("sampler") for p in saved["loader"]), "the sampler's dataset was walked twice"
    first = epoch()
    assert restore_random_state(saved, loader) == []
    again = epoch()
    for a, b in zip(first[0], again[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(first[1], again[1]) and first[2:] == again[2:]
    third = epoch()  # without restoring, the draws move on
    assert not torch.equal(first[0][0], third[0][0])


def _run_to_end(out: Path, env: dict) -> dict:
    run = subprocess.run(_cli(out), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out / "ckpt" / "training_state.pt", map_location="cpu", weights_only=True)


def test_killed_training_resumes_with_optimizer_state_and_same_epoch_count(tmp_path):
    """SIGKILL after a checkpoint exists, then --resume: the epoch count, the optimizer's step count, and (random
    state restored: same shuffles and augmentations) the very weights of an uninterrupted run."""
    out = tmp_path / "run"
    state_file = out / "ckpt" / "training_state.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    uninterrupted = _run_to_end(tmp_path / "uninterrupted", env)
    proc = subprocess.Popen(_cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not state_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)  # mid-run: the state of at least one finished epoch is on disk
    proc.wait()
    killed = torch.load(state_file, map_location="cpu", weights_only=True)
    per_epoch = killed["trainer"]["epoch_length"]
    done = killed["trainer"]["iteration"] // per_epoch
    assert 1 <= done < TINY["max_epochs"]

    resumed = subprocess.run(_cli(out, "--resume", "true"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(state_file, map_location="cpu", weights_only=True)
    total = TINY["max_epochs"] * per_epoch
    assert final["trainer"]["iteration"] == total
    # Adam counts its steps: restored state continues the count, a re-initialised optimizer would restart it
    steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {total}, f"optimizer steps {steps}, expected {total} (state not restored?)"
    curves = json.loads((out / "curves.json").read_text()) if (out / "curves.json").exists() else None
    if curves is not None:  # bundles with the curves handler continue the interrupted run's curves
        assert curves["epoch"] == list(range(1, TINY["max_epochs"] + 1))
    assert (out / "ckpt" / "model.pt").is_file()
    for name, value in uninterrupted["network"].items():
        assert torch.equal(final["network"][name], value), f"{name} differs from the uninterrupted run"
    assert final["evaluator"] == uninterrupted["evaluator"]
    assert final["early_stop"] == uninterrupted["early_stop"]


def _half_of_a_state_file(tmp_path: Path) -> bytes:
    atomic_torch_save({"format": "medcnn.training_state/2", "network": {"w": torch.rand(64, 64)}}, tmp_path / "s.pt")
    whole = (tmp_path / "s.pt").read_bytes()
    (tmp_path / "s.pt").unlink()
    return whole[: len(whole) // 2]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", _half_of_a_state_file, b"not a checkpoint\n"],
                         ids=["zero-bytes", "truncated-header", "half-of-a-state-file", "text"])
def test_unusable_state_file_is_named_and_left_untouched(tmp_path, content):
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    content = content(tmp_path) if callable(content) else content
    state_file = out / "ckpt" / "training_state.pt"
    state_file.write_bytes(content)
    wf = make_workflow(NAME, ["train.json"], "train", output_dir=str(out), ckpt_dir=str(out / "ckpt"), resume=True,
                       **TINY)
    wf.initialize()
    with pytest.raises(RuntimeError) as info:
        wf.run()
    assert f"TrainingCheckpointError: {state_file}: not a readable training state" in error_messages(info.value)
    assert state_file.read_bytes() == content
    assert not (out / "ckpt" / "model.pt").exists()


def test_resume_without_a_state_file_says_so(tmp_path):
    wf = make_workflow(NAME, ["train.json"], "train", output_dir=str(tmp_path), ckpt_dir=str(tmp_path / "ckpt"),
                       resume=True, **TINY)
    wf.initialize()
    with pytest.raises(RuntimeError) as info:
        wf.run()
    assert "TrainingCheckpointError: " in error_messages(info.value)
    assert "training_state.pt: no training state to resume from" in error_messages(info.value)


def test_random_state_from_another_process_count_is_not_restored_and_says_so(tmp_path, caplog):
    from ignite.engine import Engine

    from medcnn.handlers.checkpoint import TrainingCheckpoint, capture_random_state

    net = torch.nn.Linear(2, 2)
    handler = TrainingCheckpoint(tmp_path / "state.pt", net, torch.optim.SGD(net.parameters(), lr=0.1))
    before = torch.get_rng_state()
    two_ranks = [capture_random_state(), capture_random_state()]
    torch.rand(5)  # moves torch's generator on
    moved = torch.get_rng_state()
    with caplog.at_level("WARNING"):
        handler._restore_random_state(two_ranks, Engine(lambda e, b: None))
    assert "written by 2 process(es), this run has 1" in caplog.text and str(tmp_path / "state.pt") in caplog.text
    assert torch.equal(torch.get_rng_state(), moved)
    handler._restore_random_state(two_ranks[:1], Engine(lambda e, b: None))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_run_stopped_early_is_recorded_as_ended_and_not_resumed_past_its_stop(tmp_path):
    """An early stop (the trainer terminated by a handler) marks the state as ended: resuming it is refused with the
    file named, where a killed run (an exception after the same epoch) resumes."""
    from ignite.engine import Engine, Events

    from medcnn.handlers.checkpoint import TrainingCheckpoint, TrainingCheckpointError, training_state_completed

    def run(path: Path, end, resume: bool = False) -> Engine:
        torch.manual_seed(0)
        net = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        engine = Engine(lambda e, b: opt.step())
        TrainingCheckpoint(path, net, opt, resume=resume).attach(engine)
        if end is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), end)
        engine.run([0, 1, 2], max_epochs=5)
        return engine

    stopped = tmp_path / "stopped.pt"
    run(stopped, lambda e: e.terminate())
    assert torch.load(stopped, weights_only=True)["completed"] and training_state_completed(stopped)
    with pytest.raises(TrainingCheckpointError, match=rf"{stopped}: the run already ended after epoch 2 of 5 "
                                                      r"\(stopped early\)"):
        run(stopped, None, resume=True)

    killed = tmp_path / "killed.pt"

    def die(engine):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run(killed, die)
    assert "completed" not in torch.load(killed, weights_only=True) and not training_state_completed(killed)
    assert run(killed, None, resume=True).state.epoch == 5  # resumed after epoch 2, ran to the end
    assert training_state_completed(killed)  # all epochs done
