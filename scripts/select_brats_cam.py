#!/usr/bin/env python
"""Choose the CAM method and target layer of bundles/brats_tumour_localisation on VALIDATION slices only.

:mod:`select_cam` on the bundle's ``calibration#dataset`` (the tumour slices of the validation blocks of the
training cases; the held-out test case is never loaded). Arguments are those of ``scripts/select_cam.py``; the
best pair goes into ``cam_method`` / ``cam_layer`` of the bundle's configs::

    OMP_NUM_THREADS=1 python scripts/select_brats_cam.py --out bundles/brats_tumour_localisation/docs/cam_selection.json
"""

from __future__ import annotations

import sys

from select_cam import main as select_cam

BRATS = ["--bundle", "brats_tumour_localisation", "--configs", "train.json", "evaluate.json",
         "--dataset_id", "calibration#dataset"]


def main(argv: list[str] | None = None) -> int:
    return select_cam(BRATS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
