"""Kill a bundle training with SIGKILL at a random point mid-epoch, resume it with ``--resume true``, and compare
the result with an uninterrupted run of the same command.

The kill point: after a random number of finished epochs ``k`` (``1 <= k <= max_epochs - 2``, as recorded in
``training_state.pt``) plus a random fraction of the next epoch's expected duration. The comparison: epochs
completed, the per-epoch training loss and validation curve (``curves.json``), the best validation figure, and
whether the final network weights equal the uninterrupted run's bit for bit. From the repository root::

    OMP_NUM_THREADS=1 python scripts/kill_resume.py --bundle hippocampus_segmentation --output_dir /tmp/kr \\
        --reference /tmp/uninterrupted --seed 20261202 --max_epochs 10 --out kill_resume.json \\
        -- --train#trainer#max_epochs 10

Everything after ``--`` is passed to ``monai.bundle run`` (the reference run must have used the same overrides).
Another config stack (e.g. the weak -> dense segmenter) with ``--configs``, and where it writes its state and
curves (relative to ``--output_dir``) with ``--state_file`` and ``--curves``::

    OMP_NUM_THREADS=1 python scripts/kill_resume.py --bundle synthetic_localisation --output_dir /tmp/kr_seg \\
        --reference /tmp/seg_uninterrupted --max_epochs 12 --out kr_seg.json \\
        --configs configs/train.json configs/weak_train_segmenter.json \\
        --state_file segmenter_2d/training_state_segmenter.pt --curves segmenter_2d/curves.json \\
        -- --max_epochs 12 --pseudo_dir /tmp/weak_syn2d/pseudo_masks_2d
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def epochs_done(state_file: Path) -> int:
    """Finished epochs recorded in a training state file (0 while it does not exist or is being replaced)."""
    try:
        trainer = torch.load(state_file, map_location="cpu", weights_only=True)["trainer"]
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0
    return int(trainer["iteration"]) // max(1, int(trainer["epoch_length"]))


def summary(out: Path, state_file: str = "models/training_state.pt", curves_file: str = "curves.json") -> dict:
    """Epochs, best validation figure and its epoch, loss curve and final weights of a finished run."""
    curves = json.loads((out / curves_file).read_text())
    metric = next(k for k in curves if k.startswith("val_") and not k.endswith(("_x", "_time_s")))
    best = max(range(len(curves[metric])), key=curves[metric].__getitem__)
    state = torch.load(out / state_file, map_location="cpu", weights_only=True)
    return {"epochs": len(curves["epoch"]), "metric": metric, "best": curves[metric][best],
            "best_epoch": curves[f"{metric}_x"][best], "loss": curves["loss"], "val": curves[metric],
            "network": state["network"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True, help="output_dir of the uninterrupted run")
    p.add_argument("--max_epochs", type=int, required=True, help="the run's max_epochs (to choose the kill point)")
    p.add_argument("--seed", type=int, default=20261202)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--configs", nargs="+", default=["configs/train.json"], help="the config stack, in order")
    p.add_argument("--state_file", default="models/training_state.pt", help="training state, under --output_dir")
    p.add_argument("--curves", default="curves.json", help="curves.json of the run, under --output_dir")
    p.add_argument("overrides", nargs=argparse.REMAINDER)
    args = p.parse_args()
    overrides = [a for a in args.overrides if a != "--"]
    if args.output_dir.exists() and any(args.output_dir.iterdir()):
        raise SystemExit(f"{args.output_dir}: exists and is not empty")
    bundle = REPO / "bundles" / args.bundle
    config_file = args.configs[0] if len(args.configs) == 1 else repr(list(args.configs))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file,
           "--meta_file", "configs/metadata.json", "--bundle_root", str(bundle), "--output_dir", str(args.output_dir),
           *overrides]
    rng = random.Random(args.seed)
    kill_after, fraction = rng.randint(1, args.max_epochs - 2), rng.random()
    state_file = args.output_dir / args.state_file
    args.output_dir.mkdir(parents=True)
    start = time.perf_counter()
    with open(args.output_dir / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=bundle, stdout=log, stderr=subprocess.STDOUT)
        marks: dict[int, float] = {}
        while proc.poll() is None:
            done = epochs_done(state_file)
            marks.setdefault(done, time.perf_counter())
            if done >= kill_after:
                break
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"training ended before the kill point; see {args.output_dir / 'killed.log'}")
        epoch_s = (marks[done] - marks[min(marks)]) / max(1, done - min(marks)) if len(marks) > 1 else 10.0
        time.sleep(fraction * epoch_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = time.perf_counter() - start
    saved = epochs_done(state_file)
    with open(args.output_dir / "resumed.log", "w") as log:
        rc = subprocess.run(cmd + ["--resume", "true"], cwd=bundle, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"resumed run failed; see {args.output_dir / 'resumed.log'}")
    resumed = summary(args.output_dir, args.state_file, args.curves)
    reference = summary(args.reference, args.state_file, args.curves)
    same = all(torch.equal(resumed["network"][k], v) for k, v in reference["network"].items())
    result = {
        "command": " ".join(cmd), "seed": args.seed, "killed_after_s": round(killed_at, 1),
        "epochs_in_state_when_killed": saved, "kill_fraction_of_next_epoch": round(fraction, 3),
        "loadavg_end": os.getloadavg(),
        **{f"{name}_{k}": v for name, run in (("resumed", resumed), ("uninterrupted", reference))
           for k, v in run.items() if k not in ("network", "loss", "val")},
        "loss_curves_equal": resumed["loss"] == reference["loss"],
        "val_curves_equal": resumed["val"] == reference["val"],
        "max_loss_difference": max(abs(a - b) for a, b in zip(resumed["loss"], reference["loss"], strict=False)),
        "final_weights_bitwise_equal": same,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
