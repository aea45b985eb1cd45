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
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "em_membrane_segmentation"


def edge_band(membrane: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood contains both membrane and cell in the reference ``membrane`` mask."""
    return ndi.binary_dilation(membrane) & ndi.binary_dilation(~membrane)


def _shown(path: str) -> str:
    """The checkpoint path relative to the repository when it lies inside it (stable across checkouts)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> dict:
    from monai.bundle import ConfigParser

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(BUNDLE / "models" / "model.pt"))
    ap.add_argument("--split", choices=["val_slices", "test_slices", "train_slices"], default="val_slices")
    ap.add_argument("--dataset_dir", default=None, help="ISBI data folder (default: the bundle's resolution)")
    ap.add_argument("--out", default=None, help="JSON file for the figures (stdout only if omitted)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        p = ConfigParser()
        p.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")])
        p["bundle_root"], p["output_dir"] = str(BUNDLE), tmp
        if args.dataset_dir:
            p["dataset_dir"] = args.dataset_dir
        p["validate#dataset#data"] = f"$medcnn.data.expand_stack_datalist(@stacks, @{args.split})"
        for _ in p.get_parsed_content("initialize"):
            pass
        net = p.get_parsed_content("network")
        net.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True))
        net.eval()
        inferer, dataset = p.get_parsed_content("validate#inferer"), p.get_parsed_content("validate#dataset")
        rows, wrong_all, band_wrong_all, n_all = [], 0, 0, 0
        with torch.no_grad():
            for item in dataset:
                truth = item["label"][0].numpy() > 0.5
                pred = inferer(item["image"][None].as_tensor(), net).argmax(1)[0].numpy() == 1
                wrong, band = pred != truth, edge_band(truth)
                n_wrong, n_band_wrong = int(wrong.sum()), int((wrong & band).sum())
                rows.append(
                    {
                        "slice": int(item["slice"]),
                        "wrong": float(wrong.mean()),
                        "wrong_in_edge_band": n_band_wrong / max(n_wrong, 1),
                        "edge_band_area": float(band.mean()),
                    }
                )
                wrong_all += n_wrong
                band_wrong_all += n_band_wrong
                n_all += wrong.size
    result = {
        "checkpoint": _shown(args.ckpt),
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
