"""`medcnn predict` on the held-out data of the slice-classifier bundles, scored like their model cards.

    OMP_NUM_THREADS=1 MEDCNN_DATA_DIR=../shared/data python scripts/predict_vs_card.py --out /tmp/predict_vs_card

- ``brats_tumour_localisation``: the held-out case's FLAIR and T1c as one 4D NIfTI; slice accuracy on the 119 slices
  of ``evaluate.json`` and CAM Dice on its 69 tumour slices (native 240 x 240 grid).
- ``lgg_tumour_localisation``: each test patient's slices as one multi-page TIFF, all in one call; accuracy on the 175
  pages, CAM Dice on the tumour pages (all of them, a missed page counting 0, and those called tumour).

``--only lgg_tumour_localisation`` runs one bundle. Prints one JSON object with the figures, the inference seconds
and the load average at the start and the end (the tests in
``tests/test_predict.py`` hold the same figures to the cards).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medcnn.cli import main as medcnn_main
from medcnn.data import brats_case_datalist, brats_slices, resolve_data_dir
from medcnn.data.lgg import lgg_datalist, load_split
from medcnn.data.tiff_pages import read_tiff_pages, write_tiff_pages

REPO = Path(__file__).resolve().parents[1]


def _scores(mask: np.ndarray, truth: np.ndarray, called: np.ndarray, has_tumour: np.ndarray, axis: int) -> dict:
    """Accuracy of ``called`` against ``has_tumour`` and per-slice Dice of ``mask`` on the tumour slices."""
    take = (lambda a, k: a[k]) if axis == 0 else (lambda a, k: a[:, :, k])
    dice = {int(k): float(2 * np.sum(take(mask, k) & take(truth, k)) / (take(mask, k).sum() + take(truth, k).sum()))
            for k in np.flatnonzero(has_tumour)}
    return {"correct": (called == has_tumour).tolist(), "dice": dice, "called": called}


def _predict(bundle: Path, inputs: list[Path], out: Path) -> list[dict]:
    if medcnn_main(["predict", "--bundle", str(bundle), "--input", *map(str, inputs), "--output", str(out),
                    "--quiet", "--no-report", "--threads", "1"]) != 0:
        raise SystemExit(f"medcnn predict failed for {bundle.name}")
    return [json.loads((out / p.name.split(".")[0] / f"{p.name.split('.')[0]}_summary.json").read_text())
            for p in inputs]


def brats(out: Path) -> dict:
    """The BraTS localiser on its held-out case as one 4D NIfTI."""
    bundle = REPO / "bundles" / "brats_tumour_localisation"
    card = json.loads((bundle / "docs" / "metrics_test.json").read_text())
    root = Path(resolve_data_dir("brats2015_deepmedic_subset", str(bundle)))
    case = root / card["test_cases"][0]
    flair, t1c = nib.load(case / "Flair_subtrMeanDivStd.nii.gz"), nib.load(case / "T1c_subtrMeanDivStd.nii.gz")
    src = out / "input" / "brats_case.nii.gz"
    src.parent.mkdir(parents=True)
    volume = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], -1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, flair.affine), src)
    summary = _predict(bundle, [src], out / "brats")[0]
    mask = np.asarray(nib.load(summary["outputs"]["mask_nifti"]).dataobj) > 0
    truth = np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj) > 0
    items = brats_slices(brats_case_datalist(root, card["test_cases"]), min_brain_fraction=0.1, drop_ambiguous=True,
                         normalise="brain_zscore")
    index = np.array([i["slice_index"] for i in items])
    label = np.array([int(i["label"]) for i in items]) == 1
    probs = np.array([s["class_probabilities"]["tumour present"] for s in summary["slices"]])
    s = _scores(mask[:, :, index], truth[:, :, index], probs[index] >= 0.5, label, axis=2)
    return {"slices": len(index), "accuracy": float(np.mean(s["correct"])), "cam_dice": float(np.mean(list(
        s["dice"].values()))), "card_accuracy": card["accuracy"], "card_cam_dice": card["cam_dice"],
        "tumour_volume_ml": summary["labels"]["tumour present"]["volume_ml"],
        "inference_seconds": summary["inference_seconds"], "n_volume_slices": len(probs)}


def lgg(out: Path) -> dict:
    """The LGG localiser on each test patient as one multi-page TIFF."""
    bundle = REPO / "bundles" / "lgg_tumour_localisation"
    card = json.loads((bundle / "docs" / "metrics_test.json").read_text())
    root = Path(resolve_data_dir("lgg_flair_tiff", str(bundle)))
    inputs, truths = [], []
    for patient in load_split(bundle / "configs" / "split.json")["test"]:
        items = lgg_datalist(root, [patient])
        truths.append(np.concatenate([read_tiff_pages(i["mask"]) for i in items]) > 0)
        inputs.append(write_tiff_pages(np.concatenate([read_tiff_pages(i["image"]) for i in items]),
                                       out / "input" / f"{patient}.tif"))
    correct, dice_all, dice_called, seconds = [], [], [], 0.0
    for summary, truth in zip(_predict(bundle, inputs, out / "lgg"), truths, strict=True):
        mask = np.asarray(nib.load(summary["outputs"]["mask_nifti"]).dataobj) > 0
        called = np.array([s["class_probabilities"]["tumour present"] for s in summary["slices"]]) >= 0.5
        s = _scores(mask, truth, called, truth.any(axis=(1, 2)), axis=0)
        correct += s["correct"]
        dice_all += list(s["dice"].values())
        dice_called += [v for k, v in s["dice"].items() if called[k]]
        seconds += summary["inference_seconds"]
    return {"slices": len(correct), "accuracy": float(np.mean(correct)), "cam_dice_all_tumour": float(
        np.mean(dice_all)), "cam_dice_called_tumour": float(np.mean(dice_called)), "n_called_tumour": len(dice_called),
        "n_tumour": len(dice_all), "card_accuracy": card["accuracy"], "card_cam_dice": card["cam_dice"],
        "inference_seconds": round(seconds, 3)}


def main() -> None:
    """Run both bundles and print the figures with the machine's load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder for the inputs and results")
    parser.add_argument("--only", nargs="+", choices=("brats_tumour_localisation", "lgg_tumour_localisation"),
                        default=("brats_tumour_localisation", "lgg_tumour_localisation"), help="run these bundles only")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True)  # never into an existing folder
    runs = {"brats_tumour_localisation": lambda: brats(out / "b"), "lgg_tumour_localisation": lambda: lgg(out / "l")}
    load = Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else None
    result = {name: runs[name]() for name in args.only}
    result["loadavg_at_start"] = load
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
