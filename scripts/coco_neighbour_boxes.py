#!/usr/bin/env python
"""How well do the box labels of neighbouring slices of one scan agree? A reference point for the COCO tumour Dice.

The Roboflow export keeps the original running number in every file name (``<n>_jpg.rf.<hash>.jpg``), and images
``n`` and ``n + 1`` are often adjacent slices of one MRI scan. This script pairs every two images whose numbers
differ by one and whose 32 x 32 grey thumbnails correlate above ``--min_correlation`` (the same scan, a
neighbouring slice), and reports the Dice between their two box masks on the 640 x 640 grid: how much a tumour box
changes from one slice to the next (anatomy plus the annotator's hand). It also counts the test images (valid/)
with such a neighbour in train/, i.e. how far the split leaks by scan. Writes JSON to ``--out``::

    python scripts/coco_neighbour_boxes.py --out bundles/coco_tumour_segmentation/docs/neighbour_boxes.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from medcnn.data import resolve_data_dir


def box_mask(boxes: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """COCO ``[x, y, w, h]`` boxes -> a filled boolean mask ``(H, W)``."""
    m = np.zeros(size, bool)
    for x, y, w, h in boxes:
        m[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = True
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--min_correlation", type=float, default=0.95)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    bundle = Path(__file__).resolve().parents[1] / "bundles" / "coco_tumour_segmentation"
    root = Path(args.dataset_dir) if args.dataset_dir else Path(resolve_data_dir("coco_brain_tumour", bundle))
    items = []
    for part in ("train", "valid"):
        coco = json.loads((root / part / "_annotations.coco.json").read_text())
        boxes: dict[int, list] = {}
        for a in coco["annotations"]:
            boxes.setdefault(a["image_id"], []).append(a["bbox"])
        for img in coco["images"]:
            if img["id"] not in boxes:
                continue  # label missing (SOURCE.md), not a negative: nothing to compare
            grey = Image.open(root / part / img["file_name"]).convert("L")
            thumb = np.asarray(grey.resize((32, 32), Image.BILINEAR), np.float32).ravel()
            items.append({"part": part, "file": img["file_name"], "n": int(re.match(r"(\d+)_", img["file_name"])[1]),
                          "size": (img["height"], img["width"]), "boxes": boxes[img["id"]],
                          "thumb": (thumb - thumb.mean()) / (thumb.std() * np.sqrt(thumb.size) + 1e-6)})
    by_number: dict[int, list] = {}
    for it in items:
        by_number.setdefault(it["n"], []).append(it)
    pairs = []
    for it in items:
        for other in by_number.get(it["n"] + 1, []):
            corr = float(it["thumb"] @ other["thumb"])
            if corr < args.min_correlation or it["size"] != other["size"]:
                continue
            a, b = box_mask(it["boxes"], it["size"]), box_mask(other["boxes"], other["size"])
            pairs.append({"a": f"{it['part']}/{it['file']}", "b": f"{other['part']}/{other['file']}",
                          "thumbnail_correlation": round(corr, 4),
                          "box_dice": round(float(2 * (a & b).sum() / (a.sum() + b.sum())), 4)})
    dice = [p["box_dice"] for p in pairs]
    q = statistics.quantiles(dice, n=4) if len(dice) > 1 else [float("nan")] * 3
    test_with_train_neighbour = {p[k] for p in pairs for k in ("a", "b")
                                 if p[k].startswith("valid/") and (p["a"].startswith("train/")
                                                                   or p["b"].startswith("train/"))}
    result = {
        "command": "python scripts/coco_neighbour_boxes.py" + (f" --min_correlation {args.min_correlation}"
                                                             if args.min_correlation != 0.95 else ""),
        "pairs": len(pairs), "box_dice_median": q[1], "box_dice_q25": q[0], "box_dice_q75": q[2],
        "box_dice_mean": statistics.fmean(dice) if dice else None,
        "box_dice_below_0.5": sum(d < 0.5 for d in dice),
        "test_images_with_a_train_neighbour": len(test_with_train_neighbour),
        "n_test_images": sum(it["part"] == "valid" for it in items),
        "rows": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
