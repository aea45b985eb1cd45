#!/usr/bin/env python
"""Throughput and time-to-accuracy/Dice of the two BraTS bundles, written as JSON (with the load average).

Two kinds of figures:

* from the committed training curves (``bundles/<bundle>/docs/train_curves.json``, written by the default
  ``train.json`` through :class:`medcnn.handlers.TrainingCurvesHandler`): end-to-end training samples/s
  (training slices x epochs / wall time, validation and logging included) and the wall time at which the
  validation Dice / accuracy first reached given levels;
* measured now: a plain PyTorch training step (forward + backward + AdamW, batch 16, 2 x 96 x 96 slices) and
  an inference pass of every network, in samples/s, with ``torch.get_num_threads()`` threads.

The machine is shared, so every figure comes with the 1-minute load average at the time::

    OMP_NUM_THREADS=1 python scripts/bench_brats.py --out bundles/brats_tumour_segmentation/docs/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SEG = REPO / "bundles" / "brats_tumour_segmentation"
LOC = REPO / "bundles" / "brats_tumour_localisation"


def _n_train_slices(drop_ambiguous: bool, dataset_dir: str | None, hemispheres: bool = False) -> int:
    from medcnn.data import (
        brats_case_datalist,
        brats_hemispheres,
        brats_slices,
        resolve_data_dir,
        split_slices_by_block,
    )

    root = dataset_dir or resolve_data_dir("brats2015_deepmedic_subset", LOC)
    cases = brats_case_datalist(root, ["brats_2013_pat0005_1", "brats_2013_pat0006_1"])
    pool = brats_slices(cases, min_brain_fraction=0.1, min_tumour_pixels=50, drop_ambiguous=drop_ambiguous)
    items = split_slices_by_block(pool, block=10, every=4, offset=2)
    return len(brats_hemispheres(items) if hemispheres else items)


def _time_to(curves: dict, key: str, levels: list[float]) -> dict:
    values, times = curves.get(key, []), curves.get(f"{key}_time_s", [])
    out = {}
    for level in levels:
        hit = next((i for i, v in enumerate(values) if v is not None and v >= level), None)
        out[f"{key}>={level}"] = None if hit is None else {"time_s": times[hit], "epoch": curves[f"{key}_x"][hit]}
    return out


def curve_figures(bundle: Path, key: str, levels: list[float], n_train: int) -> dict:
    """End-to-end training throughput and time-to-level from a bundle's committed curves."""
    path = bundle / "docs" / "train_curves.json"
    if not path.is_file():
        return {"error": f"{path} not found (train the bundle first)"}
    curves = json.loads(path.read_text())
    epochs, wall = len(curves["epoch"]), float(curves["time_s"][-1])
    return {
        "curves": str(path.relative_to(REPO)),
        "epochs": epochs,
        "train_slices_per_epoch": n_train,
        "wall_time_s": wall,
        "end_to_end_samples_per_s": round(n_train * epochs / wall, 2),
        f"best_{key}": max(v for v in curves[key] if v is not None),
        **_time_to(curves, key, levels),
    }


def _bench_network(net: torch.nn.Module, classify: bool, steps: int, batch: int = 16, size: int = 96,
                   channels: int = 2) -> dict:
    x = torch.randn(batch, channels, size, size)
    if classify:
        y = torch.randint(0, 2, (batch,))
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        from monai.losses import DiceCELoss

        y = torch.randint(0, 2, (batch, 1, size, size))
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    net.train()
    for i in range(steps + 1):  # the first step warms up
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    train_sps = batch * steps / (time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        net(x)
        start = time.perf_counter()
        for _ in range(steps):
            net(x)
        infer_sps = batch * steps / (time.perf_counter() - start)
    return {"parameters": sum(p.numel() for p in net.parameters()), "train_samples_per_s": round(train_sps, 2),
            "inference_samples_per_s": round(infer_sps, 2)}


def network_figures(steps: int) -> dict:
    from medcnn.networks import ResNetClassifier, build_segmentation_network

    torch.manual_seed(0)
    nets = {name: (build_segmentation_network(name, 2, 2, 2), False) for name in ("unet", "segresnet", "flexible_unet")}
    context = json.loads((LOC / "configs" / "train.json").read_text()).get("slice_context", 0)
    in_channels = 2 * (2 * int(context) + 1)  # FLAIR + T1c, each with its neighbouring slices (2.5D)
    nets["resnet_classifier"] = (
        ResNetClassifier(2, in_channels, 2, num_blocks=3, channels=32, max_channels=128), True)
    out = {}
    for name, (net, classify) in nets.items():
        load = os.getloadavg()[0]
        channels = in_channels if classify else 2
        out[name] = {**_bench_network(net, classify, steps, channels=channels), "input_channels": channels,
                     "load_average_1m": round(load, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SEG / "docs" / "bench.json")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per network")
    parser.add_argument("--dataset_dir", default=None)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    result = {
        "command": "OMP_NUM_THREADS=1 python scripts/bench_brats.py",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "input": "batch 16 x 2 channels (FLAIR, T1c) x 96 x 96",
        "load_average_start": [round(v, 2) for v in load_start],
        "segmentation_training": curve_figures(SEG, "val_dice", [0.8, 0.85, 0.9],
                                               _n_train_slices(False, args.dataset_dir)),
        # the classifier trains on half-slices (hemispheres), validated on the half-slices of the validation blocks
        "localisation_training": curve_figures(LOC, "val_auc", [0.9, 0.95],
                                               _n_train_slices(True, args.dataset_dir, hemispheres=True)),
        "plain_pytorch_step": network_figures(args.steps),
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
