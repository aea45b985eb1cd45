#!/usr/bin/env python
"""Benchmark the synthetic localisation bundle: training samples/s, time-to-accuracy, inference samples/s.

1. Runs the bundle's default ``train.json`` (optionally with ``configs/3d.json``) through ``monai.bundle`` with
   timing handlers: wall time, training samples/s (iterations only), and the time until the validation accuracy
   first reaches ``--target`` (time-to-accuracy).
2. Times the same network and batch in a plain PyTorch loop (forward + backward + Adam step) for comparison,
   and counts its FLOPs to give the achieved fraction of the machine's conv throughput (measured on one large
   convolution).
3. Times eval-mode inference, eager vs TorchScript (outputs checked equal).

Writes one JSON (with the load average) to ``--output``.

    python scripts/bench_synthetic.py --threads 2 --output runs/bench/synthetic_2d.json
    python scripts/bench_synthetic.py --config 3d --target 0.98 --output runs/bench/synthetic_3d.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synthetic_localisation"
logger = logging.getLogger("bench_synthetic")


def _flops_per_sample(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs of one sample (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x[:1])
    return float(counter.get_total_flops())


def _conv_peak_gflops(dims: int, seconds: float = 2.0) -> float:
    """GFLOP/s of one large 3x3 convolution forward (a practical peak for this machine and thread count)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1) if dims == 2 else torch.nn.Conv3d(32, 32, 3, padding=1)
    x = torch.randn(8, 64, 64, 64) if dims == 2 else torch.randn(4, 32, 24, 24, 24)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            conv(x)
        flops = counter.get_total_flops()
        conv(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            conv(x)
            n += 1
    return flops * n / (time.perf_counter() - t0) / 1e9


def plain_pytorch_loop(net: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, iters: int) -> float:
    """Training samples/s of a bare forward/backward/Adam loop on a fixed batch."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(2):
        opt.zero_grad()
        loss_fn(net(batch), labels).backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(iters):
        opt.zero_grad()
        loss_fn(net(batch), labels).backward()
        opt.step()
    return iters * batch.shape[0] / (time.perf_counter() - t0)


def inference_speed(net: torch.nn.Module, x: torch.Tensor, iters: int) -> dict:
    """Eval-mode samples/s, eager and TorchScript, and the max output difference between them."""
    net.eval()
    scripted = torch.jit.script(net)
    out = {}
    with torch.no_grad():
        diff = float((scripted(x) - net(x)).abs().max())
        for name, model in (("eager", net), ("torchscript", scripted)):
            model(x)
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            out[f"{name}_samples_per_s"] = iters * x.shape[0] / (time.perf_counter() - t0)
    out["max_abs_diff_torchscript_vs_eager"] = diff
    return out


def run_bundle_training(config: str | None, ckpt_dir: str, output_dir: str, target: float, threads: int, **override):
    """Train with the bundle's own configs and timing handlers; returns timings and the validation history."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    files = [str(BUNDLE / "configs" / "train.json")] + ([str(BUNDLE / "configs" / f"{config}.json")] if config else [])
    wf = ConfigWorkflow(config_file=files, meta_file=str(BUNDLE / "configs" / "metadata.json"),
                        logging_file=str(BUNDLE / "configs" / "logging.conf"), workflow_type="train",
                        bundle_root=str(BUNDLE), ckpt_dir=ckpt_dir, output_dir=output_dir, num_threads=threads,
                        **override)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    rec: dict = {"iter_time": 0.0, "samples": 0, "history": [], "time_to_target": None, "epoch_to_target": None}
    state = {}

    def _start(engine):
        state["t0"] = time.perf_counter()

    def _iter_start(engine):
        state["it"] = time.perf_counter()

    def _iter_end(engine):
        rec["iter_time"] += time.perf_counter() - state["it"]
        rec["samples"] += int(engine.state.batch["image"].shape[0]) if isinstance(engine.state.batch, dict) else len(
            engine.state.batch)

    def _val_done(engine):
        acc = float(engine.state.metrics.get("val_accuracy", float("nan")))
        elapsed = time.perf_counter() - state["t0"]
        rec["history"].append({"epoch": trainer.state.epoch, "val_accuracy": acc, "elapsed_s": round(elapsed, 2)})
        if rec["time_to_target"] is None and acc >= target:
            rec["time_to_target"], rec["epoch_to_target"] = round(elapsed, 2), trainer.state.epoch

    trainer.add_event_handler(Events.STARTED, _start)
    trainer.add_event_handler(Events.ITERATION_STARTED, _iter_start)
    # before MONAI decollates the batch: register with the highest priority position
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _iter_end)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, _val_done)
    t0 = time.perf_counter()
    wf.run()
    total = time.perf_counter() - t0
    wf.finalize()
    return {
        "train_wall_s": round(total, 2),
        "epochs_run": trainer.state.epoch,
        "train_samples_per_s": rec["samples"] / rec["iter_time"] if rec["iter_time"] else None,
        "target_val_accuracy": target,
        "time_to_target_s": rec["time_to_target"],
        "epoch_to_target": rec["epoch_to_target"],
        "best_val_accuracy": max((h["val_accuracy"] for h in rec["history"]), default=None),
        "history": rec["history"],
    }, wf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="override config in configs/ (e.g. 3d)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.99, help="validation accuracy for time-to-accuracy")
    ap.add_argument("--ckpt_dir", default=None, help="where the trained weights go (default: a temp dir)")
    ap.add_argument("--output", default="runs/bench/synthetic.json")
    ap.add_argument("--iters", type=int, default=20, help="iterations of the plain loop / inference timing")
    ap.add_argument("--skip_training", action="store_true", help="only the plain-loop and inference timings")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    result: dict = {
        "bundle": "synthetic_localisation", "config": args.config or "2d (default)", "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_training:
            ckpt_dir = args.ckpt_dir or os.path.join(tmp, "models")
            train, wf = run_bundle_training(args.config, ckpt_dir, os.path.join(tmp, "out"), args.target, args.threads)
            result["bundle_training"] = train
            result["ckpt_dir"] = ckpt_dir if args.ckpt_dir else None
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / "train.json")]
                           + ([str(BUNDLE / "configs" / f"{args.config}.json")] if args.config else []))
        net = parser.get_parsed_content("network_def")
        size = parser.get_parsed_content("synthetic#spatial_size")
        bs = parser.get_parsed_content("train#dataloader#batch_size")
        dims = len(size)
        x = torch.randn(bs, 1, *size)
        y = torch.randint(0, 2, (bs,))
        plain = plain_pytorch_loop(net, x, y, args.iters)
        flops = _flops_per_sample(net, x)
        peak = _conv_peak_gflops(dims)
        train_sps = result.get("bundle_training", {}).get("train_samples_per_s")
        result["plain_pytorch"] = {
            "batch_size": bs, "train_samples_per_s": plain,
            "forward_gflops_per_sample": flops / 1e9,
            # training ~ 3x forward FLOPs (forward + two backward products)
            "achieved_train_gflops": 3 * flops * plain / 1e9,
            "conv_peak_gflops": peak,
            "fraction_of_conv_peak": 3 * flops * plain / 1e9 / peak,
            "bundle_vs_plain_speed": (train_sps / plain) if train_sps else None,
        }
        result["inference"] = {"batch_size": 32, **inference_speed(net, torch.randn(32, 1, *size), args.iters)}
    result["load_average_end"] = os.getloadavg()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "bundle_training"}, indent=2))
    if "bundle_training" in result:
        print(json.dumps({k: v for k, v in result["bundle_training"].items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
