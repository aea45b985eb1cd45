"""``medcnn train-ensemble``: train a bundle's classifier at several seeds and write the ensemble's ``model.pt``.

Each member is the bundle's own ``configs/train.json`` run at one seed (``python -m monai.bundle run ... --seed k
--output_dir <output_dir>/member_<k>``), exactly as a single training, with its own early stopping and best-loss
checkpoint; members run ``--jobs`` at a time, the CPU threads split between them. The members' ``model.pt`` are
then put together into the state dict of :class:`medcnn.networks.ClassifierEnsemble`, which the bundle's
``inference.json`` / ``evaluate.json`` load as an ensemble (they read the number of members from the checkpoint,
:func:`medcnn.networks.checkpoint_members`).

A member that finished (``member_<k>/member.json`` written) is not trained again when the command is repeated; a
member that was killed resumes from its ``training_state.pt``. Nothing is overwritten: the ensemble's ``model.pt``
must not exist yet (the committed weights are only replaced when ``--ckpt_path`` points at them and they were
removed first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medcnn.handlers.checkpoint import training_state_completed

__all__ = ["member_command", "member_summary", "train_ensemble", "add_parser"]


def member_command(bundle_root: Path, seed: int, member_dir: Path, extra: list[str] | None = None,
                   resume: bool = False) -> list[str]:
    """The ``monai.bundle run`` command line of one member (the bundle's train.json at ``seed``)."""
    cfg = bundle_root / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg / "train.json"),
           "--meta_file", str(cfg / "metadata.json"), "--bundle_root", str(bundle_root),
           "--seed", str(int(seed)), "--output_dir", str(member_dir)]
    if (cfg / "logging.conf").is_file():
        cmd += ["--logging_file", str(cfg / "logging.conf")]
    if resume:
        cmd += ["--resume", "true"]
    return cmd + list(extra or [])


def _default_seeds(bundle_root: Path) -> list[int]:
    path = bundle_root / "configs" / "inference.json"
    seeds = json.loads(path.read_text()).get("ensemble_seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{path}: no 'ensemble_seeds' list of integers: this bundle's inference does not load an "
                         "ensemble; pass --seeds")
    return seeds


def member_summary(curves_path: Path) -> dict:
    """Epochs run, the best validation loss and its epoch, and the other validation figures at that epoch, from
    a member's ``curves.json`` (what :class:`medcnn.handlers.TrainingCurvesHandler` writes); ``{}`` without it."""
    if not curves_path.is_file():
        return {}
    curves = json.loads(curves_path.read_text())
    losses, epochs = curves.get("val_loss") or [], curves.get("val_loss_x") or []
    summary: dict = {"epochs": len(curves.get("epoch") or [])}
    if losses:
        best = min(range(len(losses)), key=losses.__getitem__)
        summary.update(best_epoch=epochs[best], best_val_loss=round(float(losses[best]), 4))
        for name in ("val_auc", "val_accuracy", "val_dice"):
            x = curves.get(f"{name}_x") or []
            if epochs[best] in x:
                summary[f"{name}_at_best"] = round(float(curves[name][x.index(epochs[best])]), 4)
    return summary


def train_ensemble(bundle_root: str | os.PathLike, seeds: list[int] | None = None,
                   output_dir: str | os.PathLike | None = None, ckpt_path: str | os.PathLike | None = None,
                   jobs: int = 2, extra: list[str] | None = None, log=print) -> dict:
    """Train the members (see the module docstring) and write the ensemble; returns its record
    (``<output_dir>/ensemble.json``)."""
    from medcnn.networks.ensemble import assemble_ensemble

    bundle_root = Path(bundle_root).resolve()
    if not (bundle_root / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"{bundle_root}: no configs/train.json (is this a bundle folder?)")
    seeds = _default_seeds(bundle_root) if not seeds else [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"train-ensemble: needs at least two different seeds, got {seeds}")
    out = Path(output_dir or bundle_root / "eval" / "ensemble").resolve()
    ckpt = Path(ckpt_path or out / "models" / "model.pt").resolve()
    if ckpt.exists():
        raise FileExistsError(f"{ckpt} exists: the ensemble's weights are never replaced; remove it or pass another "
                              "--ckpt_path")
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(int(jobs), len(seeds)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(seed: int) -> dict:
        member_dir = out / f"member_{seed}"
        record_path = member_dir / "member.json"
        if record_path.is_file():
            log(f"member seed {seed}: already trained ({record_path}), kept")
            return json.loads(record_path.read_text())
        state = member_dir / "models" / "training_state.pt"
        model = member_dir / "models" / "model.pt"
        resume = state.is_file()
        cmd = member_command(bundle_root, seed, member_dir, extra, resume)
        log_path = out / f"member_{seed}.log"
        start = time.time()
        # killed after its training ended but before its record was written: the training is not run again (a
        # resumed early-stopped run would train past its stop); the record is written from what the run left
        ended = resume and model.is_file() and training_state_completed(state)
        if ended:
            log(f"member seed {seed}: its training had ended ({state}), record written now")
        else:
            member_dir.mkdir(parents=True, exist_ok=True)
            log(f"member seed {seed}: {'resumed' if resume else 'started'}, log {log_path}")
            with open(log_path, "a") as f:
                code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=bundle_root)
            if code != 0:
                raise RuntimeError(f"train-ensemble: member seed {seed} failed (exit code {code}); see {log_path}")
        if not model.is_file():
            raise FileNotFoundError(f"train-ensemble: member seed {seed} finished without {model}; see {log_path}")
        curves = member_dir / "curves.json"
        record = {"seed": seed, "model": str(model), "log": str(log_path),
                  "wall_s": None if ended else round(time.time() - start, 1), "torch_threads": threads,
                  "command": cmd, "resumed": resume and not ended, "record_written_after_the_run": ended,
                  **member_summary(curves)}
        if curves.is_file():
            record["curves"] = str(curves)
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        # one line per member: a seed that trained badly shows here, not only in its log
        figures = ", ".join(f"{k} {v}" for k, v in record.items() if k.startswith(("epochs", "best_", "val_")))
        took = "trained earlier" if ended else f"done in {record['wall_s']:.0f} s"
        log(f"member seed {seed}: {took} ({figures})")
        return record

    start = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        members = list(pool.map(run, seeds))
    assemble_ensemble([m["model"] for m in members], ckpt)
    record = {"seeds": seeds, "members": members, "model": str(ckpt), "jobs": jobs,
              "wall_s": round(time.time() - start, 1),
              "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    (out / "ensemble.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"ensemble of seeds {seeds}: {ckpt} ({record['wall_s']:.0f} s); evaluate it with configs/evaluate.json "
        f"--ckpt_path {ckpt}")
    return record


def add_parser(parser) -> object:
    """Configure the ``medcnn train-ensemble`` subcommand."""
    parser.description = ("Train a bundle's classifier with its own train.json at several seeds and write the "
                          "ensemble's model.pt (mean logits), the network its inference.json loads.")
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/lgg_tumour_localisation")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="member seeds (default: the bundle's inference.json 'ensemble_seeds')")
    parser.add_argument("--output_dir", help="members and ensemble.json here (default: <bundle>/eval/ensemble)")
    parser.add_argument("--ckpt_path", help="the ensemble's weights (default: <output_dir>/models/model.pt; must "
                        "not exist)")
    parser.add_argument("--jobs", type=int, default=2, help="members trained at the same time (default 2; the CPU "
                        "threads are split between them)")
    parser.add_argument("overrides", nargs="*", help="after '--': train.json overrides given to every member, e.g. "
                        "-- --device cuda:0")

    def run(args) -> int:
        train_ensemble(args.bundle, args.seeds, args.output_dir, args.ckpt_path, args.jobs, args.overrides)
        return 0

    parser.set_defaults(run=run)
    return run
