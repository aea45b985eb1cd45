"""Run every training bundle's ``configs/multi_gpu_train.json`` once under ``torchrun`` (2 Gloo processes on the CPU).

A tiny override per bundle: few training and validation items (``torch.utils.data.Subset`` of the bundle's own
datasets, nothing cached beyond them), ``--epochs`` epochs, validation every epoch. Each run must exit 0, finish the
epochs (``training_state.pt``), record a finite all-reduced validation figure, and leave files from rank 0 only (one
process's TensorBoard events). From the repository root, with the bundles' data under ``MEDCNN_DATA_DIR``::

    OMP_NUM_THREADS=1 python scripts/ddp_smoke.py --out /tmp/ddp_smoke [--bundles hippocampus_segmentation,...]

Writes ``<out>/summary.json`` and each run's log ``<out>/<bundle>/run.log``; exits 1 when a bundle fails. It is a
script, not a test: eight bundles under torchrun take minutes (``tests/test_distributed.py`` runs one in CI).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

# what keeps a bundle's run small beyond the item count (ids of its train.json); image sizes as its tests use
EXTRA: dict[str, dict] = {
    "synthetic_localisation": {"num_train": 16, "num_val": 8, "synthetic#spatial_size": [32, 32],
                               "synthetic#radius_range": [4.0, 8.0], "synthetic#contrast": 3.0, "num_threads": 1},
    "pneumonia_classification": {"train_limit": 32, "val_limit": 16, "num_workers": 0, "num_threads": 1},
}

#: bundles that sample slices from cached volumes partitioned per rank (no ``train#sampler``, ``train#dataset`` a
#: ``PatchDataset``): their own small-run ids replace the ``Subset`` overrides of :func:`tiny_overrides`
VOLUME_PIPELINES: dict[str, dict] = {
    "brats_tumour_segmentation": {"slices_per_case": 8, "batch_size": 4},
    "brats_tumour_localisation": {"slices_per_case": 8, "batch_size": 4},
}


def tiny_overrides(n_train: int, n_val: int, epochs: int) -> dict:
    """Config overrides that train on the first ``n_train`` / validate on the first ``n_val`` items, uncached."""
    return {
        "train#trainer#max_epochs": epochs,
        "val_interval": 1,
        "train#dataset#cache_rate": 0.0,
        "validate#dataset#cache_rate": 0.0,
        "train#dataloader#dataset": f"$torch.utils.data.Subset(@train#dataset, range(min({n_train}, "
                                    "len(@train#dataset))))",
        "train#sampler#dataset": "@train#dataloader#dataset",
        "validate#dataloader#dataset": f"$torch.utils.data.Subset(@validate#dataset, range(min({n_val}, "
                                       "len(@validate#dataset))))",
        "validate#sampler#dataset": "@validate#dataloader#dataset",
    }


def command(bundle: Path, out: Path, overrides: dict) -> list[str]:
    """``torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run`` with train + multi_gpu_train."""
    configs = [str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")]
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
            "-m", "monai.bundle", "run", "--config_file", str(configs),
            "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
            "--output_dir", str(out), "--ckpt_dir", str(out / "ckpt")]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def check(out: Path, epochs: int) -> dict:
    """The figures of a finished run; raises ``AssertionError`` saying what is wrong."""
    state_file = out / "ckpt" / "training_state.pt"
    assert state_file.is_file(), f"{state_file}: missing"
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    trainer = state["trainer"]
    done = trainer["iteration"] // trainer["epoch_length"]
    assert done == epochs, f"{done} epochs finished, expected {epochs}"
    best = state.get("evaluator", {}).get("best_metric")
    assert best is not None and math.isfinite(best), f"validation figure {best}"
    pids = {p.name.split(".")[-2] for p in out.rglob("events.out.tfevents.*")}
    assert len(pids) <= 1, f"TensorBoard files from {len(pids)} processes: {sorted(map(str, out.rglob('events*')))}"
    return {"epochs": done, "iterations_per_epoch_per_rank": trainer["epoch_length"], "best_val_metric": best,
            "random_state_ranks": len(state.get("random_state", []))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bundles", default="", help="comma-separated names (default: every bundle with the config)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n_train", type=int, default=8)
    p.add_argument("--n_val", type=int, default=4)
    args = p.parse_args()
    names = args.bundles.split(",") if args.bundles else sorted(
        b.parent.parent.name for b in BUNDLES.glob("*/configs/multi_gpu_train.json"))
    summary = {}
    for name in names:
        out = args.out / name
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out}: exists and is not empty; give another --out")
        out.mkdir(parents=True, exist_ok=True)
        base = ({"train#trainer#max_epochs": args.epochs, "val_interval": 1, **VOLUME_PIPELINES[name]}
                if name in VOLUME_PIPELINES else tiny_overrides(args.n_train, args.n_val, args.epochs))
        overrides = {**base, **EXTRA.get(name, {})}
        cmd = command(BUNDLES / name, out, overrides)
        start = time.perf_counter()
        with open(out / "run.log", "w") as log:
            rc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=log,
                                stderr=subprocess.STDOUT).returncode
        entry: dict = {"seconds": round(time.perf_counter() - start, 1), "loadavg": os.getloadavg()}
        try:
            assert rc == 0, f"exit code {rc}"
            entry.update(status="ok", **check(out, args.epochs))
        except AssertionError as exc:
            entry.update(status="failed", reason=str(exc), log=str(out / "run.log"))
        summary[name] = entry
        print(f"{name}: {json.dumps(entry)}", flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if all(e["status"] == "ok" for e in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
