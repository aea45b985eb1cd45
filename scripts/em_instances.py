"""Choose the EM bundle's instance post-processing (seeded watershed of the membrane probability) on validation slices.

Two steps, so the slow part runs once:

``cache``   runs the bundle's evaluation inferer (8-view ensemble around the sliding window, ``evaluate.json``) with
            a checkpoint on a slice split (default: the validation slices 20-24) and stores the membrane
            probability maps and reference masks in one ``.npz``.
``search``  scores a grid of parameters (Gaussian sigma, seed depth, agglomeration threshold) on the
            cached maps with the challenge's V_rand / V_info (:mod:`medcnn.metrics.rand`), next to the thinned
            threshold sweep without the instance step, and writes the grid and the best parameters (highest mean
            V_rand, ties broken by V_info) as JSON.

    cd bundles/em_membrane_segmentation
    OMP_NUM_THREADS=1 python ../../scripts/em_instances.py cache --out eval/val_probabilities.npz
    OMP_NUM_THREADS=1 python ../../scripts/em_instances.py search --cache eval/val_probabilities.npz \
        --out docs/instances_val.json

The test slices are never needed here: ``cache`` refuses them unless ``--allow_test`` is given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
from em_ensemble import BUNDLE, SPLITS, membrane_probabilities, shown_path

SIGMAS = (1.0, 2.0)
SEED_DEPTHS = (0.01, 0.02, 0.05)
MERGE_THRESHOLDS = (0.0, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)  # 0 = watershed only, no agglomeration

logger = logging.getLogger("em_instances")


def cache(args: argparse.Namespace) -> Path:
    """Membrane probabilities ``(S, H, W)`` float32 and reference membrane masks ``(S, H, W)`` of a split -> .npz."""
    if args.split == "test_slices" and not args.allow_test:
        raise SystemExit("the test slices are scored once, by the bundle's evaluate.json; pass --allow_test to cache")
    slices, probs, truths = [], [], []
    start = time.perf_counter()
    for index, prob, truth in membrane_probabilities(args.ckpt, args.split, args.dataset_dir):
        slices.append(index)
        probs.append(prob)
        truths.append(truth)
        logger.info("slice %d done (%.1f s)", index, time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        slices=np.array(slices),
        membrane_probability=np.stack(probs),
        membrane_truth=np.stack(truths),
        checkpoint=np.array(shown_path(args.ckpt)),
        split=np.array(args.split),
    )
    logger.info("%d slices of %s cached in %s (%.1f s)", len(slices), args.split, out, time.perf_counter() - start)
    return out


def search(args: argparse.Namespace) -> dict:
    """Grid of watershed parameters scored on cached validation maps; returns (and writes) the table and the best."""
    from tqdm import tqdm

    from medcnn.metrics import best_rand_info, foreground_restricted_scores, rand_info_sweep
    from medcnn.metrics.rand import SCORE_KEYS
    from medcnn.transforms import membrane_to_instances

    data = np.load(args.cache)
    if str(data["split"]) == "test_slices":
        raise SystemExit(f"{args.cache} holds test slices: parameters are chosen on validation slices only")
    probs, truths = data["membrane_probability"], data["membrane_truth"]
    cells = [~t for t in truths]
    from skimage.measure import label

    true_labels = [label(c, connectivity=1) for c in cells]
    thinned = best_rand_info(np.stack([rand_info_sweep(1.0 - p, c) for p, c in zip(probs, cells, strict=True)]))
    rows = []
    grid = list(itertools.product(SIGMAS, SEED_DEPTHS, MERGE_THRESHOLDS))
    start = time.perf_counter()
    for sigma, depth, merge in tqdm(grid, desc="watershed grid", mininterval=5):
        per_slice = [
            foreground_restricted_scores(t, membrane_to_instances(p, sigma, depth, merge))
            for p, t in zip(probs, true_labels, strict=True)
        ]
        row = {"sigma": sigma, "seed_depth": depth, "merge_threshold": merge}
        row.update({k: float(np.mean([s[k] for s in per_slice])) for k in SCORE_KEYS})
        rows.append(row)
    best = max(rows, key=lambda r: (round(r["v_rand"], 6), r["v_info"]))
    result = {
        "cache": shown_path(args.cache),
        "checkpoint": str(data["checkpoint"]),
        "split": str(data["split"]),
        "slices": data["slices"].tolist(),
        "without_instances_thinned_sweep": thinned,
        "best": best,
        "grid_seconds": round(time.perf_counter() - start, 1),
        "grid": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("without_instances_thinned_sweep", "best", "grid_seconds")}, indent=2))
    return result


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run the 8-view ensemble once and store the probability maps")
    c.add_argument("--ckpt", default=str(BUNDLE / "models" / "model.pt"))
    c.add_argument("--split", choices=SPLITS, default="val_slices")
    c.add_argument("--allow_test", action="store_true")
    c.add_argument("--dataset_dir", default=None, help="ISBI data folder (default: the bundle's resolution)")
    c.add_argument("--out", required=True, help=".npz file for the maps")
    s = sub.add_parser("search", help="score the watershed parameter grid on cached maps")
    s.add_argument("--cache", required=True)
    s.add_argument("--out", default=None, help="JSON file for the grid and the best parameters")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return cache(args) if args.command == "cache" else search(args)


if __name__ == "__main__":
    main()
