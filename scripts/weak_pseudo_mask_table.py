"""Pseudo-mask quality of a bundle's weak -> dense path: choose the refinement on validation images, then report
the Dice of the pseudo-masks of the training images against their true masks (read here only, for this table;
the pipeline never reads them), before and after each refinement step, with the throughput.

    OMP_NUM_THREADS=1 python scripts/weak_pseudo_mask_table.py --dims 2 --select \
        --out bundles/synthetic_localisation/docs/weak_pseudo_masks_2d.json
    OMP_NUM_THREADS=1 MEDCNN_DATA_DIR=... python scripts/weak_pseudo_mask_table.py --bundle brats_tumour_localisation \
        --select --out bundles/brats_tumour_localisation/docs/weak_pseudo_masks.json
    OMP_NUM_THREADS=1 MEDCNN_DATA_DIR=... python scripts/weak_pseudo_mask_table.py --bundle lgg_tumour_localisation \
        --select --out bundles/lgg_tumour_localisation/docs/weak_pseudo_masks.json

``--out_of_fold <run>`` (LGG) scores the training patients' pseudo-masks twice: with the committed classifier and
with, for each patient, the model of the patient-level CV fold that held it out (``scripts/cv_classifier.py --out
<cv> --recipe <name>=...`` writes ``<cv>/<name>/fold*/{fold.json, model.pt}``): whether the committed classifier's
CAM is worse on the patients it was trained on than on patients it never fitted.

``--from_segmenter <round-1 output_dir>`` (LGG) makes the table for a second round: the pseudo-masks come from the
segmenter that round trained (``configs/weak_pseudo_masks_from_segmenter.json``), and ``--select`` scores the
refinement candidates with and without the largest component on the validation images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from medcnn.weak import compute_pseudo_masks, load_classifier, pseudo_mask_quality, select_refinement

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
#: BraTS slice items of the training or validation blocks, with their whole-tumour mask (``mask``) and slice label
#: (``label``, mask not empty) on the classifier's grid, read through the bundle's volume pipeline
_BRATS_ITEMS = (
    "$monai.data.GridPatchDataset(monai.data.Dataset(@train_datalist, monai.transforms.Compose(@volume_transforms + "
    "[medcnn.transforms.SliceBlocksd(['image', 'label'], **@validation_blocks, validation={val})])), "
    "patch_iter=medcnn.transforms.SliceIterd(['image', 'label'], id_format='{{case}}_slice{{slice_index:03d}}'), "
    "transform=monai.transforms.Compose([monai.transforms.CopyItemsd('label', names='mask'), "
    "medcnn.transforms.MaskPresenced('mask', label_key='label'), "
    "monai.transforms.CenterSpatialCropd(['image', 'mask'], roi_size=@crop_size), "
    "monai.transforms.Resized(['image', 'mask'], spatial_size=@spatial_size, mode=['area', 'nearest'])]), "
    "with_coordinates=False)"
)
#: LGG slices of the training or validation patients with their FLAIR-abnormality mask (``mask``) and slice label
#: (``label``, mask not empty) on the classifier's grid, read through the classifier's load + resize transforms
_LGG_ITEMS = ("$monai.data.Dataset(medcnn.data.lgg.lgg_datalist(@dataset_dir, @{patients}), "
              "monai.transforms.Compose(@load_transforms + @resize_transforms))")
#: per bundle: the config id (or expression) of the validation items, of the training items with their masks
#: (None: ``pseudo_mask_items``), and of the transform that brings items (image + mask) to the classifier's grid
#: (None: items are already on it)
BUNDLE_ITEMS = {
    "synthetic_localisation": ("validate#dataset#data", None, None),
    "brats_tumour_localisation": (_BRATS_ITEMS.format(val=True), _BRATS_ITEMS.format(val=False), None),
    "lgg_tumour_localisation": (_LGG_ITEMS.format(patients="validation_patients"),
                                _LGG_ITEMS.format(patients="train_patients"), None),
}

def _crf(spatial: float, intensity: float, weight: float, image_sigma: float = 0.0) -> list[dict]:
    return [{"name": "dense_crf", "spatial_sigma": spatial, "intensity_sigma": intensity,
             "appearance_weight": weight, "image_sigma": image_sigma}]


#: CRF candidates tried on validation images, per dimensionality. The ignore band does not change a mask: it is
#: scored by the accuracy of the pixels it keeps, and its width is fixed in the bundle config. A 3D pixel has many
#: more neighbours within a kernel, so 3D needs narrower / weaker kernels for the same smoothing.
CRF_CANDIDATES = {
    2: {"raw CAM": [], "crf s3 i0.5 w3": _crf(3, 0.5, 3), "crf s5 i0.5 w3": _crf(5, 0.5, 3),
        "crf s5 i1 w3": _crf(5, 1, 3), "crf s8 i0.5 w5": _crf(8, 0.5, 5),
        "crf s5 i0.5 w3 c0.6": [{**_crf(5, 0.5, 3)[0], "confidence": 0.6}],
        "crf s12 i0.5 w5": _crf(12, 0.5, 5), "crf s8 i0.5 w8": _crf(8, 0.5, 8)},
    3: {"raw CAM": [], "crf s1 i0.5 w1": _crf(1, 0.5, 1), "crf s1.5 i0.5 w1": _crf(1.5, 0.5, 1),
        "crf s2 i0.5 w1": _crf(2, 0.5, 1), "crf s1.5 i0.5 w2": _crf(1.5, 0.5, 2),
        "crf s1.5 i0.5 w3": _crf(1.5, 0.5, 3), "crf s2 i0.5 w2": _crf(2, 0.5, 2),
        "crf s2 i0.5 w1 smooth1": _crf(2, 0.5, 1, 1.0), "crf s3 i0.5 w3": _crf(3, 0.5, 3)},
}


def _out_of_fold(cv_dir: Path, make_network, committed, train: list, rule, stages: dict, options=None) -> dict:
    """Per stage, the Dice of the training pseudo-masks made by the committed classifier and by the CV fold model
    that held each patient out (same items, same rule and refinement), overall and per fold; ``make_network()``
    returns a fresh classifier definition for the fold weights; ``options``: as the bundle's pseudo-mask step."""
    folds = sorted(f for f in cv_dir.glob("fold*") if (f / "fold.json").is_file() and (f / "model.pt").is_file())
    if not folds:
        raise FileNotFoundError(f"--out_of_fold {cv_dir}: no fold*/fold.json with a model.pt")
    if any("patient" not in d for d in train):
        raise ValueError("--out_of_fold needs training items with a 'patient' key (the LGG bundle)")
    records: dict[str, dict[str, list]] = {s: {"out_of_fold": [], "committed": []} for s in stages}
    masks, per_fold, covered = [], {}, set()
    for fold in folds:
        held = set(json.loads((fold / "fold.json").read_text())["heldout_patients"])
        items = [d for d in train if d["patient"] in held]
        if not items:
            continue
        covered |= {d["patient"] for d in items}
        fold_net = load_classifier(make_network(), fold / "model.pt")
        fold_masks = [d["mask"] for d in items]
        masks += fold_masks
        per_fold[fold.name] = {"patients": sorted({d["patient"] for d in items})}
        for stage, steps in stages.items():
            for who, net in (("out_of_fold", fold_net), ("committed", committed)):
                rec = list(compute_pseudo_masks(net, items, rule, steps, **(options or {})))
                records[stage][who] += rec
                per_fold[fold.name][f"{stage} | {who}"] = pseudo_mask_quality(rec, fold_masks)["dice"]
        logging.info("%s: %s", fold.name, {k: round(v, 4) for k, v in per_fold[fold.name].items() if k != "patients"})
    missing = sorted({d["patient"] for d in train} - covered)
    if missing:
        raise ValueError(f"--out_of_fold {cv_dir}: no fold holds out the training patients {missing}")
    overall = {s: {who: pseudo_mask_quality(r, masks) for who, r in by.items()} for s, by in records.items()}
    for s, by in overall.items():
        logging.info("%s: out-of-fold Dice %.4f, committed %.4f", s, by["out_of_fold"]["dice"], by["committed"]["dice"])
    return {"cv_dir": str(cv_dir), "overall": overall, "folds": per_fold}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", choices=sorted(BUNDLE_ITEMS), default="synthetic_localisation")
    ap.add_argument("--dims", type=int, choices=(2, 3), default=2)
    ap.add_argument("--out", required=True, help="JSON file of the table (a .md table is written next to it)")
    ap.add_argument("--select", action="store_true", help="also score the CRF candidates on validation images")
    ap.add_argument("--select_only", action="store_true", help="only score the candidates (no training table)")
    ap.add_argument("--out_of_fold", type=Path, default=None,
                    help="a cv_classifier.py recipe folder (fold*/fold.json + model.pt): also score the training "
                         "patients' pseudo-masks made by the fold model that held each patient out")
    ap.add_argument("--from_segmenter", type=Path, default=None,
                    help="the --output_dir of a weak -> dense run: pseudo-masks of its segmenter (a second round)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    root = BUNDLES / args.bundle
    files = [str(root / "configs" / "train.json")] + ([str(root / "configs" / "3d.json")] if args.dims == 3 else [])
    files.append(str(root / "configs" / "weak_pseudo_masks.json"))
    if args.from_segmenter is not None:
        files += [str(root / "configs" / f)
                  for f in ("weak_train_segmenter.json", "weak_pseudo_masks_from_segmenter.json")]
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(root)
    if args.from_segmenter is not None:
        parser["previous_round"] = str(args.from_segmenter)
        parser["output_dir"] = str(Path(args.out).resolve().parent)
    # the generator options the bundle's pseudo-mask step uses (bundles without them: the library defaults)
    options = {k: parser.get_parsed_content(f"pseudo_masks#{k}") for k in ("heatmap", "ignore_empty_positives")
               if k in parser["pseudo_masks"]}
    val_id, train_id, transform_id = BUNDLE_ITEMS[args.bundle]
    parser["weak_table_val_items"] = val_id if val_id.startswith("$") else f"@{val_id}"
    parser["weak_table_train_items"] = train_id or "@pseudo_mask_items"
    to_grid = Compose(parser.get_parsed_content(transform_id)) if transform_id else (lambda d: d)
    parser["device"] = "$torch.device('cpu')"
    net = load_classifier(parser.get_parsed_content("network_def"), parser.get_parsed_content("classifier_path"))
    rule = parser.get_parsed_content("cam_rule")
    chain = parser.get_parsed_content("refinement")
    result: dict = {"dims": args.dims, "rule": rule.to_dict(), "refinement": chain, **options,
                    "load_average": os.getloadavg(), "threads": torch.get_num_threads()}
    if args.select:
        val = [to_grid(d) for d in parser.get_parsed_content("weak_table_val_items")]
        candidates = {**CRF_CANDIDATES[args.dims], "bundle config": chain}
        result["validation"] = select_refinement(net, val, rule, candidates, **options)
        if args.from_segmenter is not None:  # the segmenter's rule has one more choice: the largest component
            other = dataclasses.replace(rule, largest_component=not rule.largest_component)
            result["validation_largest_component_" + str(other.largest_component).lower()] = select_refinement(
                net, val, other, candidates, **options)
    if args.select_only:
        Path(args.out).write_text(json.dumps(result, indent=2))
        return
    train = [to_grid(d) for d in parser.get_parsed_content("weak_table_train_items")]
    stages = {"raw CAM": []}
    for i in range(len(chain)):
        stages[" + ".join(s["name"] for s in chain[: i + 1])] = chain[: i + 1]
    rows = []
    for name, steps in stages.items():
        t0 = time.perf_counter()
        records = list(compute_pseudo_masks(net, train, rule, steps, **options))
        seconds = time.perf_counter() - t0
        row = {"stage": name, **pseudo_mask_quality(records, [d["mask"] for d in train]),
               "images": len(records), "seconds": round(seconds, 2),
               "images_per_second": round(len(records) / seconds, 2)}
        rows.append(row)
        logging.info("%s: training pseudo-mask Dice %.4f, kept-pixel accuracy %.4f, ignored %.1f%%, %.1f images/s",
                     name, row["dice"], row["kept_accuracy"], 100 * row["ignored_fraction"], row["images_per_second"])
    result["training"] = rows
    if args.out_of_fold is not None:
        result["out_of_fold"] = _out_of_fold(
            args.out_of_fold, lambda: parser.get_parsed_content("network_def", lazy=False), net, train, rule, stages,
            options)
    result["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2))
    md = ["| pseudo-masks (training images) | Dice | accuracy of the used pixels | ignored pixels | images/s |",
          "|---|---|---|---|---|"]
    md += [f"| {r['stage']} | {r['dice']:.4f} | {r['kept_accuracy']:.4f} | {100 * r['ignored_fraction']:.1f}% | "
           f"{r['images_per_second']:.1f} |" for r in rows]
    if "validation" in result:
        md += ["", "| refinement (validation images) | Dice | accuracy of the used pixels | ignored pixels |",
               "|---|---|---|---|"]
        md += [f"| {r['name']} | {r['dice']:.4f} | {r['kept_accuracy']:.4f} | {100 * r['ignored_fraction']:.1f}% |"
               for r in result["validation"]["table"]]
    if "out_of_fold" in result:
        md += ["", "| pseudo-masks (training images) | committed classifier | out-of-fold CV model |", "|---|---|---|"]
        md += [f"| {s} | {by['committed']['dice']:.4f} | {by['out_of_fold']['dice']:.4f} |"
               for s, by in result["out_of_fold"]["overall"].items()]
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
