"""Benchmark the hippocampus bundle: training samples/s, time-to-Dice, and one-volume inference (load, predict, save).

Training figures are read from the ``curves.json`` that the bundle's default training writes (per-epoch wall
time and validation Dice); inference is measured here with the bundle's own ``inference.json`` pieces on the
committed weights, one held-out volume at a time, end to end (read NIfTI, preprocess, predict, invert, write
NIfTI)::

    python scripts/bench_hippocampus.py --curves bundles/hippocampus_segmentation/docs/curves.json \
        --out bundles/hippocampus_segmentation/docs/bench.json

Timings on a shared machine are inflated by other jobs: the load average is recorded next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_segmentation"


def training_figures(curves_path: Path, n_train: int, thresholds=(0.80, 0.85, 0.87, 0.88)) -> dict:
    """Samples/s (median over epochs without validation) and seconds to reach each validation Dice threshold."""
    c = json.loads(curves_path.read_text())
    t, epochs = c["time_s"], c["epoch"]
    val_epochs = set(c.get("val_mean_dice_x", []))
    durations = [t[i] - t[i - 1] for i in range(1, len(t)) if epochs[i] not in val_epochs]
    dice, dice_t, dice_x = c.get("val_mean_dice", []), c.get("val_mean_dice_time_s", []), c.get("val_mean_dice_x", [])
    to_dice = {}
    for thr in thresholds:
        hit = next((i for i, d in enumerate(dice) if d >= thr), None)
        to_dice[f"{thr:.2f}"] = None if hit is None else {"time_s": dice_t[hit], "epoch": dice_x[hit]}
    return {
        "train_cases_per_epoch": n_train,
        "epochs": len(epochs),
        "total_training_time_s": t[-1] if t else None,
        "epoch_time_s_median": statistics.median(durations) if durations else None,
        "samples_per_s": n_train / statistics.median(durations) if durations else None,
        "best_val_mean_dice": max(dice) if dice else None,
        "time_to_val_dice": to_dice,
    }


def inference_figures(n_volumes: int, dataset_dir: str | None, threads: int, flip_tta: bool = True) -> dict:
    """Median / max seconds for load + predict + save of one held-out volume with the bundle's inference.json.

    ``flip_tta=False`` replaces the bundle's flip-averaging inferer by a single forward pass.
    """
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out_dir:
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "inference.json"))
        parser["bundle_root"] = str(BUNDLE)
        parser["output_dir"] = out_dir
        if dataset_dir:
            parser["dataset_dir"] = dataset_dir
        files = parser.get_parsed_content("input_files")[:n_volumes]
        pre = parser.get_parsed_content("preprocessing")
        post = parser.get_parsed_content("postprocessing")
        net = parser.get_parsed_content("network")
        inferer = parser.get_parsed_content("inferer") if flip_tta else SimpleInferer()
        ckpt = BUNDLE / "models" / "model.pt"
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        net.eval()
        times = []
        with torch.no_grad():
            # one warm-up volume (first-call allocations), then timed volumes
            for i, f in enumerate([files[0], *files]):
                t0 = time.perf_counter()
                d = pre({"image": f})
                d["pred"] = inferer(d["image"].unsqueeze(0), net)[0]
                post(d)
                if i:
                    times.append(time.perf_counter() - t0)
        written = sorted(os.listdir(out_dir + "/predictions"))
    return {
        "inferer": type(inferer).__name__,
        "volumes": len(times),
        "threads": threads,
        "seconds_per_volume_median": statistics.median(times),
        "seconds_per_volume_max": max(times),
        "predictions_written": len(written),
        "target_s": 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", default=str(BUNDLE / "docs" / "curves.json"))
    p.add_argument("--n_train", type=int, default=156, help="training cases per epoch of that run")
    p.add_argument("--volumes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP stalls on a busy machine)")
    p.add_argument("--dataset_dir", default=None)
    p.add_argument("--out", default=str(BUNDLE / "docs" / "bench.json"))
    args = p.parse_args(argv)
    result = {"load_average_start": list(os.getloadavg()), "cpu_count": os.cpu_count()}
    if Path(args.curves).is_file():
        result["training"] = training_figures(Path(args.curves), args.n_train)
    result["inference"] = inference_figures(args.volumes, args.dataset_dir, args.threads)
    result["inference_single_pass"] = inference_figures(args.volumes, args.dataset_dir, args.threads, flip_tta=False)
    result["load_average_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
