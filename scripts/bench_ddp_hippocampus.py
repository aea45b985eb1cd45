"""Hippocampus bundle on 1 vs 2 processes: wall time, samples/s and validation Dice, the runs back to back.

Three trainings of ``bundles/hippocampus_segmentation`` with the same budget (``--epochs``), one after the other so
they see a similar machine load:

- ``torchrun --standalone --nnodes=1 --nproc_per_node=2`` with ``configs/multi_gpu_train.json`` (Gloo on the CPU,
  ``OMP_NUM_THREADS=1`` per process, ``--batch_size_per_process`` images per process and step);
- one process with ``OMP_NUM_THREADS=2``;
- one process with ``OMP_NUM_THREADS=1``.

Figures come from each run's ``curves.json`` (written by rank 0) and the wall time of the command, with the load
average before and after each run::

    python scripts/bench_ddp_hippocampus.py --epochs 30 --out bundles/hippocampus_segmentation/docs/bench_ddp.json

On a shared machine the absolute times depend on the other jobs; compare the ratios of runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from medcnn.bench import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_segmentation"


def run_command(nproc: int, threads: int, out_dir: Path, epochs: int, batch_size: int) -> list[str]:
    """The training command of one configuration (torchrun for ``nproc > 1``)."""
    configs = ["configs/train.json"] + (["configs/multi_gpu_train.json"] if nproc > 1 else [])
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    return launcher + ["-m", "monai.bundle", "run", "--config_file", str(configs),
                       "--meta_file", "configs/metadata.json", "--bundle_root", str(BUNDLE),
                       "--output_dir", str(out_dir), "--train#trainer#max_epochs", str(epochs),
                       "--train#dataloader#batch_size", str(batch_size)]


def figures(curves_path: Path, n_train: int) -> dict:
    """Epochs, training time, samples/s (whole run and median epoch without validation) and best validation Dice."""
    c = json.loads(curves_path.read_text())
    t, epochs, val_x = c["time_s"], c["epoch"], set(c.get("val_mean_dice_x", []))
    plain = [t[i] - t[i - 1] for i in range(1, len(t)) if epochs[i] not in val_x]
    dice = c.get("val_mean_dice", [])
    best = max(range(len(dice)), key=dice.__getitem__) if dice else None
    return {
        "epochs": len(epochs),
        "trainer_time_s": t[-1],
        "samples_per_s_whole_run": round(n_train * len(epochs) / t[-1], 2),
        "samples_per_s_epoch_median": round(n_train / statistics.median(plain), 2) if plain else None,
        "best_val_mean_dice": dice[best] if dice else None,
        "best_val_epoch": c["val_mean_dice_x"][best] if dice else None,
        "final_train_loss": c["loss"][-1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=4, help="images per step of the one-process runs")
    p.add_argument("--batch_size_per_process", type=int, default=2,
                   help="images per step and process of the torchrun run (2 x 2 = the same effective batch as 4)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_ddp_hippocampus"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", default="2proc,1proc_2threads,1proc_1thread")
    args = p.parse_args()
    n_train = len(json.loads((BUNDLE / "configs" / "split.json").read_text())["training"])
    configs = {"2proc": (2, 1, args.batch_size_per_process), "1proc_2threads": (1, 2, args.batch_size),
               "1proc_1thread": (1, 1, args.batch_size)}
    results = {"bundle": BUNDLE.name, "epochs_budget": args.epochs, "train_cases": n_train, "machine": machine_info(),
               "runs": {}}
    for name in args.runs.split(","):
        nproc, threads, batch = configs[name]
        out_dir = args.workdir / name
        if out_dir.exists() and any(out_dir.iterdir()):
            raise SystemExit(f"{out_dir}: exists and is not empty; give another --workdir")
        out_dir.mkdir(parents=True, exist_ok=True)
        cmd = run_command(nproc, threads, out_dir, args.epochs, batch)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        before, start = load_average(), time.perf_counter()
        print(f"{name}: {' '.join(cmd)}", flush=True)
        with open(out_dir / "run.log", "w") as log:
            proc = subprocess.run(cmd, cwd=BUNDLE, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out_dir / 'run.log'}")
        entry = {"processes": nproc, "threads_per_process": threads, "batch_per_process": batch,
                 "effective_batch": nproc * batch, "command": f"OMP_NUM_THREADS={threads} " + " ".join(cmd),
                 "wall_time_s": round(wall, 1), "loadavg_before": before, "loadavg_after": load_average(),
                 **figures(out_dir / "curves.json", n_train)}
        results["runs"][name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
