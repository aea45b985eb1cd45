#!/usr/bin/env python
"""Cross-validation of slice-classifier recipes: BraTS case-level, or patient-level k-fold with ``--bundle``.

BraTS (default, bundles/brats_tumour_localisation, TRAINING cases only): each recipe (a set of config overrides
of the bundle's ``train.json``) is trained twice with the bundle's own training workflow: on one training case
(its own block validation drives early stopping and the best checkpoint,
exactly as the default training does) and scored on every brain slice of the OTHER training case. The test case of
the bundle is never loaded. Per fold and per slice-scoring rule it records the held-out case's AUC, the accuracy /
sensitivity / specificity at (a) the Youden threshold of the training case's validation blocks and (b) the Youden
threshold of the other fold's held-out case (a threshold chosen on one new case and applied to another one:
the transfer the bundle needs), and the Grad-CAM++ Dice on the held-out case's tumour slices. Scores are the
positive-class log-odds (logit difference; a monotone function of the probability that does not saturate)::

    OMP_NUM_THREADS=1 python scripts/cv_classifier.py --out /tmp/brats_cv \\
        --recipe baseline='{}' --recipe zscore='{"intensity_normalisation": "brain_zscore"}'

Slice-scoring rules (no retraining): ``whole`` (whole slice), ``half_max`` (the more tumour-like half, the bundle's
``HemisphereMaxClassifier``), ``half_mean``, ``half_max_flip`` (mean of ``half_max`` on the slice and on its
left-right mirror image), and ``*_z3`` (the score averaged with the two neighbouring slices of the same case).

``--bundle lgg_tumour_localisation``: patient-level k-fold cross-validation of a slice-labelled bundle instead, on
its train + validation patients (``configs/split.json``; the test patients are never loaded). Folds deal the
patients of each institution round-robin. Per fold the bundle's own ``train.json`` (+ the recipe's overrides) trains
on the other folds with early stopping / checkpoint on the held-out fold, which is then scored: slice AUC of the
whole-slice log-odds, of its mean with the mirrored slice (``flip_mean``) and of both averaged over neighbouring
slices (``*_z3``), accuracy at p = 0.5 and at the Youden threshold of the OTHER folds, and CAM Dice of the tumour
slices with the mask rule chosen on the other folds, at the network grid and at the masks' native grid::

    OMP_NUM_THREADS=1 python scripts/cv_classifier.py --bundle lgg_tumour_localisation --folds 4 \
        --out /tmp/lgg_cv --recipe e15='{"train#trainer#max_epochs": 15}'
    python scripts/cv_classifier.py --bundle lgg_tumour_localisation --out /tmp/lgg_cv --summarise e15
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_tumour_localisation"
TRAIN_CASES = ("brats_2013_pat0005_1", "brats_2013_pat0006_1")


def half_probabilities(net, data, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Positive-class log-odds of the first / second half of every slice, of the mirrored slice, and whole."""
    import torch
    from monai.data import DataLoader

    out: dict[str, list] = {"p1": [], "p2": [], "f1": [], "f2": [], "whole": [], "label": [], "case": [], "z": []}
    net.eval()
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0):
            x = torch.as_tensor(batch["image"]).float()
            h = x.shape[2] // 2
            xf = torch.flip(x, dims=[2])

            def prob(t):  # log-odds of the positive class: probabilities saturate to 1.0 on a shifted case
                logits = net(t)
                return (logits[:, 1] - logits[:, 0]).numpy()

            out["p1"] += prob(x[:, :, :h]).tolist()
            out["p2"] += prob(x[:, :, h:]).tolist()
            out["f1"] += prob(xf[:, :, :h]).tolist()
            out["f2"] += prob(xf[:, :, h:]).tolist()
            out["whole"] += prob(x).tolist()
            out["label"] += torch.as_tensor(batch["label"]).reshape(-1).tolist()
            out["case"] += list(batch["case"])
            out["z"] += torch.as_tensor(batch["slice_index"]).reshape(-1).tolist()
    return {k: np.asarray(v) for k, v in out.items()}


def z_smooth(score: np.ndarray, case: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Mean of each slice's score with the scores of slices z - 1 and z + 1 of the same case (when present)."""
    out = np.empty_like(score)
    lookup = {(c, int(s)): i for i, (c, s) in enumerate(zip(case, z, strict=True))}
    for i, (c, s) in enumerate(zip(case, z, strict=True)):
        idx = [lookup[(c, int(s) + d)] for d in (-1, 0, 1) if (c, int(s) + d) in lookup]
        out[i] = score[idx].mean()
    return out


def scoring_rules(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rules = {
        "whole": p["whole"],
        "half_max": np.maximum(p["p1"], p["p2"]),
        "half_mean": (p["p1"] + p["p2"]) / 2,
        "half_max_flip": (np.maximum(p["p1"], p["p2"]) + np.maximum(p["f1"], p["f2"])) / 2,
    }
    for name in list(rules):
        rules[name + "_z3"] = z_smooth(rules[name], p["case"], p["z"])
    return rules


def bundle_config(bundle: Path, dataset_dir: str | None, out_dir: Path, overrides: dict):
    """The bundle's ``train.json`` writing into ``out_dir``, with ``overrides`` (not parsed yet)."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "train.json"))
    config["bundle_root"] = str(bundle)
    if dataset_dir:
        config["dataset_dir"] = dataset_dir
    config.update({"output_dir": str(out_dir), "ckpt_dir": str(out_dir), **overrides})
    return config


def trained_network(config, ckpt_dir: Path):
    """``config``'s network with the weights of ``<ckpt_dir>/model.pt``, in eval mode."""
    import torch

    net = config.get_parsed_content("network")
    net.load_state_dict(torch.load(ckpt_dir / "model.pt", weights_only=True, map_location="cpu"))
    return net.eval()


def train_fold(bundle: Path, dataset_dir: str | None, out_dir: Path, overrides: dict):
    """Run the bundle's ``train.json`` with ``overrides`` writing into ``out_dir``; return the parsed config, the
    best-checkpoint network (eval mode), the training seconds and the training curves."""

    out_dir.mkdir(parents=True, exist_ok=True)
    config = bundle_config(bundle, dataset_dir, out_dir, overrides)
    start = time.perf_counter()
    config.get_parsed_content("initialize")
    config.get_parsed_content("run")
    train_s = time.perf_counter() - start
    curves = json.loads((out_dir / "curves.json").read_text()) if (out_dir / "curves.json").is_file() else {}
    return config, trained_network(config, out_dir), train_s, curves


def whole_slices(config, cases: list[dict], validation: bool | None = None) -> list[dict]:
    """Whole slices ``{"image", "mask", "label", "case", "slice_index"}`` of ``cases`` on the classifier's grid,
    read through the bundle's volume pipeline (``volume_transforms``; with ``validation`` only the training or
    validation blocks), the slice label = whole-tumour mask not empty."""
    from monai.data import Dataset, GridPatchDataset
    from monai.transforms import CenterSpatialCropd, Compose, CopyItemsd, Resized

    from medcnn.transforms import MaskPresenced, SliceBlocksd, SliceIterd

    volume = list(config.get_parsed_content("volume_transforms"))
    if validation is not None:
        volume.append(SliceBlocksd(["image", "label"], **config["validation_blocks"], validation=validation))
    to_grid = Compose([CopyItemsd("label", names="mask"), MaskPresenced("mask", label_key="label"),
                       CenterSpatialCropd(["image", "mask"], roi_size=config["crop_size"]),
                       Resized(["image", "mask"], spatial_size=config["spatial_size"], mode=["area", "nearest"])])
    return list(GridPatchDataset(Dataset(cases, Compose(volume)), patch_iter=SliceIterd(["image", "label"]),
                                 transform=to_grid, with_coordinates=False))


def run_fold(recipe: dict, train_case: str, heldout_case: str, out_dir: Path, dataset_dir: str | None,
             cam: bool) -> dict:

    import medcnn.data as md
    from medcnn.handlers.classification import youden_threshold
    from medcnn.localisation import calibrate_cam, evaluate_cam
    from medcnn.localisation.pipeline import mask_rule
    from medcnn.metrics import binary_classification_report

    config, net, train_s, curves = train_fold(BUNDLE, dataset_dir, out_dir, {
        "train_cases": [train_case], "test_cases": [heldout_case], **recipe})
    val_data = whole_slices(config, config.get_parsed_content("train_datalist"), validation=True)
    ds = config.get_parsed_content("dataset_dir")
    held = whole_slices(config, md.brats_case_datalist(ds, [heldout_case], file_names=config["file_names"]))
    p_val, p_held = half_probabilities(net, val_data), half_probabilities(net, held)
    r_val, r_held = scoring_rules(p_val), scoring_rules(p_held)
    rules = {}
    for name in r_held:
        thr = youden_threshold(p_val["label"], r_val[name])
        rep = binary_classification_report(p_held["label"].tolist(), r_held[name].tolist(), thr)
        rules[name] = {"auc": rep["auc"], "val_auc": binary_classification_report(
            p_val["label"].tolist(), r_val[name].tolist(), thr)["auc"], "val_threshold": thr,
            "accuracy@val_thr": rep["accuracy"], "sensitivity@val_thr": rep["sensitivity"],
            "specificity@val_thr": rep["specificity"], "scores": r_held[name].tolist()}
    result = {"train_case": train_case, "heldout_case": heldout_case, "train_s": round(train_s, 1),
              "epochs": len(curves.get("loss", [])), "labels": p_held["label"].tolist(), "rules": rules,
              "curves": {k: v for k, v in curves.items() if k in ("loss", "val_loss", "val_auc")}}
    if cam:
        rule = calibrate_cam(net, val_data, "gradcampp", config["cam_layer"])
        res = evaluate_cam(net, held, "gradcampp", config["cam_layer"], **mask_rule(rule))
        result["cam"] = {"val_dice": rule["dice"], "heldout_dice": res["dice"], "heldout_dice_std": res["dice_std"],
                         "rule": mask_rule(rule), "n": res["n_images"]}
    return result


def transfer(folds: list[dict]) -> dict:
    """Per rule: mean AUC over folds and accuracy at the threshold chosen (Youden) on the OTHER fold's held-out case."""
    from medcnn.handlers.classification import youden_threshold
    from medcnn.metrics import binary_classification_report

    summary = {}
    for name in folds[0]["rules"]:
        row = {"auc_mean": float(np.mean([f["rules"][name]["auc"] for f in folds])),
               "auc_min": float(np.min([f["rules"][name]["auc"] for f in folds])),
               "acc@val_thr_mean": float(np.mean([f["rules"][name]["accuracy@val_thr"] for f in folds]))}
        if len(folds) == 2:
            accs, bal = [], []
            for a, b in ((0, 1), (1, 0)):
                thr = youden_threshold(folds[a]["labels"], folds[a]["rules"][name]["scores"])
                rep = binary_classification_report(folds[b]["labels"], folds[b]["rules"][name]["scores"], thr)
                accs.append(rep["accuracy"])
                bal.append((rep["sensitivity"] + rep["specificity"]) / 2)
            row["acc@other_case_thr_mean"] = float(np.mean(accs))
            row["balacc@other_case_thr_mean"] = float(np.mean(bal))
            pooled_labels = folds[0]["labels"] + folds[1]["labels"]
            pooled_scores = folds[0]["rules"][name]["scores"] + folds[1]["rules"][name]["scores"]
            row["pooled_youden_threshold"] = youden_threshold(pooled_labels, pooled_scores)
        summary[name] = row
    return summary


def summarise(out_dir: Path, rules: tuple[str, ...] = ("whole", "half_max", "half_max_flip")) -> list[dict]:
    """One row per (recipe, scoring rule) of the recipe JSONs in ``out_dir``: per-fold held-out AUC, accuracy at
    the three threshold rules (validation-block Youden, p = 0.5, the other held-out case's Youden) and CAM Dice."""
    from medcnn.metrics import binary_classification_report

    table = []
    for path in sorted(out_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if "folds" not in result:
            continue
        for rule in rules:
            folds = result["folds"]
            at_half = [binary_classification_report(f["labels"], f["rules"][rule]["scores"], 0.0)["accuracy"]
                       for f in folds]
            table.append({
                "recipe": result["recipe"], "overrides": result["overrides"], "rule": rule,
                "auc": [round(f["rules"][rule]["auc"], 4) for f in folds],
                "auc_mean": round(float(np.mean([f["rules"][rule]["auc"] for f in folds])), 4),
                "acc@val_youden": [round(f["rules"][rule]["accuracy@val_thr"], 3) for f in folds],
                "acc@p0.5": [round(a, 3) for a in at_half],
                "acc@other_case_youden_mean": round(result["summary"][rule].get("acc@other_case_thr_mean", np.nan), 3),
                "cam_dice": [round(f["cam"]["heldout_dice"], 3) for f in folds if "cam" in f],
                "epochs": [f["epochs"] for f in folds],
                "load_average_at_start": [f.get("load_average_at_start") for f in folds],
            })
    return table


# ---------------------------------------------------------------------------------------------------------------
# Patient-level k-fold cross-validation of a slice-labelled bundle (lgg_tumour_localisation): --bundle <name>
# ---------------------------------------------------------------------------------------------------------------

CV_CAMS = (("hirescam", "blocks.0"), ("layercam", "blocks.0"), ("hirescam", "blocks.1"), ("gradcampp", "blocks.1"))


def patient_folds(patients: list[str], k: int) -> list[list[str]]:
    """``k`` disjoint patient folds, institutions (``TCGA_<inst>_...``) dealt round-robin so each fold mixes them."""
    by_inst: dict[str, list[str]] = {}
    for p in sorted(patients):
        by_inst.setdefault(p.split("_")[1] if p.count("_") >= 2 else "", []).append(p)
    order = [p for inst in sorted(by_inst) for p in by_inst[inst]]
    return [sorted(order[i::k]) for i in range(k)]


def slice_scores(net, data, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Positive-class log-odds of every slice and of its left-right mirror image, with label / patient / index."""
    import torch
    from monai.data import DataLoader

    out: dict[str, list] = {"whole": [], "flip": [], "label": [], "case": [], "z": []}
    net.eval()
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0):
            x = torch.as_tensor(batch["image"]).float()
            for key, t in (("whole", x), ("flip", torch.flip(x, dims=[3]))):
                logits = net(t)
                out[key] += (logits[:, 1] - logits[:, 0]).tolist()
            out["label"] += torch.as_tensor(batch["label"]).reshape(-1).tolist()
            out["case"] += list(batch["patient"])
            out["z"] += torch.as_tensor(batch["slice_index"]).reshape(-1).tolist()
    return {k: np.asarray(v) for k, v in out.items()}


def patient_adapted_scores(net, data) -> dict[str, np.ndarray]:
    """:func:`slice_scores` with the network's batch norm adapted to each patient's own slices first
    (:func:`medcnn.networks.adapt_batch_norm`, AdaBN); same keys, same slice order."""
    import torch

    from medcnn.networks import adapt_batch_norm

    items = [data[i] for i in range(len(data))]
    case = np.asarray([i["patient"] for i in items])
    order, parts = [], []
    for patient in dict.fromkeys(case):
        idx = np.flatnonzero(case == patient)
        group = [items[i] for i in idx]
        adapted = adapt_batch_norm(net, torch.stack([torch.as_tensor(i["image"]).float() for i in group]))
        order.append(idx)
        parts.append(slice_scores(adapted, group))
    back = np.argsort(np.concatenate(order))  # patient-grouped rows -> the dataset's order
    return {k: np.concatenate([p[k] for p in parts])[back] for k in parts[0]}


def fold_network(bundle: Path, dataset_dir: str | None, fold_dir: Path, overrides: dict):
    """The parsed ``train.json`` (+ ``overrides``, the fold's patients) and the fold's trained network (eval mode)
    of a finished recipe run, without training."""
    fold = json.loads((fold_dir / "fold.json").read_text())
    config = bundle_config(bundle, dataset_dir, fold_dir, {"train_patients": fold["train_patients"],
                                                           "validation_patients": fold["heldout_patients"],
                                                           **overrides})
    return config, trained_network(config, fold_dir)


def adapted_run(bundle: Path, out: Path, name: str, source: str, dataset_dir: str | None) -> Path:
    """Run ``name`` in ``out``: the fold models of the finished recipe run ``source`` re-scoring their held-out
    patients with batch norm adapted to each patient (:func:`patient_adapted_scores`). No training; the scores
    without adaptation must reproduce the stored ones, else the fold is refused naming its file."""
    src = out / source
    meta = json.loads((src / "cv.json").read_text()) if (src / "cv.json").is_file() else None
    fold_dirs = sorted(d for d in src.glob("fold*") if (d / "model.pt").is_file() and (d / "heldout.npz").is_file())
    if meta is None or not fold_dirs:
        raise FileNotFoundError(f"--adapt_bn {name}={source}: {src} has no finished fold (cv.json, fold*/model.pt "
                                "and heldout.npz)")
    run_dir = out / name
    for fold_dir in fold_dirs:
        config, net = fold_network(bundle, dataset_dir, fold_dir, meta.get("overrides") or {})
        held = config.get_parsed_content("validate#dataset")
        stored = np.load(fold_dir / "heldout.npz")
        plain = slice_scores(net, held)
        if not (np.array_equal(plain["z"], stored["z"]) and np.allclose(plain["whole"], stored["whole"], atol=1e-3)):
            raise ValueError(f"{fold_dir / 'heldout.npz'}: the fold model does not reproduce its stored scores "
                             "(another bundle config or data?); not re-scored")
        arrays = patient_adapted_scores(net, held)
        (run_dir / fold_dir.name).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(run_dir / fold_dir.name / "heldout.npz", **arrays)
        fold = {k: v for k, v in json.loads((fold_dir / "fold.json").read_text()).items() if k != "curves"}
        fold["adapted_from"] = str(fold_dir)  # the training (curves, times) is the source run's
        (run_dir / fold_dir.name / "fold.json").write_text(json.dumps(fold, indent=1, default=float) + "\n")
    (run_dir / "cv.json").write_text(json.dumps({
        "bundle": meta.get("bundle"), "recipe": name, "adapted_from": source, "overrides": meta.get("overrides"),
        "scoring": "batch norm adapted to each held-out patient (medcnn.networks.adapt_batch_norm)",
        "folds": gather_folds(run_dir, []),
        "command": f"python scripts/cv_classifier.py --bundle {meta.get('bundle')} --out <dir> --no_cam "
                   f"--adapt_bn {name}={source}"}, indent=1, default=float) + "\n")
    return run_dir


def run_patient_fold(bundle: Path, recipe: dict, train: list[str], heldout: list[str], out_dir: Path,
                     dataset_dir: str | None, cams: bool = True) -> dict:
    """Train the bundle's ``train.json`` (+ ``recipe``) on ``train``, early stopping / checkpoint on ``heldout``;
    store the held-out slice scores and, for its tumour slices (unless ``cams`` is false), the CAM heatmaps of
    :data:`CV_CAMS` at the network input size with the masks at that size and at the native grid
    (``<out_dir>/heldout.npz``)."""
    from monai.transforms import Compose

    from medcnn.localisation import localise_items

    config, net, train_s, curves = train_fold(bundle, dataset_dir, out_dir, {
        "train_patients": train, "validation_patients": heldout, **recipe})
    held = config.get_parsed_content("validate#dataset")
    scores = slice_scores(net, held)
    arrays = {k: v for k, v in scores.items()}
    native = Compose(config.get_parsed_content("load_transforms"))
    pos = [i for i in range(len(held)) if int(scores["label"][i]) == 1]
    arrays["native_masks"] = np.stack([np.asarray(native(dict(held.data[i]))["mask"]) for i in pos]).astype(np.uint8)
    for method, layer in CV_CAMS if cams else ():
        res = localise_items(net, held, method, layer)
        arrays[f"cam:{method}:{layer}"] = res["heatmaps"].numpy().astype(np.float16)
        arrays["masks"] = res["masks"].numpy().astype(np.uint8)
    np.savez_compressed(out_dir / "heldout.npz", **arrays)
    return {"train_patients": train, "heldout_patients": heldout, "train_s": round(train_s, 1),
            "epochs": len(curves.get("loss", [])),
            "best_epoch": int(np.argmin(curves["val_loss"])) + 1 if curves.get("val_loss") else None,
            "curves": {k: v for k, v in curves.items() if k in ("loss", "val_loss", "val_auc")}}


ENSEMBLE_MEAN_KEYS = ("whole", "flip")  # per-slice log-odds; the mean over members = log-odds of the mean logits
ENSEMBLE_MASK_KEYS = ("native_masks", "masks")  # stored with the CAM heatmaps, absent from --no_cam runs
ENSEMBLE_SAME_KEYS = ("label", "case", "z", *ENSEMBLE_MASK_KEYS)  # must be identical in every member


def _cam_key(key: str) -> bool:
    return key.startswith("cam:") or key in ENSEMBLE_MASK_KEYS


def ensemble_run(out: Path, name: str, members: list[str]) -> Path:
    """Write ``<out>/<name>``, the ensemble of finished recipe runs ``<out>/<member>``, fold by fold.

    Its held-out scores are the mean of the members' log-odds (= the log-odds of the mean of their logits, which is
    what an ensemble of the two networks with averaged logits outputs), its CAM heatmaps the mean of the members'
    (each normalised per slice as stored). A fold is only made when every member has it, on the same held-out
    slices in the same order; anything else is an error naming the member and fold. The result summarises like
    any recipe run (``--summarise <name>``)."""
    if len(members) < 2:
        raise ValueError(f"--ensemble {name}: needs at least two member recipes, got {members}")
    run_dir = out / name
    done = [sorted(p.parent.name for p in (out / m).glob("fold*/heldout.npz")) for m in members]
    common = sorted(set(done[0]).intersection(*done[1:]))
    if not common:
        raise FileNotFoundError(f"--ensemble {name}: no fold finished by every member of {members} in {out}")
    meta: dict = {"recipe": name, "ensemble_of": members, "overrides": None, "folds": [],
                  "command": f"python scripts/cv_classifier.py --bundle <bundle> --out {out} --ensemble "
                             f"{name}={'+'.join(members)}"}
    for fold in common:
        arrays = [dict(np.load(out / m / fold / "heldout.npz")) for m in members]
        merged: dict = {}
        # CAM heatmaps and the masks they are scored on are optional (a member run with --no_cam has none): the
        # ensemble keeps those every member has
        optional = [{k for k in a if _cam_key(k)} for a in arrays]
        kept = set.intersection(*optional)
        dropped = sorted(set.union(*optional) - kept)
        if dropped:
            meta.setdefault("cams_not_in_every_member", dropped)
        for key in arrays[0]:
            if _cam_key(key) and key not in kept:
                continue
            values = [a.get(key) for a in arrays]
            for m, v in zip(members[1:], values[1:], strict=True):
                if v is None or v.shape != values[0].shape:
                    raise ValueError(f"--ensemble {name}: {out / m / fold / 'heldout.npz'} has no {key!r} of shape "
                                     f"{values[0].shape} like {members[0]}'s")
            if key in ENSEMBLE_SAME_KEYS:
                for m, v in zip(members[1:], values[1:], strict=True):
                    if not np.array_equal(v, values[0]):
                        raise ValueError(f"--ensemble {name}: {out / m / fold / 'heldout.npz'} holds other held-out "
                                         f"slices than {members[0]}'s ({key!r} differs)")
                merged[key] = values[0]
            elif key in ENSEMBLE_MEAN_KEYS or key.startswith("cam:"):
                merged[key] = np.mean([v.astype(np.float32) for v in values], axis=0).astype(values[0].dtype)
        (run_dir / fold).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(run_dir / fold / "heldout.npz", **merged)
        records = [json.loads(p.read_text()) for p in (out / m / fold / "fold.json" for m in members) if p.is_file()]
        fold_meta = {"members": members, "heldout_patients": records[0]["heldout_patients"] if records else None,
                     "train_s": round(sum(r["train_s"] for r in records), 1) if len(records) == len(members) else None,
                     "member_epochs": [r.get("epochs") for r in records]}
        (run_dir / fold / "fold.json").write_text(json.dumps(fold_meta, indent=1) + "\n")
    meta["folds"] = gather_folds(run_dir, [])
    (run_dir / "cv.json").write_text(json.dumps(meta, indent=1, default=float) + "\n")
    return run_dir


def _z_smooth_scores(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rules = {"whole": s["whole"], "flip_mean": (s["whole"] + s["flip"]) / 2}
    for name in list(rules):
        rules[name + "_z3"] = z_smooth(rules[name], s["case"], s["z"])
    return rules


def _native_dice(heatmaps: np.ndarray, native: np.ndarray, rule: dict, sigma: float = 0.0) -> np.ndarray:
    """Dice of the CAM masks against the masks at their native grid: heatmaps ``(N, 1, h, w)`` are resized
    (bilinear) to the masks' ``(N, 1, H, W)``, optionally Gaussian-smoothed, then thresholded by ``rule``."""
    import torch
    import torch.nn.functional as F

    from medcnn.localisation.masks import cam_dice, cam_to_mask

    maps = torch.as_tensor(heatmaps.astype(np.float32))
    if sigma > 0:
        from monai.transforms import GaussianSmooth

        maps = torch.stack([torch.as_tensor(GaussianSmooth(sigma)(m)) for m in maps])
    if maps.shape[-2:] != native.shape[-2:]:
        maps = F.interpolate(maps, size=native.shape[-2:], mode="bilinear", align_corners=False)
    return cam_dice(cam_to_mask(maps, **rule), torch.as_tensor(native)).numpy()


CV_CAM_NAMES = ("hirescam:blocks.0", "layercam:blocks.0")  # the CAMs whose LOFO mask rule is summarised


def summarise_patient_cv(run_dir: Path, cams: tuple[str, ...] = CV_CAM_NAMES,
                         sigmas: tuple[float, ...] = (0.0, 2.0)) -> dict:
    """Per scoring rule: held-out AUC per fold (mean, std) and pooled, accuracy / sensitivity / specificity at
    p = 0.5 and at the Youden threshold of the OTHER folds' held-out slices; per CAM (method, layer): the mask
    rule (fraction of the max 0.05-0.5, with / without the largest component) chosen on the other folds
    (leave-one-fold-out) and its Dice on each fold at the network grid and at the native grid."""
    import torch

    from medcnn.handlers.classification import youden_threshold
    from medcnn.localisation.masks import cam_dice, cam_to_mask, select_threshold
    from medcnn.metrics import binary_classification_report

    folds = [dict(np.load(path)) for path in sorted(run_dir.glob("fold*/heldout.npz"))]
    table: dict = {"n_folds": len(folds), "scoring": {}, "cam": {},
                   "rule_source": "the other folds" if len(folds) > 1 else "the same fold (only one fold was run)"}
    for name in _z_smooth_scores(folds[0]):
        per = [_z_smooth_scores(f)[name] for f in folds]
        labels = [f["label"] for f in folds]
        at_half = [binary_classification_report(lab.tolist(), s.tolist(), 0.0)
                   for lab, s in zip(labels, per, strict=True)]
        aucs = [r["auc"] for r in at_half]
        lofo = []
        for i in range(len(folds)):
            others = [j for j in range(len(folds)) if j != i] or [i]  # one fold only: chosen on itself
            o_lab = np.concatenate([labels[j] for j in others])
            o_s = np.concatenate([per[j] for j in others])
            thr = youden_threshold(o_lab, o_s)
            rep = binary_classification_report(labels[i].tolist(), per[i].tolist(), thr)
            lofo.append({"threshold_logodds": thr, **rep})
        pooled = binary_classification_report(np.concatenate(labels).tolist(), np.concatenate(per).tolist(), 0.0)
        table["scoring"][name] = {
            "auc_per_fold": [round(a, 4) for a in aucs], "auc_mean": float(np.mean(aucs)),
            "auc_std": float(np.std(aucs)), "auc_pooled": pooled["auc"],
            "accuracy@p0.5": float(np.mean([r["accuracy"] for r in at_half])),
            "sensitivity@p0.5": float(np.mean([r["sensitivity"] for r in at_half])),
            "specificity@p0.5": float(np.mean([r["specificity"] for r in at_half])),
            "lofo_youden_logodds": [round(r["threshold_logodds"], 3) for r in lofo],
            "accuracy@lofo_youden": float(np.mean([r["accuracy"] for r in lofo])),
            "sensitivity@lofo_youden": float(np.mean([r["sensitivity"] for r in lofo])),
            "specificity@lofo_youden": float(np.mean([r["specificity"] for r in lofo])),
            "youden_logodds_all_folds": youden_threshold(np.concatenate(labels), np.concatenate(per))}
    fractions = tuple(np.round(np.arange(0.05, 0.51, 0.05), 2))
    for key in [k for k in folds[0] if k.startswith("cam:") and k[4:] in cams]:
        maps = [torch.as_tensor(f[key].astype(np.float32)) for f in folds]
        masks = [torch.as_tensor(f["masks"]) for f in folds]
        row: dict = {}
        for sigma in sigmas:
            sm = maps if sigma == 0 else [torch.stack([torch.as_tensor(GaussianSmoothCache.get(sigma)(m)) for m in mp])
                                          for mp in maps]
            lofo_net, lofo_native, rules = [], [], []
            for i in range(len(folds)):
                others = [j for j in range(len(folds)) if j != i] or [i]  # one fold only: chosen on itself
                rule = select_threshold(torch.cat([sm[j] for j in others]), torch.cat([masks[j] for j in others]),
                                        modes=("fraction",), fractions=fractions)
                r = {"threshold": rule["threshold"], "mode": rule["mode"],
                     "largest_component": rule["largest_component"]}
                rules.append(r)
                lofo_net.append(float(cam_dice(cam_to_mask(sm[i], **r), masks[i]).mean()))
                lofo_native.append(float(_native_dice(sm[i].numpy(), folds[i]["native_masks"], r).mean()))
            row[f"sigma{sigma:g}"] = {
                "lofo_rules": rules, "lofo_dice_network_grid": [round(d, 4) for d in lofo_net],
                "lofo_dice_network_grid_mean": float(np.mean(lofo_net)),
                "lofo_dice_native_grid": [round(d, 4) for d in lofo_native],
                "lofo_dice_native_grid_mean": float(np.mean(lofo_native))}
        table["cam"][key[4:]] = row
    return table


class GaussianSmoothCache:
    """One MONAI ``GaussianSmooth`` per sigma (heatmap smoothing before thresholding)."""

    _cache: dict = {}

    @classmethod
    def get(cls, sigma: float):
        from monai.transforms import GaussianSmooth

        return cls._cache.setdefault(sigma, GaussianSmooth(sigma))


def main_patient_cv(args: argparse.Namespace) -> int:
    """``--bundle <name>``: k-fold patient CV of each recipe on the bundle's train + validation patients."""
    from medcnn.data.lgg import load_split

    bundle = REPO / "bundles" / args.bundle
    split = load_split(bundle / "configs" / "split.json")
    patients = sorted(split["train"] + split["validation"])  # the test patients are never loaded
    folds = patient_folds(patients, args.folds)
    for item in args.recipe:
        name, value = item.split("=", 1)
        recipe = json.loads(value)
        run_dir = args.out / name
        meta = {"bundle": args.bundle, "recipe": name, "overrides": recipe, "folds": [],
                "command": f"OMP_NUM_THREADS=1 python scripts/cv_classifier.py --bundle {args.bundle} "
                           f"--folds {args.folds}{' --no_cam' if args.no_cam else ''} --recipe {name}='{value}'"}
        if args.only_folds and (run_dir / "cv.json").is_file():  # add folds to an earlier run of the recipe
            meta = json.loads((run_dir / "cv.json").read_text())
        for i, heldout in enumerate(folds):
            if args.only_folds and i not in args.only_folds:
                continue
            train = [p for p in patients if p not in heldout]
            load = [round(v, 2) for v in os.getloadavg()]
            fold = run_patient_fold(bundle, recipe, train, heldout, run_dir / f"fold{i}", args.dataset_dir,
                                    cams=not args.no_cam)
            fold["load_average_at_start"] = load
            fold["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
            # one file per fold, so runs of different --only_folds into one --out (two at a time) do not race
            (run_dir / f"fold{i}" / "fold.json").write_text(json.dumps(fold, indent=1, default=float) + "\n")
            meta["folds"] = gather_folds(run_dir, meta["folds"])
            (run_dir / "cv.json").write_text(json.dumps(meta, indent=1, default=float) + "\n")
            print(f"{name} fold {i}: {fold['epochs']} epochs ({fold['train_s']} s, load {load}), best epoch "
                  f"{fold['best_epoch']}", flush=True)
        _summarise_run(run_dir, name, args.no_cam)
    for item in args.ensemble:
        name, value = item.split("=", 1)
        _summarise_run(ensemble_run(args.out, name, value.split("+")), name, args.no_cam)
    for item in args.adapt_bn:
        name, source = item.split("=", 1)
        _summarise_run(adapted_run(bundle, args.out, name, source, args.dataset_dir), name, no_cam=True)
    record: dict = {"bundle": args.bundle, "n_folds": args.folds, "note": args.note, "recipes": {}}
    for name in args.summarise:
        run_dir = args.out / name
        summary = _summarise_run(run_dir, name, args.no_cam)
        meta = json.loads((run_dir / "cv.json").read_text()) if (run_dir / "cv.json").is_file() else {}
        record["recipes"][name] = {"overrides": meta.get("overrides"), "command": meta.get("command"),
                                   "folds": gather_folds(run_dir, meta.get("folds", [])), "summary": summary}
    if args.record:
        record = merge_record(args.record, record)
        args.record.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return 0


def merge_record(path: Path, record: dict) -> dict:
    """``record`` merged into the CV record already in ``path`` (if any): the recipes summarised now are added or
    replaced, every other recipe and top-level key (``protocol``, ``chosen``, ...) is kept, and a new ``note`` is
    appended to the old one (which describes the earlier recipes). Writing ``record`` alone would drop the recipes
    of earlier runs from the card's JSON. A file that is not a CV record of the same bundle and number of folds is
    refused, naming the file."""
    if not path.is_file():
        return record
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SystemExit(f"--record {path}: not a JSON file ({err}); give a new file or a CV record") from None
    if not isinstance(old, dict) or not isinstance(old.get("recipes"), dict):
        raise SystemExit(f"--record {path}: not a CV record (no 'recipes' object); give a new file or a CV record")
    for key in ("bundle", "n_folds"):
        if old.get(key) != record[key]:
            raise SystemExit(f"--record {path}: its {key} is {old.get(key)!r}, this run's is {record[key]!r}; "
                             "folds of different CVs cannot be compared in one record")
    merged = {**old, **{k: v for k, v in record.items() if k not in ("recipes", "note")}}
    notes = [n for n in (old.get("note") or "", record["note"] or "") if n]
    merged["note"] = " ".join(dict.fromkeys(notes))  # the same note twice (a re-run) is kept once
    merged["recipes"] = {**old["recipes"], **record["recipes"]}
    return merged


def _summarise_run(run_dir: Path, name: str, no_cam: bool) -> dict:
    """Summarise a recipe run (:func:`summarise_patient_cv`), write its ``summary.json`` and print it."""
    summary = summarise_patient_cv(run_dir, cams=() if no_cam else CV_CAM_NAMES)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print_patient_cv(name, summary)
    return summary


def gather_folds(run_dir: Path, earlier: list[dict]) -> list[dict]:
    """The fold records of a recipe run: every ``fold<i>/fold.json``, then earlier records of other folds."""
    folds = [{"fold": int(p.parent.name[4:]), **json.loads(p.read_text())}
             for p in sorted(run_dir.glob("fold*/fold.json"))]
    done = [f["heldout_patients"] for f in folds]
    return folds + [f for f in earlier if f["heldout_patients"] not in done]


def print_patient_cv(name: str, summary: dict) -> None:
    for rule, row in summary["scoring"].items():
        print(f"{name:12s} {rule:14s} AUC {row['auc_mean']:.4f} +- {row['auc_std']:.4f} {row['auc_per_fold']} "
              f"pooled {row['auc_pooled']:.4f}; acc@0.5 {row['accuracy@p0.5']:.3f} "
              f"acc@LOFO-Youden {row['accuracy@lofo_youden']:.3f}", flush=True)
    for cam, rows in summary["cam"].items():
        for sig, row in rows.items():
            print(f"{name:12s} {cam:20s} {sig:8s} LOFO Dice net {row['lofo_dice_network_grid_mean']:.4f} "
                  f"native {row['lofo_dice_native_grid_mean']:.4f}; rules {row['lofo_rules']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=JSON",
                        help="a recipe: a name and a JSON object of train.json overrides")
    parser.add_argument("--summary", type=Path, default=None,
                        help="write the table of every recipe JSON in --out to this JSON file (and print it)")
    parser.add_argument("--note", default="", help="free text stored in the summary (e.g. the base config)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/brats_cv"))
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--no_cam", action="store_true", help="skip the Grad-CAM++ Dice of each fold "
                             "(--bundle: the CAM heatmaps of each fold and the CAM rule summary)")
    parser.add_argument("--bundle", default=None,
                        help="patient-level k-fold CV of this slice-labelled bundle (lgg_tumour_localisation) "
                             "on its train + validation patients instead of the BraTS case CV")
    parser.add_argument("--folds", type=int, default=4, help="--bundle: number of patient folds")
    parser.add_argument("--only_folds", nargs="+", type=int, default=None, metavar="I",
                        help="--bundle: run only these fold indices (added to an earlier run of the recipe in --out)")
    parser.add_argument("--ensemble", action="append", default=[], metavar="NAME=RECIPE+RECIPE[+...]",
                        help="--bundle: make and summarise recipe run NAME in --out, the ensemble (mean log-odds, "
                             "mean CAM) of finished recipe runs on the folds all of them have (record it with "
                             "--summarise NAME --record)")
    parser.add_argument("--adapt_bn", action="append", default=[], metavar="NAME=RECIPE",
                        help="--bundle: make and summarise run NAME in --out, the finished recipe run RECIPE's fold "
                             "models scoring their held-out patients with batch norm adapted to each patient (AdaBN; "
                             "no training)")
    parser.add_argument("--summarise", nargs="*", default=[], metavar="RECIPE",
                        help="--bundle: re-summarise finished recipe runs in --out")
    parser.add_argument("--record", type=Path, default=None,
                        help="--bundle --summarise: write the folds and summaries of those recipes to this JSON "
                             "(an existing record of the same bundle and folds keeps its other recipes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.bundle:
        return main_patient_cv(args)
    for item in args.recipe:
        name, value = item.split("=", 1)
        recipe = json.loads(value)
        folds = []
        for train_case, heldout in ((TRAIN_CASES[0], TRAIN_CASES[1]), (TRAIN_CASES[1], TRAIN_CASES[0])):
            load = [round(v, 2) for v in os.getloadavg()]
            fold = run_fold(recipe, train_case, heldout, args.out / name / train_case, args.dataset_dir,
                            not args.no_cam)
            fold["load_average_at_start"] = load
            folds.append(fold)
            print(f"{name} train {train_case} -> {heldout}: epochs {fold['epochs']} ({fold['train_s']} s), "
                  + ", ".join(f"{k} AUC {v['auc']:.3f}" for k, v in fold["rules"].items())
                  + (f"; CAM Dice {fold['cam']['heldout_dice']:.3f}" if "cam" in fold else ""), flush=True)
        result = {"recipe": name, "overrides": recipe, "folds": folds, "summary": transfer(folds),
                  "command": "OMP_NUM_THREADS=1 python scripts/cv_classifier.py --recipe " + item}
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        for rule, row in result["summary"].items():
            print(f"  {name:14s} {rule:18s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    if args.summary:
        table = summarise(args.out)
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps({"command": "OMP_NUM_THREADS=1 python scripts/cv_classifier.py "
                                            "--out <dir> --summary <file>", "note": args.note, "rows": table},
                                           indent=1) + "\n")
        for row in table:
            print(f"{row['recipe']:18s} {row['rule']:14s} AUC {row['auc']} mean {row['auc_mean']:.4f} "
                  f"acc@valYouden {row['acc@val_youden']} acc@p0.5 {row['acc@p0.5']} "
                  f"acc@otherYouden {row['acc@other_case_youden_mean']} CAM Dice {row['cam_dice']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
