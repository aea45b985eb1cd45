"""Benchmark of the em_membrane_segmentation bundle: training samples/s, inference slices/s, time-to-Dice.

Two parts, both written to one JSON file (default ``bundles/em_membrane_segmentation/docs/bench_em.json``):

* ``throughput``: the bundle's network, loss and optimiser on real training patches (the bundle's own
  preprocessing and augmentation), timed as a plain PyTorch loop (``patches/s``), next to the
  sliding-window inference speed on whole 512x512 slices (``slices/s``). The load average before and
  after is recorded: the machine is shared, so timings are upper bounds of the cost.
* ``time_to_dice``: read from a finished default training (``<run_dir>/curves.json`` written by
  ``TrainingCurvesHandler``): wall time at each validation with the validation membrane Dice and pixel
  accuracy, the first time each Dice threshold was reached, and the trainer's mean patches/s.

Usage::

    python scripts/bench_em.py                       # both parts, run_dir = the bundle's eval/
    python scripts/bench_em.py --skip-throughput     # only parse the training curves
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "em_membrane_segmentation"
logger = logging.getLogger("bench_em")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _parser(overrides: dict, configs: tuple[str, ...] = ("train.json",)):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config([str(BUNDLE / "configs" / c) for c in configs])
    p["bundle_root"] = str(BUNDLE)
    for k, v in overrides.items():
        p[k] = v
    return p


def throughput(output_dir: str, steps: int, warmup: int) -> dict:
    """Plain-loop training patches/s and sliding-window inference slices/s of the bundle's default setup."""
    from monai.data import DataLoader

    p = _parser({"output_dir": output_dir, "train_slices": [0, 1, 2, 3, 4, 5, 6, 7]})
    for _ in p.get_parsed_content("initialize"):
        pass
    net, loss_fn, opt = p.get_parsed_content("network"), p.get_parsed_content("loss"), p.get_parsed_content("optimizer")
    ds = p.get_parsed_content("train#dataset")
    batch_slices = p.get_parsed_content("slices_per_batch")
    loader = DataLoader(ds, batch_size=batch_slices, shuffle=True, num_workers=0)
    batches = []
    while len(batches) < warmup + steps:
        batches += list(loader)
    batches = batches[: warmup + steps]
    patches = int(batches[0]["image"].shape[0])
    net.train()
    load_before = _load()
    for i, b in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(net(b["image"]), b["label"])
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    # data pipeline alone (augmentation of one batch), for the share of the step it costs
    t1 = time.perf_counter()
    n_aug = 0
    for b in loader:
        n_aug += int(b["image"].shape[0])
        if n_aug >= patches * 2:
            break
    aug_s = (time.perf_counter() - t1) / n_aug
    # whole-slice inference: the plain sliding window (training-time validation) and the evaluation inferer
    # of evaluate.json / inference.json (sliding window inside the 8-view dihedral ensemble)
    val = p.get_parsed_content("validate#dataset")
    items = [val[i]["image"][None] for i in range(min(3, len(val)))]
    net.eval()

    def slices_per_s(inferer) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for x in items:
                inferer(x, net)
        return round(len(items) / (time.perf_counter() - t), 3)

    infer_rate = slices_per_s(p.get_parsed_content("validate#inferer"))
    eval_inferer = _parser({"output_dir": output_dir}, ("train.json", "evaluate.json")).get_parsed_content(
        "validate#inferer"
    )
    tta_rate = slices_per_s(eval_inferer)
    return {
        "patch_size": list(p.get_parsed_content("patch_size")),
        "patches_per_step": patches,
        "timed_steps": steps,
        "train_patches_per_s": round(patches * steps / train_s, 3),
        "train_pixels_per_s": round(
            patches * steps * int(torch.tensor(p.get_parsed_content("patch_size")).prod()) / train_s
        ),
        "augmentation_s_per_patch": round(aug_s, 4),
        "inference_slices_per_s": infer_rate,
        "evaluation_inferer": type(eval_inferer).__name__,
        "evaluation_inference_slices_per_s": tta_rate,
        "inference_slice_shape": list(val[0]["image"].shape[1:]),
        "load_average_before": load_before,
        "load_average_after": _load(),
    }


def time_to_dice(run_dir: Path, thresholds: list[float], patches_per_epoch: int) -> dict:
    """Time-to-Dice table of a finished training run from its ``curves.json``."""
    curves = json.loads((run_dir / "curves.json").read_text())
    key = "val_membrane_dice"
    times, dice = curves.get(f"{key}_time_s", []), curves.get(key, [])
    epochs = curves.get(f"{key}_x", [])
    acc = curves.get("pixel_accuracy", [])
    reached = {}
    for t in thresholds:
        hit = [(s, e) for s, e, d in zip(times, epochs, dice, strict=True) if d >= t]
        reached[f"{t:.2f}"] = {"time_s": hit[0][0], "epoch": hit[0][1]} if hit else None
    total_s = curves["time_s"][-1] if curves.get("time_s") else None
    n_epochs = len(curves.get("epoch", []))
    return {
        "run_dir": str(run_dir),
        "epochs_run": n_epochs,
        "wall_time_s": total_s,
        "mean_patches_per_s_incl_validation": round(n_epochs * patches_per_epoch / total_s, 3) if total_s else None,
        "best_val_membrane_dice": max(dice) if dice else None,
        "first_time_val_dice_reached": reached,
        "curve": [
            {"epoch": e, "time_s": s, "val_membrane_dice": round(d, 4), "val_pixel_accuracy": round(a, 4)}
            for e, s, d, a in zip(epochs, times, dice, acc, strict=False)
        ],
    }


def plot_time_to_dice(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = report["time_to_dice"]["curve"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(
        [c["time_s"] / 60 for c in curve], [c["val_membrane_dice"] for c in curve], marker="o", label="membrane Dice"
    )
    ax.plot([c["time_s"] / 60 for c in curve], [c["val_pixel_accuracy"] for c in curve], marker="s", label="pixel acc.")
    ax.set_xlabel("wall time (min, shared 2-core CPU)")
    ax.set_ylabel("validation (slices 20-24)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("time to Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=str(BUNDLE / "eval"), help="output_dir of a finished default training")
    ap.add_argument("--out", default=str(BUNDLE / "docs" / "bench_em.json"))
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.75, 0.8, 0.85])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if not args.skip_throughput:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            report["throughput"] = throughput(tmp, args.steps, args.warmup)
        report["throughput"]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_dir = Path(args.run_dir)
    if (run_dir / "curves.json").is_file():
        p = _parser({})
        per_epoch = len(p["train_slices"]) * int(p["samples_per_slice"])
        report["time_to_dice"] = time_to_dice(run_dir, args.thresholds, per_epoch)
        started = run_dir / "train_started.txt"
        if started.is_file():
            report["time_to_dice"]["started"] = started.read_text().strip()
        plot_time_to_dice(report, out.with_name("time_to_dice.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
