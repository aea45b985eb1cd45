#!/usr/bin/env python
"""Choose the COCO tumour bundle's post-processing on the validation split (never on the test split).

The labels of the Roboflow export are axis-aligned boxes, one per image (SOURCE.md). Rules are scored with
``evaluate.json`` on the 150 validation images of the fixed split, with the weights in ``--ckpt_dir``: the plain
argmax mask, only its largest connected region (``largest_region_only``), that region with its holes filled
(``fill_holes``), every connected region replaced by its filled bounding box (``box_postprocessing``), and only the
largest region, as a box. Fitting a box is legitimate here because the reference itself is a box; the choice is
made on validation only. The best of these is then scored once more with test-time augmentation over the 8
rotations / mirrors of the slice (``dihedral_tta``: the slices of the export are rotated arbitrarily and training
augments with flips and 90-degree rotations), and TTA is kept only if it raises validation Dice. Writes
``<out>/postprocessing_validation.json``; the bundle's ``evaluate.json`` and ``inference.json`` defaults are then
set to the winner by hand (the JSON records which; ``tests/test_bundle_coco_segmentation.py`` checks them)::

    OMP_NUM_THREADS=1 python scripts/select_coco_postprocessing.py --ckpt_dir bundles/coco_tumour_segmentation/models
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "coco_tumour_segmentation"

RULE_KEYS = ("box_postprocessing", "largest_region_only", "fill_holes", "dihedral_tta")
RULES = {
    "argmax": {"box_postprocessing": False, "largest_region_only": False, "fill_holes": False},
    "largest": {"box_postprocessing": False, "largest_region_only": True, "fill_holes": False},
    "largest_filled": {"box_postprocessing": False, "largest_region_only": True, "fill_holes": True},
    "boxes": {"box_postprocessing": True, "largest_region_only": False, "fill_holes": False},
    "largest_box": {"box_postprocessing": True, "largest_region_only": True, "fill_holes": False},
}
FIGURES = ("dice", "pixel_accuracy", "tumour_precision", "tumour_recall", "image_dice_median", "image_dice_q25",
           "image_dice_mean", "n_items")


def main(argv: list[str] | None = None) -> int:
    from monai.bundle import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", default=str(BUNDLE / "models"))
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/medcnn_coco_postprocessing"))
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    def score(name: str, rule: dict) -> dict:
        out = args.work_dir / name
        start = time.perf_counter()
        run(config_file=[str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")],
            meta_file=str(BUNDLE / "configs" / "metadata.json"), logging_file=str(BUNDLE / "configs" / "logging.conf"),
            bundle_root=str(BUNDLE), ckpt_path=str(Path(args.ckpt_dir) / "model.pt"), output_dir=str(out),
            report_max_cases=0, eval_items="$@split['validation']", **rule)
        m = json.loads((out / "metrics.json").read_text())
        return {**rule, **{k: m[k] for k in FIGURES}, "wall_s": round(time.perf_counter() - start, 1),
                "load_average_1m": os.getloadavg()[0]}

    rows = {name: score(name, {**rule, "dihedral_tta": False}) for name, rule in RULES.items()}
    best = max(rows, key=lambda k: rows[k]["dice"])
    tta = f"{best}_tta"
    rows[tta] = score(tta, {**{k: rows[best][k] for k in RULE_KEYS}, "dihedral_tta": True})
    best = max((best, tta), key=lambda k: rows[k]["dice"])
    result = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
                         "scripts/select_coco_postprocessing.py --ckpt_dir "
                         f"{args.ckpt_dir}", "split": "validation (150 images of train/)", "chosen": best,
              "rule": "highest global validation Dice; then the same with dihedral TTA, kept if higher", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "postprocessing_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
