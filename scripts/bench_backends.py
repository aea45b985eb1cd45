"""Benchmark inference backends per bundle: eager PyTorch vs TorchScript vs ONNX Runtime, at 1 and 2 CPU threads.

Each bundle's own network (``network_def`` of ``configs/inference.json``, committed ``models/model.pt``) runs one
forward pass on the input its inference pipeline gives the network: hippocampus one padded MSD volume
``(1, 1, 40, 56, 40)``, EM one sliding-window batch of ``sw_batch_size`` 192 x 192 patches ``(4, 1, 192, 192)``.
Latency is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones, per backend and thread count,
with backends interleaved round by round so that a change in the machine's load hits all of them alike. Outputs
are checked against eager (max absolute difference recorded). Writes JSON with the load average before and after::

    OMP_NUM_THREADS=1 python scripts/bench_backends.py --out bundles/hippocampus_segmentation/docs/bench_backends.json

The ratio ``eager / backend`` (> 1: the backend is faster) is what the model cards quote: absolute times on a
shared machine depend on the other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from medcnn.networks.export import OnnxRuntimeNetwork, TorchScriptNetwork

REPO = Path(__file__).resolve().parents[1]
INPUTS = {
    "hippocampus_segmentation": (1, 1, 40, 56, 40),
    "em_membrane_segmentation": (4, 1, 192, 192),
}


def load_network(bundle: str) -> torch.nn.Module:
    """The bundle's ``network_def`` with its committed weights, in eval mode on the CPU."""
    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def bench_bundle(bundle: str, threads: int, repeats: int, warmup: int) -> dict:
    """Median latency per backend at ``threads`` threads and the max |difference| to eager."""
    torch.set_num_threads(threads)
    net = load_network(bundle)
    x = torch.randn(INPUTS[bundle], generator=torch.Generator().manual_seed(0))
    runners = {
        "eager": net,
        "torchscript": TorchScriptNetwork(net),
        "onnxruntime": OnnxRuntimeNetwork(net, num_threads=threads, providers=["CPUExecutionProvider"]),
    }
    with torch.no_grad():
        ref = net(x)
        outputs = {name: run(x) for name, run in runners.items()}  # builds the TorchScript / ORT sessions
        for _ in range(warmup):
            for run in runners.values():
                run(x)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    eager = statistics.median(times["eager"])
    return {
        "input_shape": list(INPUTS[bundle]),
        "threads": threads,
        "median_s": {k: round(statistics.median(v), 5) for k, v in times.items()},
        "min_s": {k: round(min(v), 5) for k, v in times.items()},
        "speedup_vs_eager": {k: round(eager / statistics.median(v), 3) for k, v in times.items()},
        "max_abs_diff_vs_eager": {k: float((torch.as_tensor(v) - ref).abs().max()) for k, v in outputs.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="+", default=list(INPUTS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import onnxruntime

    result = {
        "command": "python scripts/bench_backends.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "loadavg_before": loadavg(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "bundles": {},
    }
    for bundle in args.bundles:
        result["bundles"][bundle] = []
        for threads in args.threads:
            row = bench_bundle(bundle, threads, args.repeats, args.warmup)
            row["loadavg_after"] = loadavg()
            result["bundles"][bundle].append(row)
            print(bundle, json.dumps(row), flush=True)
    result["loadavg_after"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
