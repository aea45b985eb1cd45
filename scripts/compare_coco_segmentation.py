#!/usr/bin/env python
"""Compare UNet, a ResNeXt50-encoder U-Net and ResUNet++ on the COCO brain-tumour bundle under one equal budget.

Every variant is trained with the bundle's own ``train.json`` (same resolution, augmentation, loss, optimiser and
seed; only ``network_name``, the budget, the validation cadence and the output folders are overridden), keeps
its best checkpoint by validation Dice, and is then scored on the **validation** split (150 images of train/, on
each image's native grid) with ``evaluate.json``. The test split is never touched here: it is scored once, for
the bundle's default only (see the model card).

The budget is either equal wall-clock training time (``--budget_min``: "which network is best after N minutes on
this CPU?") or equal training epochs (``--epochs``). The 1-minute load average is sampled every 10 s during each
run and reported (mean and range), because on a shared machine equal wall time is only equal CPU time if the load
is. With ``--budget_min`` the learning-rate schedule of ``train.json`` is laid out over its ``max_epochs`` of 1000,
i.e. warm-up then an almost constant rate, the same for every network. ``--skip_native_eval`` reports only the
best validation Dice on the training grid (from the training curves) and saves the rescoring on each image's
native grid. The resized images and masks are cached once on disk (``PersistentDataset`` under
``<work_dir>/cache``, emptied at the start) and shared by all runs, so the budget is not spent decoding the same
JPEGs again. Writes ``<out>/comparison.json`` and ``<out>/comparison.md`` (the model card's table)::

    OMP_NUM_THREADS=1 python scripts/compare_coco_segmentation.py --budget_min 8 --iterations_per_epoch 50 \
        --seeds 0 --skip_native_eval
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from medcnn.bench import bundle_workflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "coco_tumour_segmentation"

logger = logging.getLogger("compare_coco_segmentation")


class LoadSampler:
    """Sample the 1-minute load average every ``every_s`` seconds while the ``with`` block runs."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"load_1m_mean": round(statistics.fmean(s), 2), "load_1m_min": round(min(s), 2),
                "load_1m_max": round(max(s), 2)}


def _workflow(configs: list[str], workflow_type: str, **override):
    wf = bundle_workflow(BUNDLE, configs, workflow_type, **override)
    wf.initialize()
    wf.run()
    return wf


def _fill_cache(shared_cache: dict, dataset_dir: str | None) -> None:
    """Write every cached training / validation item before any budget starts, so no network pays for it."""
    wf = bundle_workflow(BUNDLE, ["train.json"], "train", **shared_cache,
                         **({"dataset_dir": dataset_dir} if dataset_dir else {}))
    wf.parser.parse()
    start = time.perf_counter()
    for part in shared_cache:
        ds = wf.parser.get_parsed_content(part)
        for i in range(len(ds)):
            ds[i]
    logger.info("cached %s in %.0f s", ", ".join(shared_cache), time.perf_counter() - start)


def compare(networks: list[str], seeds: list[int], budget_min: float | None, epochs: int | None,
            iterations_per_epoch: int | None, work_dir: Path, dataset_dir: str | None,
            native_eval: bool = True) -> list[dict]:
    """Train every (network, seed) under the same budget, score it on the validation split; one row each."""
    rows = []
    cache = work_dir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    shared_cache = {
        f"{part}#dataset": {"_target_": "PersistentDataset", "data": f"$@split['{data}']",
                            "transform": f"@{part}#preprocessing", "cache_dir": str(cache / part)}
        for part, data in (("train", "training"), ("validate", "validation"))
    }
    _fill_cache(shared_cache, dataset_dir)
    for seed in seeds:
        for name in networks:
            out = work_dir / f"{name}_seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            common = {"network_name": name, "output_dir": str(out), "ckpt_dir": str(out / "models"), "seed": seed}
            if dataset_dir:
                common["dataset_dir"] = dataset_dir
            budget = {"max_epochs": 1000, "time_limit_s": budget_min * 60} if budget_min else {"max_epochs": epochs}
            if iterations_per_epoch:
                budget["train#trainer#epoch_length"] = iterations_per_epoch
            with LoadSampler() as load:
                start = time.perf_counter()
                wf = _workflow(["train.json"], "train", **common, **budget, **shared_cache)
                train_s = time.perf_counter() - start
            trainer = wf.parser.get_parsed_content("train#trainer")
            batch = int(wf.parser.get_parsed_content("batch_size"))
            size = list(wf.parser.get_parsed_content("spatial_size"))
            n_params = sum(p.numel() for p in wf.parser.get_parsed_content("network").parameters())
            wf.finalize()
            curves = json.loads((out / "curves.json").read_text())
            eval_start = time.perf_counter()
            if native_eval:
                _workflow(["train.json", "evaluate.json"], "eval", **common,
                          ckpt_path=str(out / "models" / "model.pt"), report_max_cases=0,
                          eval_items="$@split['validation']")
                m = json.loads((out / "metrics.json").read_text())
            else:
                m = {}
            eval_s = time.perf_counter() - eval_start
            val = curves.get("val_dice", [])
            best = max(range(len(val)), key=val.__getitem__) if val else None
            images = int(trainer.state.iteration) * batch
            per_validation = int(iterations_per_epoch or len(wf.parser.get_parsed_content("train#dataloader"))) * batch
            rows.append({
                "network": name,
                "seed": seed,
                "parameters": n_params,
                "spatial_size": size,
                "val_dice": m.get("dice"),
                "val_image_dice_median": m.get("image_dice_median"),
                "val_image_dice_q25": m.get("image_dice_q25"),
                "val_image_dice_q75": m.get("image_dice_q75"),
                "val_pixel_accuracy": m.get("pixel_accuracy"),
                "val_tumour_precision": m.get("tumour_precision"),
                "val_tumour_recall": m.get("tumour_recall"),
                "n_val_images": m.get("n_items"),
                "train_images_seen": images,
                "epochs_equivalent": round(images / len(wf.parser.get_parsed_content("split")["training"]), 2),
                "best_val_dice_training_grid": val[best] if val else None,
                "best_validation": best + 1 if val else None,
                "train_images_at_best": (best + 1) * per_validation if val else None,
                "validations": len(val),
                "train_wall_s": round(train_s, 1),
                "train_images_per_s": round(images / train_s, 2),
                "eval_wall_s": round(eval_s, 1),
                **load.summary(),
            })
            logger.info("%s seed %d: %s", name, seed, rows[-1])
    return rows


def _fmt(value, digits: int = 3) -> str:
    """A figure for the table; undefined ones (e.g. precision when nothing is predicted) as 'n/a'."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(rows: list[dict], budget: str) -> str:
    """The model card's table: one row per (network, seed); validation figures (training grid, and native grid
    when scored)."""
    native = any(r.get("val_dice") is not None for r in rows)
    head = ("| network | seed | parameters | best val Dice (training grid) | at validation (images seen) "
            + ("| val Dice native grid | per-image Dice median [IQR] | pixel accuracy | tumour precision / recall "
               if native else "")
            + f"| images seen in {budget} (passes over the training split) | images/s | load 1 min mean [range] |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        cells = [r["network"], str(r["seed"]), f"{r['parameters'] / 1e6:.2f} M", _fmt(r["best_val_dice_training_grid"]),
                 f"{r['best_validation']} of {r['validations']} ({r['train_images_at_best']})"]
        if native:
            cells += [_fmt(r["val_dice"]),
                      f"{_fmt(r['val_image_dice_median'])} [{_fmt(r['val_image_dice_q25'])}, "
                      f"{_fmt(r['val_image_dice_q75'])}]",
                      _fmt(r["val_pixel_accuracy"], 4),
                      f"{_fmt(r['val_tumour_precision'])} / {_fmt(r['val_tumour_recall'])}"]
        cells += [f"{r['train_images_seen']} ({r['epochs_equivalent']:g})", f"{r['train_images_per_s']:.1f}",
                  f"{r['load_1m_mean']:.1f} [{r['load_1m_min']:.1f}, {r['load_1m_max']:.1f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _budget_text(result: dict) -> str:
    if result.get("budget_min"):
        return f"{result['budget_min']:g} min"
    unit = f"{result['iterations_per_epoch']}-batch epoch" if result.get("iterations_per_epoch") else "epoch"
    return f"{result['epochs']} {unit}{'s' if result['epochs'] != 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["unet", "resnext_unet", "resunetpp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget_min", type=float, help="equal training wall time per network (minutes)")
    budget.add_argument("--epochs", type=int, help="equal number of training epochs per network")
    parser.add_argument("--iterations_per_epoch", type=int, default=None,
                        help="validate every this many batches instead of once per pass over the training split")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/medcnn_coco_compare"))
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--skip_native_eval", action="store_true",
                        help="report the validation Dice of the training grid only (no rescoring on the native grid)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rows = compare(args.networks, args.seeds, args.budget_min, args.epochs, args.iterations_per_epoch, args.work_dir,
                   args.dataset_dir, native_eval=not args.skip_native_eval)
    result = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
                   + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "scored_on": "validation split (150 images of train/): " + ("the training grid during training only"
                                                                    if args.skip_native_eval else
                                                                    "training grid, and the native grid after"),
        "budget_min": args.budget_min,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations_per_epoch,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "comparison.md").write_text(markdown(rows, _budget_text(result)))
    print(markdown(rows, _budget_text(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
