"""Benchmark the PneumoniaMNIST bundle's network: training / inference samples/s and time-to-accuracy, as JSON.

Usage::

    python scripts/bench_pneumonia.py --curves bundles/pneumonia_classification/eval/curves.json \
        --out bundles/pneumonia_classification/docs/bench.json

* ``train_samples_per_s``: Adam steps of the classic CNN (batch 64, 1x28x28, forward + backward + step) in a plain
  PyTorch loop on in-memory tensors (no data loading), median of ``--repeats`` timed runs.
* ``infer_samples_per_s``: ``torch.no_grad`` forward passes (batch 256), eager and TorchScript.
* ``bundle_*``: from the ``curves.json`` that the default ``train.json`` writes (``TrainingCurvesHandler``):
  the end-to-end training throughput including MONAI data loading, augmentation and per-epoch validation, and the
  wall time at which validation AUC / accuracy first reached the given levels (time-to-accuracy).
The load average of the (shared) machine is recorded next to the figures; timings are only comparable at equal load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from medcnn.networks import small_image_classifier

logger = logging.getLogger("bench_pneumonia")

N_TRAIN = 3882  # PneumoniaMNIST train split used by the bundle


def _time_train(net: torch.nn.Module, batch: int, steps: int, repeats: int) -> float:
    """Median samples/s of ``steps`` Adam steps on a random ``(batch, 1, 28, 28)`` batch."""
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 2, (batch,))
    net.train()
    rates = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
        if r:  # the first run warms up
            rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def _time_infer(net, batch: int, steps: int, repeats: int) -> float:
    """Median samples/s of ``steps`` no-grad forward passes on a ``(batch, 1, 28, 28)`` batch."""
    x = torch.rand(batch, 1, 28, 28)
    rates = []
    with torch.no_grad():
        for r in range(repeats + 1):
            start = time.perf_counter()
            for _ in range(steps):
                net(x)
            if r:
                rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def time_to_level(curves: dict, metric: str, level: float) -> dict:
    """First validation at which ``metric >= level``: ``{"epoch", "time_s"}`` (``None`` values if never)."""
    for value, epoch, t in zip(curves.get(metric, []), curves.get(f"{metric}_x", []),
                               curves.get(f"{metric}_time_s", []), strict=False):
        if value is not None and value >= level:
            return {"level": level, "epoch": epoch, "time_s": t}
    return {"level": level, "epoch": None, "time_s": None}


def bundle_figures(curves_path: Path, auc_levels: list[float], acc_levels: list[float]) -> dict:
    """Throughput and time-to-accuracy of the default training run from its ``curves.json``."""
    curves = json.loads(curves_path.read_text())
    epochs, total = len(curves["epoch"]), curves["time_s"][-1]
    return {
        "bundle_curves": str(curves_path),
        "bundle_epochs": epochs,
        "bundle_train_time_s": total,
        "bundle_train_samples_per_s": round(N_TRAIN * epochs / total, 1),
        "bundle_best_val_auc": max(curves.get("val_auc", [float("nan")])),
        "time_to_val_auc": [time_to_level(curves, "val_auc", lv) for lv in auc_levels],
        "time_to_val_accuracy": [time_to_level(curves, "val_accuracy", lv) for lv in acc_levels],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="classic_cnn", help="classic_cnn or resnet")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curves", type=Path, default=None, help="curves.json of a default training run")
    parser.add_argument("--auc_levels", type=float, nargs="*", default=[0.98, 0.99, 0.995])
    parser.add_argument("--acc_levels", type=float, nargs="*", default=[0.93, 0.95])
    parser.add_argument("--out", type=Path, default=None, help="JSON output file (stdout only if omitted)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = small_image_classifier(args.network)
    result: dict = {
        "network": args.network,
        "parameters": sum(p.numel() for p in net.parameters()),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    result["train_samples_per_s"] = round(_time_train(net, 64, args.steps, args.repeats), 1)
    net.eval()
    result["infer_samples_per_s"] = round(_time_infer(net, 256, args.steps, args.repeats), 1)
    scripted = torch.jit.script(net)
    result["infer_torchscript_samples_per_s"] = round(_time_infer(scripted, 256, args.steps, args.repeats), 1)
    if args.curves is not None:
        result.update(bundle_figures(args.curves, args.auc_levels, args.acc_levels))
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        logger.info("written %s", args.out)
    return result


if __name__ == "__main__":
    main()
