"""Choose and check the brain-fraction gate of bundles/brats_tumour_localisation on every axial BraTS slice.

For each case: the brain fraction of every slice's network input (brain z-score, 192 x 192 centre crop, 96 x 96 area
resize, as the bundle), the smallest fraction among tumour slices (>= 50 tumour pixels), and the committed
classifier's probability with and without the gate. The threshold is chosen on the training cases only; the
held-out case is reported, not used. Writes JSON (default bundles/brats_tumour_localisation/docs/brain_gate.json).

    OMP_NUM_THREADS=1 python scripts/brats_brain_gate.py [--data_dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import CenterSpatialCrop, Resize

from medcnn.data import resolve_data_dir
from medcnn.data.brats import brats_case_datalist, load_brats_case, normalise_in_brain
from medcnn.networks import BrainFractionGate, brain_fraction

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brats_tumour_localisation"


def case_slices(entry: dict, crop: list, size: list) -> tuple[torch.Tensor, np.ndarray]:
    """Network inputs ``(D, C, h, w)`` of every axial slice of a case and its tumour areas ``(D,)`` in native pixels."""
    v = load_brats_case(entry)
    image = torch.from_numpy(normalise_in_brain(v["image"], v["brainmask"], v["case"]))  # (C, H, W, D)
    image = Resize([*size, -1], mode="area")(CenterSpatialCrop([*crop, -1])(image))
    return torch.as_tensor(image).permute(3, 0, 1, 2).float(), (v["label"] > 0).sum(axis=(0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", default=None,
                    help="BraTS folder (default: $MEDCNN_DATA_DIR/brats2015_deepmedic_subset)")
    ap.add_argument("--out", default=str(BUNDLE / "docs" / "brain_gate.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["bundle_root"] = str(BUNDLE)
    data_dir = args.data_dir or str(resolve_data_dir("brats2015_deepmedic_subset", str(BUNDLE)))
    crop, size = parser["crop_size"], parser["spatial_size"]
    min_tumour, threshold = parser["min_tumour_pixels"], float(parser["gate_min_brain_fraction"])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True, map_location="cpu"))
    net.eval()
    gated = BrainFractionGate(net, min_brain_fraction=threshold).eval()
    report: dict = {"threshold": threshold, "min_tumour_pixels": min_tumour, "cases": {}}
    for role, cases in (("train", parser["train_cases"]), ("test", parser["test_cases"])):
        for entry in brats_case_datalist(data_dir, cases):
            x, area = case_slices(entry, crop, size)
            frac = brain_fraction(x).numpy()
            with torch.no_grad():
                p = torch.softmax(net(x), 1)[:, 1].numpy()
                p_gated = torch.softmax(gated(x), 1)[:, 1].numpy()
            tumour = area >= min_tumour
            below = frac < threshold
            report["cases"][entry["case"]] = {
                "role": role,
                "n_slices": int(len(frac)),
                "n_no_brain": int((frac == 0).sum()),
                "n_below_threshold": int(below.sum()),
                "n_tumour_slices_below_threshold": int((below & tumour).sum()),
                "min_brain_fraction_of_tumour_slices": round(float(frac[tumour].min()), 4),
                "p_on_no_brain_slices_ungated": sorted({round(float(v), 3) for v in p[frac == 0]}),
                "n_called_tumour_below_threshold_ungated": int((below & (p >= 0.5)).sum()),
                "n_called_tumour_below_threshold_gated": int((below & (p_gated >= 0.5)).sum()),
                "n_calls_changed_above_threshold": int(((p >= 0.5) != (p_gated >= 0.5))[~below].sum()),
            }
    train = [c for c in report["cases"].values() if c["role"] == "train"]
    report["rule"] = (f"brain fraction of the network input < {threshold} -> 'no tumour'; chosen as the largest round "
                      f"value below the smallest tumour-slice brain fraction of the training cases "
                      f"({min(c['min_brain_fraction_of_tumour_slices'] for c in train)})")
    report["load_average"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
