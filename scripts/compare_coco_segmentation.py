#!/usr/bin/env python
"""Compare UNet, a ResNeXt50-encoder U-Net and ResUNet++ on the COCO brain-tumour bundle under one equal budget.

The budget is equal wall-clock training time per network (``--budget_min``), the question a CPU user asks ("which
network is best after N minutes of training on this machine?"); the number of training images each network saw in
that time is recorded next to its figures. Every variant is trained with the bundle's own ``train.json`` (only
``network_name``, the time limit, the epoch length, the validation subset and the output folders overridden),
keeps its best checkpoint by validation Dice, and is scored once on the full test split (valid/, 429 images) with
``evaluate.json``. Writes ``<out>/comparison.json`` and ``<out>/comparison.md`` (the model card's table)::

    OMP_NUM_THREADS=1 python scripts/compare_coco_segmentation.py --budget_min 6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from medcnn.bench import bundle_workflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "coco_tumour_segmentation"

logger = logging.getLogger("compare_coco_segmentation")


def _workflow(configs: list[str], workflow_type: str, **override):
    wf = bundle_workflow(BUNDLE, configs, workflow_type, **override)
    wf.initialize()
    wf.run()
    return wf


def compare(networks: list[str], budget_min: float, iterations_per_epoch: int, n_val: int, work_dir: Path,
            dataset_dir: str | None) -> list[dict]:
    """Train + evaluate every network under the same time budget; one result row per network."""
    rows = []
    for name in networks:
        out = work_dir / name
        out.mkdir(parents=True, exist_ok=True)
        common = {"network_name": name, "output_dir": str(out), "ckpt_dir": str(out / "models")}
        if dataset_dir:
            common["dataset_dir"] = dataset_dir
        load_before = os.getloadavg()
        start = time.perf_counter()
        wf = _workflow(["train.json"], "train", **common, max_epochs=1000, time_limit_s=budget_min * 60,
                       **{"train#trainer#epoch_length": iterations_per_epoch,
                          "validate#dataset#data": f"$@split['validation'][:{n_val}]"})
        train_s = time.perf_counter() - start
        trainer = wf.parser.get_parsed_content("train#trainer")
        batch = int(wf.parser.get_parsed_content("batch_size"))
        n_params = sum(p.numel() for p in wf.parser.get_parsed_content("network").parameters())
        wf.finalize()
        curves = json.loads((out / "curves.json").read_text())
        eval_start = time.perf_counter()
        _workflow(["train.json", "evaluate.json"], "eval", **common, ckpt_path=str(out / "models" / "model.pt"),
                  report_max_cases=0)
        eval_s = time.perf_counter() - eval_start
        m = json.loads((out / "metrics.json").read_text())
        val = curves.get("val_dice", [])
        rows.append({
            "network": name,
            "parameters": n_params,
            "test_dice": m["dice"],
            "test_image_dice_median": m["image_dice_median"],
            "test_image_dice_q25": m["image_dice_q25"],
            "test_image_dice_q75": m["image_dice_q75"],
            "test_pixel_accuracy": m["pixel_accuracy"],
            "test_tumour_precision": m["tumour_precision"],
            "test_tumour_recall": m["tumour_recall"],
            "n_test_images": m["n_items"],
            "train_images_seen": int(trainer.state.iteration) * batch,
            "best_val_dice": max(val) if val else None,
            "validations": len(val),
            "train_wall_s": round(train_s, 1),
            "eval_wall_s": round(eval_s, 1),
            "load_average_1m_start": round(load_before[0], 2),
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        })
        logger.info("%s: %s", name, rows[-1])
    return rows


def _fmt(value, digits: int = 3) -> str:
    """A figure for the table; undefined ones (e.g. precision when nothing is predicted) as 'n/a'."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(rows: list[dict], budget_min: float) -> str:
    lines = [
        "| network | parameters | test Dice (global) | per-image Dice median [IQR] | pixel accuracy "
        f"| tumour precision | tumour recall | training images seen in {budget_min:g} min | best val Dice | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['parameters'] / 1e6:.2f} M | {_fmt(r['test_dice'])} "
            f"| {_fmt(r['test_image_dice_median'])} "
            f"[{_fmt(r['test_image_dice_q25'])}, {_fmt(r['test_image_dice_q75'])}] "
            f"| {_fmt(r['test_pixel_accuracy'], 4)} | {_fmt(r['test_tumour_precision'])} "
            f"| {_fmt(r['test_tumour_recall'])} | {r['train_images_seen']} | {_fmt(r['best_val_dice'])} "
            f"| {r['load_average_1m_start']:.1f}-{r['load_average_1m_end']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["unet", "resnext_unet", "resunetpp"])
    parser.add_argument("--budget_min", type=float, default=6.0, help="training wall time per network (minutes)")
    parser.add_argument("--iterations_per_epoch", type=int, default=10, help="validate every this many batches")
    parser.add_argument("--n_val", type=int, default=60, help="validation images used for checkpoint selection")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/medcnn_coco_compare"))
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--table_only", action="store_true", help="rewrite comparison.md from comparison.json")
    args = parser.parse_args(argv)
    if args.table_only:
        saved = json.loads((args.out / "comparison.json").read_text())
        (args.out / "comparison.md").write_text(markdown(saved["rows"], saved["budget_min"]))
        print(markdown(saved["rows"], saved["budget_min"]))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rows = compare(args.networks, args.budget_min, args.iterations_per_epoch, args.n_val, args.work_dir,
                   args.dataset_dir)
    result = {
        "command": "OMP_NUM_THREADS=1 python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "budget_min": args.budget_min,
        "iterations_per_epoch": args.iterations_per_epoch,
        "n_val": args.n_val,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "comparison.md").write_text(markdown(rows, args.budget_min))
    print(markdown(rows, args.budget_min))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
