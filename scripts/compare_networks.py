"""Train every registered 3D segmentation network on the hippocampus bundle with one budget and compare them.

Each network is trained with the bundle's own ``train.json`` (only ``network_name`` and the budget overridden),
its best-validation checkpoint is evaluated with ``evaluate.json`` on the bundle's held-out test split, and
the table (mean / per-class Dice, HD95, parameters, training time, inference time per volume) is written as
JSON and Markdown::

    python scripts/compare_networks.py --epochs 6 --train_cases 80 \
        --out bundles/hippocampus_segmentation/docs/compare_networks

The budget is deliberately small (the machine is shared); the figures rank the networks under that budget,
they are not the converged accuracy of each. The test split is only evaluated, never used for selection.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from medcnn.bench import bundle_workflow, forward_latency
from medcnn.networks import SEGMENTATION_NETWORKS_3D

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_segmentation"
logger = logging.getLogger("compare_networks")


def _workflow(configs: list[str], **override) -> ConfigWorkflow:
    wf = bundle_workflow(BUNDLE, configs, "train", **override)
    wf.initialize()
    return wf


def forward_time_per_volume(net: torch.nn.Module, shape=(1, 1, 40, 56, 40), repeats: int = 5) -> float:
    """Median seconds of one eval-mode forward pass on a typical padded hippocampus volume ``(1, 1, 40, 56, 40)``."""
    return forward_latency(net.eval(), torch.randn(*shape), repeats=repeats, warmup=1)


def compare(
    names, epochs: int, train_cases: int, val_cases: int, test_cases: int | None, work: Path, on_row=None
) -> list[dict]:
    """Train and evaluate each network in ``names``; one result dict per network (``on_row(rows)`` after each)."""
    rows = []
    for name in names:
        run_dir = work / name
        common = {"output_dir": str(run_dir), "ckpt_dir": str(run_dir / "models"), "network_name": name,
                  "ckpt_path": str(run_dir / "models" / "model.pt")}
        logger.info("training %s for %d epochs on %d cases", name, epochs, train_cases)
        wf = _workflow(
            ["train.json"],
            **common,
            **{
                "train#trainer#max_epochs": epochs,
                "train#dataset#data": f"$@train_datalist[:{train_cases}]",
                "validate#dataset#data": f"$@val_datalist[:{val_cases}]",
                "val_interval": max(1, epochs // 3),
            },
        )
        net = wf.parser.get_parsed_content("network")
        n_params = sum(p.numel() for p in net.parameters())
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        wf.run()
        train_s = time.perf_counter() - t0
        wf.finalize()
        test = "$@test_datalist" if test_cases is None else f"$@test_datalist[:{test_cases}]"
        ev = _workflow(["train.json", "evaluate.json"], **common, **{"validate#dataset#data": test})
        t0 = time.perf_counter()
        ev.run()
        eval_s = time.perf_counter() - t0
        ev.finalize()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        net = ev.parser.get_parsed_content("network")
        row = {
            "network": name,
            "mean_dice": metrics["mean_dice"],
            "dice_anterior": metrics["dice_anterior"],
            "dice_posterior": metrics["dice_posterior"],
            "hd95_mean": metrics["hd95_mean"],
            "n_test_cases": metrics["n_cases"],
            "parameters": n_params,
            "train_time_s": round(train_s, 1),
            "eval_time_per_volume_s": round(eval_s / metrics["n_cases"], 3),
            "forward_time_per_volume_s": round(forward_time_per_volume(net), 4),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        logger.info("%s", row)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def retime(rows: list[dict], threads: int = 1) -> dict:
    """Re-measure every network's forward time back to back with ``threads`` torch threads (comparable figures).

    Training-time and per-run timings move with the shared machine's load; this column is measured for all
    networks within a minute, on freshly built networks (the speed does not depend on the weights).
    """
    from medcnn.networks import build_segmentation_network

    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    for r in rows:
        net = build_segmentation_network(r["network"], 3, 1, 3)
        r["forward_1thread_s"] = round(forward_time_per_volume(net), 4)
    return {"threads": threads, "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def to_markdown(rows: list[dict], budget: dict) -> str:
    """The comparison table as Markdown."""
    lines = [
        f"Budget per network: {budget['epochs']} epochs on the first {budget['train_cases']} training cases "
        f"(best of validations on {budget['val_cases']} validation cases), evaluated on the first "
        f"{rows[0]['n_test_cases']} held-out test cases (flip averaging as in evaluate.json). "
        f"Torch threads: {budget['threads']}. Load average (1 min) during the runs: "
        f"{min(r['load_average_1min'][0] for r in rows):.1f}-{max(r['load_average_1min'][1] for r in rows):.1f}.",
        "",
        "| network | mean Dice | Dice anterior | Dice posterior | HD95 (mm) | parameters | training time (s) "
        "| inference per volume (s) | forward per volume (s) | forward, 1 thread, back to back (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hd = "n/a" if r["hd95_mean"] is None else f"{r['hd95_mean']:.2f}"
        lines.append(
            f"| {r['network']} | {r['mean_dice']:.4f} | {r['dice_anterior']:.4f} | {r['dice_posterior']:.4f} | {hd} "
            f"| {r['parameters']:,} | {r['train_time_s']:.0f} | {r['eval_time_per_volume_s']:.3f} "
            f"| {r['forward_time_per_volume_s']:.4f} | {r.get('forward_1thread_s', float('nan')):.4f} |"
        )
    if "retime" in budget:
        rt = budget["retime"]
        lines += [
            "",
            f"Training and per-run inference times were measured as each network ran, while the load average fell "
            f"from {rows[0]['load_average_1min'][0]:.1f} to {rows[-1]['load_average_1min'][1]:.1f}, so they are not "
            f"comparable across rows. The last column re-measures a forward pass of a (1, 1, 40, 56, 40) volume for "
            f"every network back to back with {rt['threads']} thread at load {rt['load_average_1min'][0]:.1f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="*", default=list(SEGMENTATION_NETWORKS_3D))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train_cases", type=int, default=80)
    parser.add_argument("--val_cases", type=int, default=10)
    parser.add_argument("--test_cases", type=int, default=None, help="first N test cases (default: all 44)")
    parser.add_argument("--work_dir", default="/tmp/medcnn_compare_networks")
    parser.add_argument("--out", default=str(BUNDLE / "docs" / "compare_networks"), help="path without suffix")
    parser.add_argument("--retime", action="store_true", help="only re-measure forward times of an existing --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.retime:
        out = Path(args.out)
        data = json.loads(out.with_suffix(".json").read_text())
        data["budget"]["retime"] = retime(data["results"])
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        out.with_suffix(".md").write_text(to_markdown(data["results"], data["budget"]))
        print(to_markdown(data["results"], data["budget"]))
        return 0
    budget = {
        "epochs": args.epochs,
        "train_cases": args.train_cases,
        "val_cases": args.val_cases,
        "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict]) -> None:  # after every network, so an interrupted run keeps its rows
        out.with_suffix(".json").write_text(json.dumps({"budget": budget, "results": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(to_markdown(rows, budget))

    rows = compare(
        args.networks, args.epochs, args.train_cases, args.val_cases, args.test_cases, Path(args.work_dir), write
    )
    print(to_markdown(rows, budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
