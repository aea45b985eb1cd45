#!/usr/bin/env python
"""Slice classification figures of an LGG ``inference.json`` run: at p = 0.5 and at the Youden threshold.

Reads ``predictions.csv`` (``id, p0, p1`` per slice, written by the bundle's ``inference.json``) of the slices of
``--patients`` (or a split name of the bundle's ``configs/split.json``), takes each slice's label from its mask
(``medcnn.data.lgg.lgg_datalist``: mask not empty) and prints one JSON object: AUC, accuracy / sensitivity /
specificity / PPV / NPV at p = 0.5 and at the Youden threshold of these slices (which is chosen on them, so it is a
property of this data, not a threshold to carry over without a held-out check)::

    OMP_NUM_THREADS=1 python -m monai.bundle run --config_file configs/inference.json \\
        --output_dir /tmp/val_rule --test_patients "$@split['validation']" \\
        --split "$medcnn.data.lgg.load_split(@split_file)"
    python scripts/slice_scores_report.py --predictions /tmp/val_rule/predictions.csv --split validation
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from medcnn.data import resolve_data_dir
from medcnn.data.lgg import lgg_datalist, load_split
from medcnn.handlers.classification import youden_threshold
from medcnn.metrics import binary_classification_report

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lgg_tumour_localisation"


def slice_report(predictions: Path, patients: list[str], dataset_dir: str) -> dict:
    """The figures of one ``predictions.csv`` against the masks of ``patients``."""
    import numpy as np
    import tifffile

    probs = {row[0]: float(row[2]) for row in csv.reader(predictions.open())}
    items = lgg_datalist(dataset_dir, patients)
    missing = [i["id"] for i in items if i["id"] not in probs]
    if missing:
        raise SystemExit(f"{predictions}: no probability for {len(missing)} slices, e.g. {missing[:3]}")
    labels = [int(np.any(tifffile.imread(i["mask"]) > 0)) for i in items]
    scores = [probs[i["id"]] for i in items]
    youden = youden_threshold(labels, scores)
    keys = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "confusion_matrix")
    at_half = binary_classification_report(labels, scores, 0.5)
    at_youden = binary_classification_report(labels, scores, youden)
    return {"predictions": str(predictions), "n_slices": len(items), "n_tumour_slices": int(sum(labels)),
            "patients": patients, "at_p0.5": {k: at_half[k] for k in keys},
            "youden_threshold": youden, "at_youden": {k: at_youden[k] for k in keys if k != "auc"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=Path, required=True, nargs="+")
    parser.add_argument("--split", default="validation", help="a split of configs/split.json (train/validation/test)")
    parser.add_argument("--patients", nargs="*", default=None, help="patients instead of --split")
    parser.add_argument("--dataset_dir", default=None)
    args = parser.parse_args(argv)
    patients = args.patients or load_split(BUNDLE / "configs" / "split.json")[args.split]
    dataset_dir = args.dataset_dir or resolve_data_dir("lgg_flair_tiff", str(BUNDLE))
    print(json.dumps([slice_report(p, patients, dataset_dir) for p in args.predictions], indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
