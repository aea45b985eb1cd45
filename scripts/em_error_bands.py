"""Where an EM membrane model's wrong pixels lie: on the one-pixel band along the reference membrane edges or not.

The ISBI reference draws membranes a few pixels wide; a model that finds every membrane but draws it one pixel
wider or narrower than the annotator loses pixel accuracy and membrane Dice all along every border. This script
runs the bundle's evaluation inferer (8-view ensemble around the sliding window, ``evaluate.json``) on a slice
split with a checkpoint and reports, per slice and overall, the share of wrong pixels inside the *edge band*
(pixels whose 3x3 neighbourhood holds both reference classes) and the pixel accuracy the model would have if
those were right. Default split: the validation slices, so the analysis never looks at the test slices::

    OMP_NUM_THREADS=2 python scripts/em_error_bands.py --ckpt bundles/em_membrane_segmentation/models/model.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from em_ensemble import BUNDLE, SPLITS, membrane_probabilities, shown_path
from scipy import ndimage as ndi


def edge_band(membrane: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood contains both membrane and cell in the reference ``membrane`` mask."""
    return ndi.binary_dilation(membrane) & ndi.binary_dilation(~membrane)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(BUNDLE / "models" / "model.pt"))
    ap.add_argument("--split", choices=SPLITS, default="val_slices")
    ap.add_argument("--dataset_dir", default=None, help="ISBI data folder (default: the bundle's resolution)")
    ap.add_argument("--out", default=None, help="JSON file for the figures (stdout only if omitted)")
    args = ap.parse_args(argv)

    rows, wrong_all, band_wrong_all, n_all = [], 0, 0, 0
    for index, prob, truth in membrane_probabilities(args.ckpt, args.split, args.dataset_dir):
        wrong, band = (prob > 0.5) != truth, edge_band(truth)
        n_wrong, n_band_wrong = int(wrong.sum()), int((wrong & band).sum())
        rows.append(
            {
                "slice": index,
                "wrong": float(wrong.mean()),
                "wrong_in_edge_band": n_band_wrong / max(n_wrong, 1),
                "edge_band_area": float(band.mean()),
            }
        )
        wrong_all += n_wrong
        band_wrong_all += n_band_wrong
        n_all += wrong.size
    result = {
        "checkpoint": shown_path(args.ckpt),
        "split": args.split,
        "pixel_accuracy": float(1 - wrong_all / n_all),
        "share_of_wrong_pixels_in_edge_band": float(band_wrong_all / max(wrong_all, 1)),
        "pixel_accuracy_if_edge_band_right": float(1 - (wrong_all - band_wrong_all) / n_all),
        "slices": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
