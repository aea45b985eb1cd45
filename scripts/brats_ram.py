"""Peak RAM of a BraTS bundle's training data, eager slice lists vs the MONAI volume pipeline.

Writes ``--n_cases`` synthetic cases of BraTS shape (240 x 240 x 155; FLAIR, T1c, label, brain mask: the files the
bundle reads) to ``--work_dir``, then, each in a fresh process for several case counts, builds the training and
validation datasets of a bundle config, draws one training epoch and records the process's peak resident set
size (``ru_maxrss``). The per-case slope of a least-squares line through the counts extrapolates to a 369-case
BraTS 2020 training. ``old`` is the train.json before issue 12 (slice lists built in the config by
``medcnn.data.brats_slices``, read from git), ``new`` the current one (CacheDataset of volumes, slice sampler).
``--bundle`` picks the segmentation bundle (default) or the localiser (``brats_tumour_localisation``: half-slice
volumes cached, validation slices iterated from cached volumes; ``--old_ref`` names the git revision of its old
train.json).

    OMP_NUM_THREADS=1 python scripts/brats_ram.py --work_dir /tmp/brats_ram --counts 5 10 20 \
        --out bundles/brats_tumour_segmentation/docs/ram.json
    OMP_NUM_THREADS=1 python scripts/brats_ram.py --bundle brats_tumour_localisation --old_ref 74a41f5 \
        --work_dir /tmp/brats_ram --counts 5 10 20 --out bundles/brats_tumour_localisation/docs/ram.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("brats_tumour_segmentation", "brats_tumour_localisation")
FILE_NAMES = {"flair": "flair.nii", "t1c": "t1c.nii", "label": "seg.nii", "brainmask": "brainmask.nii"}
SHAPE = (240, 240, 155)
BRATS2020_TRAINING_CASES = 369


def write_cases(root: Path, n: int) -> list[str]:
    """``n`` synthetic cases: an ellipsoid brain on about 130 of 155 slices, a tumour on 60 of them, noise inside."""
    import nibabel as nib

    names = [f"synth{i:03d}" for i in range(n)]
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s, dtype=np.float32) for s in (SHAPE[2], SHAPE[0], SHAPE[1])),
                             indexing="ij")
    brain = ((yy / 0.7) ** 2 + (xx / 0.6) ** 2 + (zz / 0.85) ** 2 <= 1).transpose(1, 2, 0)  # (H, W, D)
    tumour = (((yy - 0.2) / 0.25) ** 2 + ((xx + 0.1) / 0.2) ** 2 + (zz / 0.4) ** 2 <= 1).transpose(1, 2, 0)
    rng = np.random.default_rng(0)
    for name in names:
        folder = root / name
        if (folder / FILE_NAMES["brainmask"]).is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for key, bg in (("flair", -4.0), ("t1c", -5.0)):
            img = np.where(brain, rng.normal(0, 1, SHAPE).astype(np.float32) + 3 * tumour, bg).astype(np.float32)
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(folder / FILE_NAMES[key]))
        nib.save(nib.Nifti1Image((2 * (tumour & brain)).astype(np.uint8), np.eye(4)), str(folder / FILE_NAMES["label"]))
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), np.eye(4)), str(folder / FILE_NAMES["brainmask"]))
    return names


def measure(pipeline: str, root: Path, cases: list[str], draw_epoch: bool = True,
            bundle: str = BUNDLES[0], old_ref: str = "main") -> dict:
    """In this process: build the ``pipeline`` datasets on ``cases`` (their caches), optionally draw one training
    epoch, return the peak RSS."""
    import torch
    from monai.bundle import ConfigParser

    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parser = ConfigParser()
    if pipeline == "old":
        text = subprocess.run(["git", "show", f"{old_ref}:bundles/{bundle}/configs/train.json"], cwd=REPO,
                              check=True, capture_output=True, text=True).stdout
        parser.read_config(json.loads(text))
        parser["train_pool"] = parser["train_pool"].replace(
            "brats_case_datalist(@dataset_dir, @train_cases)",
            f"brats_case_datalist(@dataset_dir, @train_cases, file_names={FILE_NAMES!r})")
    else:
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser["file_names"] = FILE_NAMES
        parser["cache_rate"] = float(os.environ.get("BRATS_RAM_CACHE_RATE", parser["cache_rate"]))
    parser.update({"bundle_root": str(REPO / "bundles" / bundle), "dataset_dir": str(root), "train_cases": cases,
                   "output_dir": "/tmp"})
    start = time.time()
    val = parser.get_parsed_content("validate#dataset")
    loader = parser.get_parsed_content("train#dataloader")
    n_train = sum(int(batch["image"].shape[0]) for batch in loader) if draw_epoch else None
    cache_rate = parser["cache_rate"] if pipeline == "new" else None
    n_val = len(val) if hasattr(val, "__len__") else sum(1 for _ in val)  # GridPatchDataset: slices, iterated
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"bundle": bundle, "pipeline": pipeline, "cache_rate": cache_rate, "n_cases": len(cases),
            "peak_rss_mb": peak, "rss_after_imports_mb": base, "train_slices_one_epoch": n_train,
            "n_validation_items": n_val, "seconds": round(time.time() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work_dir", default="/tmp/brats_ram")
    ap.add_argument("--counts", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--out", default=None)
    ap.add_argument("--pipelines", nargs="+", default=["old", "new"], choices=["old", "new"])
    ap.add_argument("--bundle", default=BUNDLES[0], choices=BUNDLES)
    ap.add_argument("--old_ref", default="main", help="git revision whose train.json is the 'old' pipeline")
    ap.add_argument("--no_epoch", action="store_true", help="only build the cached datasets (no training epoch)")
    ap.add_argument("--_measure", nargs=2, metavar=("PIPELINE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.work_dir)
    if args._measure:
        pipeline, n = args._measure[0], int(args._measure[1])
        print(json.dumps(measure(pipeline, root, [f"synth{i:03d}" for i in range(n)], not args.no_epoch, args.bundle,
                                 args.old_ref)))
        return
    write_cases(root, max(args.counts))
    rows = []
    for pipeline in args.pipelines:
        for n in args.counts:
            cmd = [sys.executable, __file__, "--work_dir", str(root), "--bundle", args.bundle,
                   "--old_ref", args.old_ref, "--_measure", pipeline, str(n)]
            out = subprocess.run(cmd + (["--no_epoch"] if args.no_epoch else []), check=True, capture_output=True,
                                 text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    summary = {}
    for pipeline in args.pipelines:
        pts = [(r["n_cases"], r["peak_rss_mb"]) for r in rows if r["pipeline"] == pipeline]
        slope, intercept = np.polyfit(*zip(*pts, strict=True), 1)
        summary[pipeline] = {"mb_per_case": round(float(slope), 1), "intercept_mb": round(float(intercept), 1),
                             f"extrapolated_gb_{BRATS2020_TRAINING_CASES}_cases": round(
                                 float(intercept + slope * BRATS2020_TRAINING_CASES) / 1024, 1)}
    result = {"bundle": args.bundle, "shape": SHAPE, "files": FILE_NAMES, "measurements": rows, "fit": summary,
              "method": "peak RSS (ru_maxrss) of a fresh process that builds train#dataloader and validate#dataset "
                        "of the bundle config (their caches) and " + ("no training epoch" if args.no_epoch else
                        "draws one training epoch") + "; least-squares line over the case counts",
              "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
