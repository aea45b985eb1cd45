#!/usr/bin/env python
"""Choose a localisation bundle's CAM method, layer, mask rule and decision threshold on its VALIDATION data only.

The bundle's ``train.json`` (validation patients / cases in ``validate#dataset`` by default) and a checkpoint are
loaded; for every (method, layer) pair the threshold rule (fraction of the max or Otsu, with / without the largest
connected component) is calibrated with :func:`medcnn.localisation.calibrate_cam` on the validation images that
contain the object, and the slice decision threshold is reported at p = 0.5 and at Youden's J
(:func:`medcnn.handlers.classification.youden_threshold`). Test data are never loaded. Writes a JSON table sorted
by validation CAM Dice; copy ``best`` into the bundle's ``cam_*`` config ids::

    OMP_NUM_THREADS=1 python scripts/select_cam.py --bundle lgg_tumour_localisation \\
        --out bundles/lgg_tumour_localisation/docs/cam_selection.json

``--configs`` and ``--dataset_id`` choose where the validation images come from (``scripts/select_brats_cam.py``
reads the BraTS bundle's ``calibration#dataset`` of ``evaluate.json``). Without both classes in that dataset
``decision`` is ``null``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="lgg_tumour_localisation", help="folder name under bundles/")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcampp", "hirescam", "layercam", "xgradcam"])
    parser.add_argument("--layers", nargs="+", default=["blocks.0", "blocks.1", "blocks.2", "blocks.3"])
    parser.add_argument("--ckpt", type=Path, default=None, help="default: <bundle>/models/model.pt")
    parser.add_argument("--configs", nargs="+", default=["train.json"],
                        help="config files of the bundle (under configs/) that define the network and the dataset")
    parser.add_argument("--dataset_id", default="validate#dataset", help="config id of the validation dataset")
    parser.add_argument("--out", type=Path, default=None, help="default: <bundle>/docs/cam_selection.json")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="ID=JSON", help="config overrides")
    parser.add_argument("--smooth_sigmas", nargs="+", type=float, default=[0.0],
                        help="Gaussian smoothing of the heatmap before thresholding to try, in pixels of the grid "
                             "Dice is scored on (0 = none)")
    parser.add_argument("--native_mask", action="store_true",
                        help="score CAM Dice on the mask's native grid (heatmaps resized to it), as evaluate.json does "
                             "with cam_native_mask_key: for bundles with load_transforms / resize_transforms ids")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bundle = REPO / "bundles" / args.bundle
    ckpt = args.ckpt or bundle / "models" / "model.pt"
    out = args.out or bundle / "docs" / "cam_selection.json"

    import torch
    from monai.bundle import ConfigParser
    from monai.data import DataLoader

    from medcnn.handlers.classification import youden_threshold
    from medcnn.localisation import calibrate_cam
    from medcnn.metrics.classification import binary_classification_report

    torch.set_num_threads(1)
    config = ConfigParser()
    config.read_config([str(bundle / "configs" / name) for name in args.configs])
    config["bundle_root"] = str(bundle)
    if args.dataset_dir:
        config["dataset_dir"] = args.dataset_dir
    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = json.loads(value)
    from medcnn.networks import checkpoint_members, ensemble_or_member

    # the committed weights may be an ensemble of train.json networks (its size is read from the checkpoint)
    net = ensemble_or_member(config.get_parsed_content("network_def"), checkpoint_members(ckpt))
    net.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu"))
    net.eval()
    validation = config.get_parsed_content(args.dataset_id)
    if not hasattr(validation, "__len__"):  # an iterable dataset (slices iterated from volumes): read it once
        validation = list(validation)
    keys = ("image", "label", "mask")
    if args.native_mask:  # a copy of the mask taken before the resize to the network's input size
        from monai.data import CacheDataset
        from monai.transforms import Compose, CopyItemsd

        transform = Compose(config.get_parsed_content("load_transforms") + [CopyItemsd("mask", names="mask_native")]
                            + config.get_parsed_content("resize_transforms"))
        validation = CacheDataset(validation.data, transform, progress=False)
        keys = ("image", "label", "mask_native")
    groups = sorted({str(d.get("patient", d.get("case", ""))) for d in getattr(validation, "data", validation)})
    start = time.perf_counter()

    scores, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(validation, batch_size=32, shuffle=False, num_workers=0):
            scores += torch.softmax(net(torch.as_tensor(batch["image"])), 1)[:, 1].tolist()
            labels += torch.as_tensor(batch["label"]).reshape(-1).tolist()
    decision = None
    if len(set(labels)) == 2:  # a calibration set of object images only has no decision threshold to choose
        youden = youden_threshold(labels, scores)
        decision = {"youden_threshold": youden,
                    "at_0.5": binary_classification_report(labels, scores, 0.5),
                    "at_youden": binary_classification_report(labels, scores, youden)}
        print(f"validation AUC {decision['at_0.5']['auc']:.4f}; accuracy {decision['at_0.5']['accuracy']:.4f} at "
              f"p=0.5, {decision['at_youden']['accuracy']:.4f} at Youden p={youden:.3f}", flush=True)

    rows = []
    for method in args.methods:
        for layer in args.layers:
            rule = calibrate_cam(net, validation, method, layer, keys=keys, smooth_sigmas=args.smooth_sigmas)
            rows.append({k: v for k, v in rule.items() if k != "table"})
            print(f"{method:10s} {layer:9s} val CAM Dice {rule['dice']:.3f} ({rule['mode']} {rule['threshold']} "
                  f"lcc {rule['largest_component']}, sigma {rule['smooth_sigma']:g})", flush=True)
    rows.sort(key=lambda r: -r["dice"])
    result = {
        "command": "OMP_NUM_THREADS=1 python scripts/select_cam.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": str(ckpt.relative_to(REPO)) if ckpt.resolve().is_relative_to(REPO) else str(ckpt),
        "validation_groups": groups,
        "n_validation_images": len(validation),
        "cam_dice_grid": "native (mask as annotated; heatmaps resized to it)" if args.native_mask else "network input",
        "wall_time_s": round(time.perf_counter() - start, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "decision": decision,
        "best": rows[0],
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print("best:", rows[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
