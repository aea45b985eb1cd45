#!/usr/bin/env python
"""Compare CAM methods x target layers on the synthetic localisation bundle's trained model.

For every (method, layer) the mask rule (threshold mode, fraction, largest component) is chosen on the
validation seed, then Dice is measured on the positive images of the test seed. The default method / layer of
the bundle is the row with the best *validation* Dice (never chosen on test). Writes JSON and a Markdown table.

    python scripts/compare_cam_methods.py                      # 2D, committed models/model.pt
    python scripts/compare_cam_methods.py --config 3d          # 3D (configs/3d.json, models/model_3d.pt)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from medcnn.data.synthetic import synthetic_datalist
from medcnn.handlers.metrics_json import write_metrics_json
from medcnn.localisation import (
    UnsupportedCAMError,
    available_cam_methods,
    calibrate_cam,
    evaluate_cam,
    mask_rule,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synthetic_localisation"
logger = logging.getLogger("compare_cam_methods")


def load_bundle(bundle: Path, config: str | None, ckpt: str | None):
    """The bundle's network (weights loaded, eval mode) and its parsed config."""
    from monai.bundle import ConfigParser

    files = [str(bundle / "configs" / "train.json")]
    if config:
        files.append(str(bundle / "configs" / f"{config}.json"))
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    path = Path(ckpt) if ckpt else Path(parser.get_parsed_content("ckpt_path"))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval(), parser, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(BUNDLE))
    ap.add_argument("--config", default=None, help="override config name in configs/ (e.g. 3d)")
    ap.add_argument("--ckpt", default=None, help="weights file (default: the bundle's ckpt_path)")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method available for the dims")
    ap.add_argument("--layers", nargs="*", default=["blocks.0", "blocks.1", "blocks.2", "blocks.3"])
    ap.add_argument("--num_val", type=int, default=None, help="validation images (default: the bundle's num_val)")
    ap.add_argument("--num_test", type=int, default=None, help="test images (default: the bundle's num_test)")
    ap.add_argument("--output", default=None, help="output stem (default: <bundle>/docs/cam_methods_<2d|3d>)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    bundle = Path(args.bundle)
    net, parser, ckpt = load_bundle(bundle, args.config, args.ckpt)
    dims = int(parser.get_parsed_content("spatial_dims"))
    synth = parser.get_parsed_content("synthetic")
    val_seed, test_seed = parser.get_parsed_content("val_seed"), parser.get_parsed_content("test_seed")
    num_val = args.num_val or parser.get_parsed_content("num_val")
    num_test = args.num_test or parser.get_parsed_content("num_test")
    val = synthetic_datalist(num_val, val_seed, **synth)
    test = synthetic_datalist(num_test, test_seed, **synth)
    methods = args.methods or available_cam_methods(dims)

    rows = []
    for layer in args.layers:
        for method in methods:
            t0 = time.time()
            row = {"method": method, "layer": layer}
            try:
                rule = calibrate_cam(net, val, method, layer)
                res = evaluate_cam(net, test, method, layer, **mask_rule(rule))
            except UnsupportedCAMError as exc:
                row["unsupported"] = str(exc)
                rows.append(row)
                logger.info("%s at %s: unsupported (%s)", method, layer, exc)
                continue
            row.update(val_dice=rule["dice"], rule=mask_rule(rule), test_dice=res["dice"],
                       test_dice_std=res["dice_std"], n_test=res["n_images"], seconds=round(time.time() - t0, 2))
            rows.append(row)
            logger.info("%s at %s: val %.3f test %.3f +- %.3f (%s)", method, layer, rule["dice"], res["dice"],
                        res["dice_std"], row["rule"])
    scored = [r for r in rows if "val_dice" in r]
    best = max(scored, key=lambda r: r["val_dice"])
    for unsupported in (m for m in available_cam_methods() if m not in available_cam_methods(dims)):
        rows.append({"method": unsupported, "layer": "*", "unsupported": f"no {dims}D support"})
    out = Path(args.output) if args.output else bundle / "docs" / f"cam_methods_{dims}d"
    ckpt_name = str(ckpt.relative_to(bundle) if ckpt.is_relative_to(bundle) else ckpt)
    report = {"spatial_dims": dims, "checkpoint": ckpt_name,
              "val_seed": val_seed, "test_seed": test_seed, "num_val": num_val, "num_test": num_test,
              "selected_by_validation": {k: best[k] for k in ("method", "layer", "rule", "val_dice", "test_dice")},
              "rows": rows}
    write_metrics_json(report, out.with_suffix(".json"))

    lines = [
        f"CAM method x target layer, {dims}D (`{report['checkpoint']}`): mask rule chosen on validation seed {val_seed}"
        f" ({num_val} images), Dice on the positive images of test seed {test_seed} ({num_test} images).",
        f"Selected by validation Dice: **{best['method']} at {best['layer']}**.",
        "",
        "| method | layer | rule (mode, fraction, largest component) | val Dice | test Dice (mean ± std) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "unsupported" in r:
            lines.append(f"| {r['method']} | {r['layer']} | unsupported: {r['unsupported'].split(';')[0]} | | |")
            continue
        rule = r["rule"]
        frac = "-" if rule["mode"] == "otsu" else f"{rule['threshold']:.2f}"
        mark = "**" if r is best else ""
        lines.append(f"| {mark}{r['method']}{mark} | {r['layer']} | {rule['mode']}, {frac}, "
                     f"{rule['largest_component']} | {r['val_dice']:.3f} | {r['test_dice']:.3f} ± "
                     f"{r['test_dice_std']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report["selected_by_validation"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
