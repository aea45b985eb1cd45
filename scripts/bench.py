#!/usr/bin/env python
"""Benchmark medcnn bundles with ``medcnn.bench``: one JSON per bundle (schema in the module docstring) + a table.

    OMP_NUM_THREADS=1 python scripts/bench.py --bundle all --out docs/benchmarks
    OMP_NUM_THREADS=1 python scripts/bench.py --bundle hippocampus_segmentation --out /tmp/bench

Each benchmark trains the bundle's own ``train.json`` on a short budget (``medcnn.bench.BENCHMARKS``; add config
overrides with ``--override id=value``), compares its training samples/s with a plain PyTorch loop on the same
network and one batch (``ratio``) and with one over the bundle's own DataLoader (``ratio_same_data``), reads
time-to-level from the run's validation curve, and times inference eager vs TorchScript
vs ONNX Runtime at each ``--inference_threads``. Record the machine's load: the JSON does (before and after).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import torch

from medcnn.bench import BENCHMARKS, run_bundle_benchmark, validate_result

logger = logging.getLogger("bench")


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def markdown_row(r: dict) -> str:
    """One markdown table row of a result: ratio, samples/s, time-to-level and the backend speed-ups."""
    t, ttl = r["training"], r["time_to_level"]
    levels = ", ".join(f"{lv['level']}: {lv['time_s']:.0f} s / ep {lv['epoch']}" if lv["epoch"] else
                       f"{lv['level']}: not reached" for lv in ttl["levels"])
    speedups = {(row["backend"], row["threads"]): row["speedup_vs_eager"] for row in r["inference"]["rows"]}
    threads = sorted({row["threads"] for row in r["inference"]["rows"]})
    ups = "; ".join(f"{n}t: TS {speedups.get(('torchscript', n)) or '-'}x, "
                    f"ORT {speedups.get(('onnxruntime', n)) or '-'}x" for n in threads)
    same = t.get("ratio_same_data")  # absent from medcnn.bench/1 results
    same_cells = f"{t['plain_same_data_samples_per_s']:.1f} | {same:.2f}" if same else "- | -"
    return (f"| {r['name']} | {t['bundle_samples_per_s']:.1f} | {t['plain_samples_per_s']:.1f} | {t['ratio']:.2f} | "
            f"{same_cells} | "
            f"{ttl['metric']} {levels} | {ups} | {r['load_average']['before'][0]}-{r['load_average']['after'][0]} |")


def summarise(folder: Path) -> int:
    """Write ``<folder>/summary.md``: one table row per result JSON in ``folder`` (each checked against the schema)."""
    results = []
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        validate_result(result)
        results.append(result)
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    results.sort(key=lambda r: order.get(r["name"], len(order)))
    lines = [f"- `{r['name']}`: `{r['command']}`, started {r['started_utc']}" for r in results]
    summary = HEADER + "\n" + "\n".join(markdown_row(r) for r in results) + "\n\nRuns:\n\n" + "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(summary)
    print(summary)
    return 0


HEADER = ("| benchmark | bundle samples/s | plain samples/s (one batch) | ratio | plain samples/s (same data) | "
          "ratio same data | time-to-level | inference speed-up vs eager | load 1m |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", nargs="+", help=f"'all' or any of {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, required=True, help="folder for <name>.json and summary.md")
    ap.add_argument("--summarise", action="store_true",
                    help="only rebuild <out>/summary.md from the JSON files already in --out")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training runs")
    ap.add_argument("--inference_threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=10, help="timed forward passes per backend and thread count")
    ap.add_argument("--override", nargs="*", default=[], metavar="ID=VALUE",
                    help="config overrides for every bundle run, e.g. dataset_dir=/data/msd_hippocampus")
    ap.add_argument("--work_dir", type=Path, default=None, help="keep each run's outputs here (default: temporary)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.summarise:
        return summarise(args.out)
    if not args.bundle:
        ap.error("--bundle is required (or --summarise)")
    names = list(BENCHMARKS) if args.bundle == ["all"] else args.bundle
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    overrides = dict(kv.split("=", 1) for kv in args.override)
    overrides = {k: _value(v) for k, v in overrides.items()}
    torch.set_num_threads(args.threads)
    command = "python scripts/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for name in names:
        try:
            result = run_bundle_benchmark(name, work_dir=args.work_dir, inference_threads=args.inference_threads,
                                          repeats=args.repeats, overrides=overrides, command=command)
            validate_result(result)
        except Exception:
            logger.exception("benchmark %s failed", name)
            failed.append(name)
            continue
        torch.set_num_threads(args.threads)
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        rows.append(markdown_row(result))
        logger.info("%s written: ratio %.2f, same data %.2f", path, result["training"]["ratio"],
                    result["training"]["ratio_same_data"])
    summary = HEADER + "\n" + "\n".join(rows) + "\n"
    if len(names) > 1:
        (args.out / "summary.md").write_text(f"`{command}`\n\n" + summary)
    print(summary)
    if failed:
        logger.error("failed: %s", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
