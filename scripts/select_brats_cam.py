#!/usr/bin/env python
"""Choose the CAM method and target layer of bundles/brats_tumour_localisation on VALIDATION slices only.

For every (method, layer) pair the threshold rule (fraction of the max or Otsu, with/without the largest connected
component) is calibrated with :func:`medcnn.localisation.calibrate_cam` on the tumour slices of the validation
blocks of the two training cases; the held-out test case is never loaded. Writes a JSON table sorted by
validation CAM Dice; the best pair goes into ``cam_method`` / ``cam_layer`` of the bundle's configs::

    OMP_NUM_THREADS=1 python scripts/select_brats_cam.py --out bundles/brats_tumour_localisation/docs/cam_selection.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_tumour_localisation"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcampp", "hirescam", "layercam", "xgradcam"])
    parser.add_argument("--layers", nargs="+", default=["blocks.0", "blocks.1", "blocks.2", "blocks.3"])
    parser.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt")
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs" / "cam_selection.json")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="ID=JSON",
                        help="config overrides, e.g. network_def#num_blocks=3 (for checkpoints of other settings)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from monai.bundle import ConfigParser

    from medcnn.localisation import calibrate_cam

    config = ConfigParser()
    config.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "evaluate.json")])
    config["bundle_root"] = str(BUNDLE)
    if args.dataset_dir:
        config["dataset_dir"] = args.dataset_dir
    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = json.loads(value)
    net = config.get_parsed_content("network_def")
    net.load_state_dict(torch.load(args.ckpt, weights_only=True, map_location="cpu"))
    net.eval()
    validation = config.get_parsed_content("calibration#dataset")  # validation blocks of the training cases
    cases = sorted({validation.data[i]["case"] for i in range(len(validation.data))})
    rows = []
    start = time.perf_counter()
    for method in args.methods:
        for layer in args.layers:
            rule = calibrate_cam(net, validation, method, layer)
            rows.append({k: v for k, v in rule.items() if k != "table"})
            print(f"{method:10s} {layer:9s} val CAM Dice {rule['dice']:.3f} ({rule['mode']} {rule['threshold']} "
                  f"lcc {rule['largest_component']})", flush=True)
    rows.sort(key=lambda r: -r["dice"])
    result = {
        "command": "OMP_NUM_THREADS=1 python scripts/select_brats_cam.py",
        "checkpoint": str(args.ckpt.relative_to(REPO)) if args.ckpt.is_relative_to(REPO) else str(args.ckpt),
        "validation_cases": cases,
        "n_validation_slices": len(validation),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "best": rows[0],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print("best:", rows[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
