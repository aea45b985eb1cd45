"""torchrun / DDP: every training bundle's multi_gpu_train.json, and a 2-process Gloo run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES, bundle_root

from medcnn.distributed import gather_lists, handlers_for_this_rank, is_distributed

TRAINING_BUNDLES = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/train.json"))


@pytest.mark.parametrize("name", TRAINING_BUNDLES)
def test_every_training_bundle_has_a_multi_gpu_config_in_step_with_train_json(name):
    configs = bundle_root(name) / "configs"
    assert (configs / "multi_gpu_train.json").is_file(), f"{name}: no configs/multi_gpu_train.json"
    train = json.loads((configs / "train.json").read_text())
    multi = json.loads((configs / "multi_gpu_train.json").read_text())
    # the multi-GPU file replaces these lists: it must keep everything train.json does, in order
    assert multi["imports"][: len(train["imports"])] == train["imports"]
    assert multi["initialize"][0] == "$medcnn.distributed.init_process_group(@device)"
    assert multi["initialize"][1:] == train["initialize"]
    assert multi["finalize"][:-1] == train.get("finalize", [])
    assert multi["finalize"][-1] == "$medcnn.distributed.destroy_process_group()"
    # SyncBatchNorm: an option, on by default on GPUs, off on the CPU (where torch does not support it)
    assert multi["sync_batchnorm"] == "$@device.type == 'cuda'"
    # the wrapped network is train.json's, with its mixed-precision choice (the autocast id)
    assert multi["network"]["module"] == ("$medcnn.networks.autocast_forward(medcnn.distributed.sync_batchnorm("
                                          "@network_def, @sync_batchnorm, @device), @autocast).to(@device)")
    assert "autocast" in train and train["network"].startswith("$medcnn.networks.autocast_forward(@network_def,")
    # each rank sees its own share of the training data: a DistributedSampler, or (volume pipelines that sample
    # slices from cached cases) its partition of the cases
    if "train#dataloader#sampler" in multi:
        assert multi["train#dataloader#sampler"] == "@train#sampler" and multi["train#dataloader#shuffle"] is False
    else:
        partitioned = [k for k, v in multi.items() if k.startswith("train#") and "partition_dataset" in str(v)]
        assert partitioned and all("torch.distributed.get_rank()" in multi[k] for k in partitioned), name


def test_outside_torchrun_everything_is_a_no_op():
    assert not is_distributed()
    handlers = [object(), object()]
    assert handlers_for_this_rank(handlers) == handlers
    assert gather_lists([1, 2], [0.5, 0.25]) == ([1, 2], [0.5, 0.25])


def test_sync_batchnorm_converts_for_gpus_and_refuses_the_cpu():
    from medcnn.distributed import sync_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    assert sync_batchnorm(net, False, "cpu") is net and isinstance(net[1], torch.nn.BatchNorm2d)
    assert sync_batchnorm(net, "false", "cpu") is net  # as `--sync_batchnorm false` arrives from the command line
    with pytest.raises(ValueError, match=r"SyncBatchNorm needs GPU .* --sync_batchnorm false"):
        sync_batchnorm(net, True, torch.device("cpu"))
    converted = sync_batchnorm(net, True, "cuda:0")  # the conversion itself needs no GPU; moving it does
    assert isinstance(converted[1], torch.nn.SyncBatchNorm) and not any(
        type(m) is torch.nn.BatchNorm2d for m in converted.modules())


@pytest.mark.slow
def test_sync_batchnorm_requested_under_torchrun_on_the_cpu_is_refused_by_name(tmp_path):
    """``--sync_batchnorm true`` with 2 Gloo processes: both ranks stop before training with the option's name, not
    with torch's "SyncBatchNorm layers only work with GPU modules" from inside DistributedDataParallel."""
    root = bundle_root("synthetic_localisation")
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai.bundle", "run", "--config_file",
            str([str(root / "configs" / "train.json"), str(root / "configs" / "multi_gpu_train.json")]),
            "--bundle_root", str(root), "--output_dir", str(out), "--ckpt_dir", str(out / "ckpt"),
            "--num_train", "8", "--num_val", "4", "--max_epochs", "1", "--sync_batchnorm", "true"]
    run = subprocess.run(args, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode != 0
    assert "sync_batchnorm: torch.nn.SyncBatchNorm needs GPU (CUDA) inputs" in log, log[-3000:]
    assert not (out / "ckpt" / "training_state.pt").exists()


def test_monai_tensorboard_handler_still_keeps_its_writer_where_rank_filtering_closes_it(tmp_path):
    from monai.handlers import TensorBoardStatsHandler

    handler = TensorBoardStatsHandler(log_dir=str(tmp_path))
    assert handler.internal_writer and hasattr(handler._writer, "log_dir")
    handler.close()


def test_two_process_gloo_training_writes_once_and_reaches_the_single_process_figure(tmp_path):
    """torchrun with 2 CPU processes on the synthetic bundle: it learns (the all-reduced validation accuracy reaches
    1.0, as one process does on this tiny set), and only rank 0 logs and writes files."""
    root = bundle_root("synthetic_localisation")
    out = tmp_path / "ddp"
    overrides = {"num_train": 64, "num_val": 16, "max_epochs": 8, "num_threads": 1, "early_stop_patience": 100,
                 "synthetic#spatial_size": [32, 32], "synthetic#contrast": 3.0, "synthetic#radius_range": [4.0, 8.0]}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai.bundle", "run", "--config_file",
            str([str(root / "configs" / "train.json"), str(root / "configs" / "multi_gpu_train.json")]),
            "--meta_file", str(root / "configs" / "metadata.json"), "--bundle_root", str(root),
            "--output_dir", str(out), "--ckpt_dir", str(out / "ckpt")]
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    run = subprocess.run(args, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    state = torch.load(out / "ckpt" / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] // state["trainer"]["epoch_length"] == overrides["max_epochs"]
    # 64 images over 2 ranks, batch 16: 2 iterations per epoch per rank
    assert state["trainer"]["epoch_length"] == 2
    assert state["evaluator"]["best_metric"] == 1.0, log[-3000:]
    assert (out / "ckpt" / "model.pt").is_file()
    # one validation summary per epoch: rank 1 is quiet
    assert log.count("Key metric: val_accuracy best value") == overrides["max_epochs"]
    writers = {p.name.split(".")[-2] for p in Path(out).rglob("events.out.tfevents.*")}
    assert len(writers) == 1, f"event files from several processes: {sorted(Path(out).rglob('events*'))}"


def _classification_report_rank(rank: int, world_size: int, init_file: str, items: list, queue) -> None:
    """One Gloo rank: evaluate its share of ``items`` with :class:`ClassificationReport` and return the figures."""
    import torch.distributed as dist
    from ignite.engine import Engine

    from medcnn.handlers import ClassificationReport

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        share = items[rank::world_size]  # ranks hold different counts (5 and 4 items)
        batches = [share[i : i + 2] for i in range(0, len(share), 2)]
        evaluator = Engine(lambda e, b: [{"pred": torch.tensor([1 - p, p]), "label": torch.tensor(y)} for p, y in b])
        report = ClassificationReport(threshold=0.5)
        report.attach(evaluator)
        evaluator.run(batches)
        queue.put((rank, dict(evaluator.state.metrics), sorted(report.scores)))
    finally:
        dist.destroy_process_group()


def test_classification_report_spans_every_rank_under_ddp(tmp_path):
    """Two Gloo processes, each evaluating part of the data: both report the figures of all the data, equal to
    the one-process report (MONAI's cumulative buffers are all-gathered)."""
    import torch.multiprocessing as mp

    from medcnn.metrics import binary_classification_report

    items = [(0.9, 1), (0.2, 0), (0.6, 1), (0.7, 0), (0.1, 0), (0.4, 1), (0.8, 1), (0.3, 0), (0.55, 0)]
    expected = binary_classification_report([y for _, y in items], [p for p, _ in items], 0.5)
    ctx = mp.get_context("fork")  # the children inherit the imported modules: seconds, not a minute of imports
    queue = ctx.Queue()
    procs = [ctx.Process(target=_classification_report_rank, args=(r, 2, str(tmp_path / "init"), items, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, metrics, scores in results:
        assert metrics["n_images"] == 9, f"rank {rank} reported only its own share"
        assert metrics["confusion_matrix"] == expected["confusion_matrix"] == [[3, 2], [1, 3]]
        assert metrics["auc"] == pytest.approx(expected["auc"])
        assert metrics["sensitivity"] == pytest.approx(0.75) and metrics["specificity"] == pytest.approx(0.6)
        assert scores == pytest.approx(sorted(p for p, _ in items))
