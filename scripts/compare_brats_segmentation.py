#!/usr/bin/env python
"""Compare the segmentation variants of bundles/brats_tumour_segmentation under one small, equal training budget.

Each variant (``--networks``, names of :mod:`medcnn.networks.segmentation`) is trained with the bundle's own
``train.json`` (only ``network_name``, ``max_epochs`` and the output folders overridden), then evaluated on the
held-out case with ``evaluate.json``. Writes ``<out>/comparison.json`` and ``<out>/comparison.md`` (a Markdown table
for the model card) with the test Dice, pixel accuracy, tumour precision/recall, parameters, epochs, best validation
Dice, wall time and the load average, so the table can be reproduced with::

    OMP_NUM_THREADS=1 python scripts/compare_brats_segmentation.py --max_epochs 10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from medcnn.bench import bundle_workflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_tumour_segmentation"

logger = logging.getLogger("compare_brats_segmentation")


def _run(configs: list[str], **override) -> None:
    wf = bundle_workflow(BUNDLE, configs, "train" if configs == ["train.json"] else "eval", **override)
    wf.initialize()
    wf.run()
    wf.finalize()


def compare(networks: list[str], max_epochs: int, work_dir: Path, dataset_dir: str | None) -> list[dict]:
    """Train + evaluate every network; one result row per network."""
    from medcnn.networks import build_segmentation_network

    rows = []
    for name in networks:
        out = work_dir / name
        out.mkdir(parents=True, exist_ok=True)
        common = {"network_name": name, "output_dir": str(out), "ckpt_dir": str(out),
                  "ckpt_path": str(out / "model.pt")}
        if dataset_dir:
            common["dataset_dir"] = dataset_dir
        load_before = os.getloadavg()
        start = time.perf_counter()
        _run(["train.json"], **common, **{"train#trainer#max_epochs": max_epochs})
        train_s = time.perf_counter() - start
        curves = json.loads((out / "curves.json").read_text())
        _run(["train.json", "evaluate.json"], **common)
        m = json.loads((out / "metrics.json").read_text())
        n_params = sum(p.numel() for p in build_segmentation_network(name, 2, 2, 2).parameters())
        val = curves.get("val_dice", [])
        n_train = int(curves.get("n_train_items", 0)) or None
        rows.append({
            "network": name,
            "parameters": n_params,
            "test_dice": m["dice"],
            "test_pixel_accuracy": m["pixel_accuracy"],
            "test_tumour_precision": m["tumour_precision"],
            "test_tumour_recall": m["tumour_recall"],
            "epochs": len(curves["epoch"]),
            "best_val_dice": max(val) if val else None,
            "best_val_epoch": (val.index(max(val)) + 1) if val else None,
            "train_wall_s": round(train_s, 1),
            "epoch_wall_s": round(curves["time_s"][-1] / len(curves["epoch"]), 1),
            "n_train_items": n_train,
            "load_average_1m_start": round(load_before[0], 2),
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        })
        logger.info("%s: %s", name, rows[-1])
    return rows


def markdown(rows: list[dict], max_epochs: int) -> str:
    lines = [
        "| network | parameters | test Dice | pixel accuracy | tumour precision | tumour recall "
        f"| epochs (max {max_epochs}) | best val Dice | train wall time | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['parameters'] / 1e6:.2f} M | {r['test_dice']:.3f} | {r['test_pixel_accuracy']:.4f} "
            f"| {r['test_tumour_precision']:.3f} | {r['test_tumour_recall']:.3f} | {r['epochs']} "
            f"| {r['best_val_dice']:.3f} (epoch {r['best_val_epoch']}) | {r['train_wall_s'] / 60:.1f} min "
            f"| {r['load_average_1m_start']:.1f}-{r['load_average_1m_end']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["unet", "segresnet", "flexible_unet"])
    parser.add_argument("--max_epochs", type=int, default=10)
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/medcnn_brats_compare"))
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs")
    parser.add_argument("--dataset_dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rows = compare(args.networks, args.max_epochs, args.work_dir, args.dataset_dir)
    result = {
        "command": f"OMP_NUM_THREADS=1 python scripts/compare_brats_segmentation.py --max_epochs {args.max_epochs}",
        "max_epochs": args.max_epochs,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "comparison.md").write_text(markdown(rows, args.max_epochs))
    print(markdown(rows, args.max_epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
