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

``--sweep`` asks a different question at the cost of one network pass: the native-grid tumour probability of
every validation image (the bundle's own preprocessing, inferer and ``Invertd``, cached in ``--work_dir``) is
scored under many rules without re-running the network: probability threshold, which region is kept (the largest,
or the one with the highest summed probability), the region as it is or a box fitted to it (its bounding box,
the bounding box of its pixels above a higher probability, or a box trimmed to coordinate quantiles), and
what to do when no pixel passes the threshold. It also describes the images scored at Dice 0 (nothing
predicted, the tumour's region found but another kept, or nothing in the box) and their box sizes. Writes
``<out>/postprocessing_sweep_validation.json``; the rules run by ``evaluate.json`` above stay the reference, a
sweep winner must be reproduced through the bundle before it becomes a default::

    OMP_NUM_THREADS=1 python scripts/select_coco_postprocessing.py --sweep \
        --ckpt_dir bundles/coco_tumour_segmentation/models
"""

from __future__ import annotations

import argparse
import hashlib
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
    parser.add_argument("--sweep", action="store_true",
                        help="score threshold / region / box rules from cached native-grid probabilities")
    parser.add_argument("--no_tta", action="store_true", help="--sweep without the dihedral TTA")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(SWEEP_THRESHOLDS),
                        help="--sweep probability thresholds (0.5 alone: the default's threshold, fewer rules)")
    parser.add_argument("--override", type=json.loads, default={}, metavar="JSON",
                        help="--sweep: train.json ids the --ckpt_dir weights were trained with (e.g. "
                             "'{\"network_kwargs\": {...}, \"spatial_size\": [160, 160]}'); not for the baseline")
    parser.add_argument("--baseline_ckpt_dir", default=None,
                        help="--sweep: also bootstrap the default rule of these weights against the baseline's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.sweep:
        return sweep(Path(args.ckpt_dir) / "model.pt", args.work_dir, args.out, tta=not args.no_tta,
                     thresholds=args.thresholds, overrides=args.override,
                     baseline=Path(args.baseline_ckpt_dir) / "model.pt" if args.baseline_ckpt_dir else None)

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


# ------------------------------------------------------------------------------------------------- --sweep
def native_probabilities(ckpt: Path, work_dir: Path, tta: bool = True, overrides: dict | None = None) -> dict:
    """Tumour probability ``(W, H)`` float16 and reference mask of every validation image on its native grid.

    The bundle's own ``validate#preprocessing``, ``validate#inferer`` and the softmax + ``Invertd`` of
    ``validate#native_prediction`` (``evaluate.json``), so the maps are exactly what its argmax sees. Cached in
    ``work_dir`` by checkpoint (path, size, modification time), TTA flag and ``overrides`` (train.json ids the
    weights were trained with, e.g. another network or input size).
    """
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, decollate_batch
    from monai.transforms import Compose

    from medcnn.networks import load_weights

    stat = ckpt.stat()
    key = f"{ckpt.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{json.dumps(overrides or {}, sort_keys=True)}".encode()
    tag = f"{hashlib.sha1(key).hexdigest()[:12]}_{'tta' if tta else 'plain'}"
    cache = work_dir / f"probabilities_{tag}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return {"names": list(z["names"]), "prob": list(z["prob"]), "label": list(z["label"]),
                "wall_s": float(z["wall_s"]) if "wall_s" in z else None, "cached": True}
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), "ckpt_path": str(ckpt), "output_dir": str(work_dir / "eval"),
                   "eval_items": "$@split['validation']", "dihedral_tta": tta, **(overrides or {})})
    net = parser.get_parsed_content("network")
    net.load_state_dict(load_weights(ckpt, key="model"))
    net.eval()
    inferer = parser.get_parsed_content("validate#inferer")
    to_native = Compose(parser.get_parsed_content("validate#native_prediction")[:2])  # softmax, Invertd
    loader = DataLoader(parser.get_parsed_content("validate#dataset"), batch_size=1, num_workers=1)
    names, probs, labels = [], [], []
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = inferer(batch["image"], net)
            for item in decollate_batch(batch):
                item = to_native(item)
                names.append(Path(item["image"].meta["filename_or_obj"]).name)
                probs.append(np.asarray(item["pred"][1], dtype=np.float16))
                labels.append(np.asarray(item["label"][0]) > 0)
    wall = time.perf_counter() - start
    work_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, names=np.array(names), prob=np.stack(probs), label=np.stack(labels), wall_s=round(wall, 1))
    return {"names": names, "prob": probs, "label": labels, "wall_s": round(wall, 1), "cached": False}


def rule_mask(prob, threshold: float = 0.5, region: str = "largest", shape: str = "filled", level: float = 0.0,
              empty: str = "none"):
    """Boolean mask of one image from its tumour probability ``prob`` ``(*S)`` under one rule.

    ``threshold``: foreground where ``prob >= threshold`` (0.5 = the argmax of two classes). ``region``:
    ``"all"`` regions, the ``"largest"`` (pixel count) or the one with the highest summed probability
    (``"mass"``). ``shape``: ``"filled"`` (holes filled), ``"box"`` (its bounding box), ``"core_box"`` (bounding
    box of its pixels with ``prob >= level``; the filled region when none), ``"trim_box"`` (box between the
    ``level`` and ``1 - level`` quantiles of its pixel coordinates). ``empty``: ``"relative"`` thresholds an image
    with no pixel above ``threshold`` at half its maximum probability instead of predicting nothing.
    """
    import numpy as np
    from scipy import ndimage

    fg = prob >= threshold
    if not fg.any() and empty == "relative" and prob.max() > 0:
        fg = prob >= 0.5 * float(prob.max())
    labels, n = ndimage.label(fg, structure=np.ones((3,) * fg.ndim))
    out = np.zeros(prob.shape, bool)
    if not n:
        return out
    if region == "all":
        keep = range(1, n + 1)
    elif region == "largest":
        keep = [int(np.argmax(np.bincount(labels.ravel())[1:])) + 1]
    elif region == "mass":
        keep = [int(np.argmax(ndimage.sum_labels(prob.astype(np.float32), labels, range(1, n + 1)))) + 1]
    else:
        raise ValueError(f"region must be all, largest or mass, not {region!r}")
    slices = ndimage.find_objects(labels)
    for i in keep:
        sl = slices[i - 1]
        reg = labels[sl] == i
        if shape == "box":
            out[sl] = True
            continue
        if shape == "core_box" and (reg & (prob[sl] >= level)).any():
            idx = np.nonzero(reg & (prob[sl] >= level))
            out[sl][tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx)] = True
            continue
        if shape == "trim_box":
            idx = np.nonzero(reg)
            box = tuple(slice(int(np.floor(np.quantile(a, level))), int(np.ceil(np.quantile(a, 1 - level))) + 1)
                        for a in idx)
            out[sl][box] = True
            continue
        if shape not in ("filled", "core_box"):
            raise ValueError(f"shape must be filled, box, core_box or trim_box, not {shape!r}")
        out[sl] |= ndimage.binary_fill_holes(reg)
    return out


def score_masks(masks, labels) -> dict:
    """Global tumour Dice, pixel accuracy, precision, recall and the per-image Dice spread of boolean masks."""
    import numpy as np

    tp = fp = fn = total = 0
    dice, counts = [], []
    for m, y in zip(masks, labels, strict=True):
        a, b, c = int((m & y).sum()), int((m & ~y).sum()), int((~m & y).sum())
        tp, fp, fn, total = tp + a, fp + b, fn + c, total + m.size
        dice.append(2 * a / (2 * a + b + c) if (2 * a + b + c) else float("nan"))
        counts.append((a, b, c))
    d = np.asarray(dice)
    q25, med = np.nanpercentile(d, [25, 50])
    return {"dice": 2 * tp / (2 * tp + fp + fn), "pixel_accuracy": 1 - (fp + fn) / total,
            "tumour_precision": tp / max(tp + fp, 1), "tumour_recall": tp / max(tp + fn, 1),
            "image_dice_median": float(med), "image_dice_q25": float(q25), "image_dice_mean": float(np.nanmean(d)),
            "images_at_dice_0": int((d == 0).sum()), "images_below_0.5": int((d < 0.5).sum()), "n_items": len(d),
            "per_image": dice, "counts": counts}


def paired_bootstrap(counts_a, counts_b, n: int = 2000, seed: int = 0) -> dict:
    """Global Dice of rule a minus rule b over ``n`` resamples of the images (the same images for both).

    ``counts_*``: per image ``(tp, fp, fn)``. Returns the observed difference, the 2.5 / 50 / 97.5 percentiles
    and the share of resamples where a is not better: how much of a difference 150 images can resolve.
    """
    import numpy as np

    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)

    def dice(c):
        return 2 * c[..., 0] / (2 * c[..., 0] + c[..., 1] + c[..., 2])

    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    diff = dice(a[idx].sum(1)) - dice(b[idx].sum(1))
    q = np.percentile(diff, [2.5, 50, 97.5])
    return {"observed": float(dice(a.sum(0)) - dice(b.sum(0))), "q2.5": float(q[0]), "median": float(q[1]),
            "q97.5": float(q[2]), "share_not_better": float((diff <= 0).mean()), "resamples": n, "seed": seed}


def describe_zero_dice(names, probs, labels, masks) -> dict:
    """Why images score Dice 0 under a rule, and whether their boxes are smaller than the others'."""
    import numpy as np
    from scipy import ndimage

    rows, area_zero, area_other = [], [], []
    for name, p, y, m in zip(names, probs, labels, masks, strict=True):
        frac = float(y.mean())
        if (m & y).any():
            area_other.append(frac)
            continue
        area_zero.append(frac)
        fg = p >= 0.5
        n = ndimage.label(fg, structure=np.ones((3,) * fg.ndim))[1]
        if not fg.any():
            kind = "nothing above 0.5"
        elif (fg & y).any():
            kind = "a region overlaps the box, another was kept"
        else:
            kind = "regions only outside the box"
        rows.append({"image": name, "kind": kind, "box_fraction": round(frac, 5), "regions": int(n),
                     "max_prob": round(float(p.max()), 3), "max_prob_in_box": round(float(p[y].max()), 3),
                     "mean_prob_in_box": round(float(p[y].mean()), 3)})
    kinds = {k: sum(r["kind"] == k for r in rows) for k in sorted({r["kind"] for r in rows})}

    def quart(v):
        return [round(float(q), 5) for q in np.percentile(v, [25, 50, 75])] if v else []

    return {"n": len(rows), "kinds": kinds, "box_fraction_quartiles_zero": quart(area_zero),
            "box_fraction_quartiles_other": quart(area_other), "images": rows}


SWEEP_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
SWEEP_SHAPES = (("filled", 0.0), ("box", 0.0), ("core_box", 0.7), ("core_box", 0.9), ("trim_box", 0.02),
                ("trim_box", 0.05))


def sweep(ckpt: Path, work_dir: Path, out: Path, tta: bool = True, thresholds=SWEEP_THRESHOLDS,
          baseline: Path | None = None, overrides: dict | None = None) -> int:
    """Score the rules of :func:`rule_mask` on the validation split from one network pass; write the JSON.

    With ``baseline`` (other weights, e.g. the committed ones) the default rule of both is also compared image by
    image (:func:`paired_bootstrap`): whether a retrained candidate beats the committed model by more than the
    150 images can resolve."""
    load_start = os.getloadavg()[0]
    data = native_probabilities(ckpt, work_dir, tta=tta, overrides=overrides)
    names, probs, labels = data["names"], [p.astype("float32") for p in data["prob"]], data["label"]
    rules = {}
    for t in sorted(set(thresholds) | {0.5}):
        rules[f"t{t}_all_filled"] = {"threshold": t, "region": "all", "shape": "filled"}
        for region in ("largest", "mass"):
            for shape, level in SWEEP_SHAPES:
                name = f"t{t}_{region}_{shape}" + (f"{level}" if level else "")
                rules[name] = {"threshold": t, "region": region, "shape": shape, "level": level}
    rows, masks_of = {}, {}
    for name, rule in rules.items():
        masks = [rule_mask(p, **rule) for p in probs]
        rows[name] = {**rule, **score_masks(masks, labels)}
        masks_of[name] = masks
        logging.info("%-32s dice %.4f acc %.4f zero %d", name, rows[name]["dice"], rows[name]["pixel_accuracy"],
                     rows[name]["images_at_dice_0"])
    best = max(rows, key=lambda k: rows[k]["dice"])
    fallback = f"{best}_relative_if_empty"
    rule = {k: rows[best][k] for k in ("threshold", "region", "shape", "level") if k in rows[best]}
    masks_of[fallback] = [rule_mask(p, **rule, empty="relative") for p in probs]
    rows[fallback] = {**rule, "empty": "relative", **score_masks(masks_of[fallback], labels)}
    reference = "t0.5_largest_filled"  # the committed default's rule (argmax, largest region, holes filled)
    result = {
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
                   f"scripts/select_coco_postprocessing.py --sweep --ckpt_dir {ckpt.parent}"
                   + ("" if tta else " --no_tta")
                   + ("" if tuple(thresholds) == SWEEP_THRESHOLDS
                      else " --thresholds " + " ".join(map(str, thresholds)))
                   + (f" --override '{json.dumps(overrides)}'" if overrides else ""),
        "checkpoint": str(ckpt), "dihedral_tta": tta, "split": "validation (150 images of train/)",
        "network_pass_wall_s": data["wall_s"], "probabilities_from_cache": data["cached"],
        "load_average_1m": [load_start, os.getloadavg()[0]],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "reference": reference, "best_by_global_dice": best,
        "zero_dice_reference": describe_zero_dice(names, probs, labels, masks_of[reference]),
        "zero_dice_best": describe_zero_dice(names, probs, labels, masks_of[best]),
        "bootstrap_best_minus_reference": paired_bootstrap(rows[best]["counts"], rows[reference]["counts"]),
        "rows": {k: {kk: vv for kk, vv in v.items() if kk not in ("per_image", "counts")} for k, v in rows.items()},
        "per_image_dice": {k: dict(zip(names, [round(x, 4) for x in rows[k]["per_image"]], strict=True))
                           for k in (reference, best)},
    }
    if baseline is not None:
        base = native_probabilities(baseline, work_dir, tta=tta)
        if base["names"] != names:
            raise ValueError(f"{baseline}: its validation images differ from those of {ckpt}")
        base_rule = {k: rules[reference][k] for k in ("threshold", "region", "shape", "level")}
        base_scores = score_masks([rule_mask(p.astype("float32"), **base_rule) for p in base["prob"]], labels)
        result["baseline"] = {"checkpoint": str(baseline), "rule": reference,
                              **{k: v for k, v in base_scores.items() if k not in ("per_image", "counts")},
                              "bootstrap_minus_baseline": paired_bootstrap(rows[reference]["counts"],
                                                                           base_scores["counts"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "postprocessing_sweep_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: {f: round(v[f], 4) for f in ("dice", "pixel_accuracy", "tumour_precision", "tumour_recall",
                                                "image_dice_median", "images_at_dice_0")} for k, v in rows.items()}
    print(json.dumps({"best": best, "reference": reference, "rows": summary,
                      "bootstrap_best_minus_reference": result["bootstrap_best_minus_reference"],
                      "baseline": {k: v for k, v in result.get("baseline", {}).items() if k != "checkpoint"},
                      "zero_reference": {k: result["zero_dice_reference"][k] for k in
                                         ("n", "kinds", "box_fraction_quartiles_zero", "box_fraction_quartiles_other")},
                      "zero_best": {k: result["zero_dice_best"][k] for k in
                                    ("n", "kinds", "box_fraction_quartiles_zero", "box_fraction_quartiles_other")}},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
