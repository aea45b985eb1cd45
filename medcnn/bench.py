"""One benchmark harness for every medcnn bundle: Ignite training vs a plain PyTorch loop, time-to-level, backends.

:func:`run_bundle_benchmark` runs a bundle's own ``train.json`` (its data pipeline, handlers and validation) on a
short budget given as config overrides, and in the same process:

1. times the bundle's training with Ignite's ``HandlersTimeProfiler`` attached to the trainer: data loading,
   the iteration step, every handler, and validation (the ``ValidationHandler``) separately; the bundle's
   samples/s exclude validation and the first (warm-up) iteration;
2. times two plain PyTorch loops (``zero_grad``, ``loss_fn(net(x), y).backward()``, ``step``) on a copy of the
   same network, with the same loss and an optimiser of the same class and hyper-parameters:

   - on one batch the bundle's own loader and ``prepare_batch`` produced, kept in memory as plain tensors:
     ``ratio`` = bundle / this loop is what the bundle loses to everything that is not forward / backward / step,
     its data pipeline (per-sample augmentation) included;
   - over the bundle's own ``DataLoader`` (same dataset, transforms, batch size, workers), taking ``image`` and
     ``label`` from each batch as plain tensors: ``ratio_same_data`` = bundle / this loop isolates what medcnn and
     the bundle's wiring add (Ignite, handlers, ``prepare_batch``, MetaTensors reaching the network) from the
     cost of the recipe's augmentation, which both sides pay;
3. reads time-to-level (seconds and epochs until the validation metric first reaches each level) from the
   validation curve of that budgeted run;
4. times inference of the same network eager vs TorchScript vs ONNX Runtime (``medcnn.networks.export``) at each
   thread count, with the maximum absolute difference of each backend's output to eager.

Every result is one JSON object with this schema (``SCHEMA`` = ``"medcnn.bench/2"``; all times in seconds,
rates in samples/s, load averages are ``/proc/loadavg``'s 1, 5 and 15 minute figures)::

    {
      "schema": "medcnn.bench/2",
      "name": "hippocampus_segmentation",            # benchmark name (a bundle, or bundle + variant)
      "bundle": "hippocampus_segmentation",          # folder under bundles/
      "configs": ["train.json"], "overrides": {...}, # the exact budget of the run
      "command": "python scripts/bench.py ...", "started_utc": "2026-...Z",
      "machine": {"cpu_model": str, "cores": int, "platform": str, "python": str,
                  "torch": str, "monai": str, "ignite": str, "onnxruntime": str | null},
      "threads": {"torch": int, "OMP_NUM_THREADS": str | null},
      "load_average": {"before": [1m, 5m, 15m], "after": [1m, 5m, 15m]},
      "network": {"class": str, "parameters": int},
      "batch": {"input_shape": [B, C, *S], "target_shape": [...], "loss": str, "optimizer": str},
      "training": {
        "epochs": int, "iterations": int, "timed_iterations": int, "timed_samples": int,
        "train_time_s": float, "validation_time_s": float,
        "bundle_samples_per_s": float,              # Ignite training, validation and warm-up excluded
        "plain_samples_per_s": float,               # plain PyTorch loop, same net / batch / loss / optimiser
                                                    # (median of 3 timed blocks: plain_samples_per_s_blocks)
        "ratio": float,                             # bundle / plain
        "plain_same_data_samples_per_s": float,     # plain loop over the bundle's own DataLoader (median of
                                                    # 3 blocks of plain_iterations: ..._blocks)
        "plain_same_data_iterations": int,          # its timed iterations (after one warm-up batch)
        "ratio_same_data": float,                   # bundle / plain_same_data
        "breakdown_s": {"data": float, "step": float, "handlers": {"<handler> (<EVENT>)": float, ...}}
      },
      "time_to_level": {"metric": str, "higher_is_better": bool, "best": float | null,
                        "levels": [{"level": float, "epoch": int | null, "time_s": float | null}],
                        "curve": [{"epoch": int, "time_s": float, "value": float}]},
      "inference": {"input_shape": [B, C, *S],
                    "rows": [{"backend": "eager" | "torchscript" | "onnxruntime", "threads": int,
                              "median_s": float | null, "speedup_vs_eager": float | null,
                              "max_abs_diff_vs_eager": float | null, "error": str | null}]}
    }

Version 1 results (``"medcnn.bench/1"``, before the same-data loop) still validate, without the two same-data
figures. ``time_s`` of the curve counts from the start of training and includes validation (wall time to reach a level).
The harness builds ``train#trainer`` (and so the training dataset) before the config's ``run`` list runs, to attach
its timers: a bundle must not rely on the order of its ``run`` list to prepare the training data (cache plain
tensors with an explicit transform, as the bundles do, rather than by switching ``set_track_meta`` first).
Timings on a shared machine move with its load: compare ratios measured in the same run, not absolute times.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BENCHMARKS",
    "SCHEMA",
    "BundleBenchmark",
    "BundleTrainingTimer",
    "backend_latency",
    "bundle_workflow",
    "forward_latency",
    "load_average",
    "machine_info",
    "plain_loader_loop",
    "plain_training_loop",
    "run_bundle_benchmark",
    "speed_ratio",
    "time_to_level",
    "time_to_level_from_curves",
    "validate_result",
]

logger = logging.getLogger(__name__)

SCHEMA = "medcnn.bench/2"
#: earlier schemas :func:`validate_result` still accepts (their results lack the fields added since)
OLD_SCHEMAS = ("medcnn.bench/1",)
REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"


# ---------------------------------------------------------------------------------------------------- pure figures
def time_to_level(
    values: Sequence[float | None],
    epochs: Sequence[int],
    times: Sequence[float],
    levels: Sequence[float],
    higher_is_better: bool = True,
) -> list[dict]:
    """First epoch and time at which ``values`` reach each level: ``[{"level", "epoch", "time_s"}]`` (None: never).

    ``values``, ``epochs`` and ``times`` are one validation curve (equal lengths); a level is reached when the value
    is ``>= level`` (``<= level`` when ``higher_is_better`` is False, e.g. a loss). ``None`` / NaN values never
    reach a level.
    """
    if not len(values) == len(epochs) == len(times):
        raise ValueError(f"curve lengths differ: {len(values)} values, {len(epochs)} epochs, {len(times)} times")
    out = []
    for level in levels:
        hit = None
        for value, epoch, t in zip(values, epochs, times, strict=True):
            if value is None or value != value:  # None or NaN
                continue
            if (value >= level) if higher_is_better else (value <= level):
                hit = {"level": float(level), "epoch": int(epoch), "time_s": float(t)}
                break
        out.append(hit or {"level": float(level), "epoch": None, "time_s": None})
    return out


def time_to_level_from_curves(
    curves: Mapping[str, Sequence], metric: str, levels: Sequence[float], higher_is_better: bool = True
) -> list[dict]:
    """:func:`time_to_level` on a ``curves.json`` of ``TrainingCurvesHandler`` (``<metric>``, ``_x``, ``_time_s``)."""
    if metric not in curves:
        raise KeyError(f"metric {metric!r} not in the curves; recorded: {sorted(k for k in curves if '_' in k)}")
    return time_to_level(curves[metric], curves[f"{metric}_x"], curves[f"{metric}_time_s"], levels, higher_is_better)


def speed_ratio(bundle_samples_per_s: float | None, plain_samples_per_s: float | None) -> float | None:
    """Bundle training samples/s over plain-loop samples/s (None when either is missing or not positive)."""
    if not bundle_samples_per_s or not plain_samples_per_s or bundle_samples_per_s <= 0 or plain_samples_per_s <= 0:
        return None
    return float(bundle_samples_per_s) / float(plain_samples_per_s)


# ------------------------------------------------------------------------------------------------- the machine
def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages of the machine."""
    return [round(float(v), 2) for v in os.getloadavg()]


def machine_info() -> dict:
    """CPU model, core count, platform and library versions of this machine, for every result."""
    import ignite
    import monai

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "onnxruntime": ort_version,
    }


# ------------------------------------------------------------------------------------------------------ bundles
def bundle_workflow(bundle: str | os.PathLike, configs: Sequence[str], workflow_type: str = "train", **override):
    """A ``monai.bundle.ConfigWorkflow`` of ``bundle`` (a name under ``bundles/`` or a folder) from ``configs``.

    ``configs`` are file names in the bundle's ``configs/``; ``override`` are config ids (``"train#trainer#
    max_epochs"``) and workflow arguments, as on the ``python -m monai.bundle run`` command line. The workflow is
    not initialised.
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle)
    if not root.is_dir():
        root = BUNDLES_DIR / str(bundle)
    if not (root / "configs").is_dir():
        raise FileNotFoundError(f"bundle {bundle!r}: no configs/ folder at {root}")
    files = [str(root / "configs" / c) for c in configs]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"bundle {root.name}: config file {f} not found")
    logging_file = root / "configs" / "logging.conf"
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(logging_file) if logging_file.is_file() else None,
        workflow_type=workflow_type,
        bundle_root=str(root),
        **override,
    )


def _batch_size(batch: Any) -> int:
    """Samples in a collated batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for key in ("image", *batch.keys()):
            if key in batch and isinstance(batch[key], torch.Tensor):
                return int(batch[key].shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0]) if not isinstance(batch[0], Mapping) else len(batch)
    raise TypeError(f"cannot tell the number of samples of a batch of type {type(batch).__name__}")


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


class BundleTrainingTimer:
    """Attach to a bundle's trainer and evaluator: training time without validation, samples, validation curve.

    Timing starts after the first iteration (warm-up: first allocations, first batch) and ends when the last
    epoch's handlers (checkpoints, curves, validation) have run; the evaluator's runs inside that span are
    subtracted. Ignite's ``HandlersTimeProfiler`` gives the split into data, step and per-handler time.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.samples = 0
        self.timed_iterations = 0
        self.validation_s = 0.0
        self.curve: list[dict] = []
        self._t0: float | None = None
        self._t_end: float | None = None
        self._train_start = 0.0
        self._val_start = 0.0
        self._val_in_span = 0.0
        self.profiler = None

    def attach(self, trainer, evaluator=None) -> None:
        """Register on ``trainer`` (and ``evaluator``): call after the bundle's own handlers are attached."""
        from ignite.engine import Events
        from ignite.handlers import HandlersTimeProfiler

        self._trainer = trainer
        self.profiler = HandlersTimeProfiler()
        self.profiler.attach(trainer)
        trainer.add_event_handler(Events.STARTED, self._started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, self._got_batch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        if evaluator is not None:
            evaluator.add_event_handler(Events.STARTED, self._val_started)
            evaluator.add_event_handler(Events.COMPLETED, self._val_completed)

    def _started(self, engine) -> None:
        self._train_start = time.perf_counter()

    def _got_batch(self, engine) -> None:
        if self._t0 is not None:
            self.samples += _batch_size(engine.state.batch)
            self.timed_iterations += 1

    def _iteration(self, engine) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
            self._val_in_span = 0.0

    def _epoch(self, engine) -> None:
        self._t_end = time.perf_counter()

    def _val_started(self, engine) -> None:
        self._val_start = time.perf_counter()

    def _val_completed(self, engine) -> None:
        now = time.perf_counter()
        self.validation_s += now - self._val_start
        if self._t0 is not None:
            self._val_in_span += now - self._val_start
        value = _scalar(engine.state.metrics.get(self.metric))
        if value is None:
            raise KeyError(f"validation metric {self.metric!r} not among the evaluator's metrics "
                           f"{sorted(engine.state.metrics)}")
        self.curve.append({"epoch": int(self._trainer.state.epoch), "time_s": round(now - self._train_start, 3),
                           "value": value})

    @property
    def train_time_s(self) -> float:
        """Seconds of training after the warm-up iteration, validation excluded."""
        if self._t0 is None or self._t_end is None:
            return 0.0
        return self._t_end - self._t0 - self._val_in_span

    def breakdown(self) -> dict:
        """Seconds spent loading data, in the iteration step, and in each handler (``"<name> (<EVENT>)"``)."""
        out: dict = {"data": 0.0, "step": 0.0, "handlers": {}}
        if self.profiler is None:
            return out
        for name, event, total, *_ in self.profiler.get_results():
            if not isinstance(total, (int, float)) or name == "Total":
                continue
            if name == "Dataflow":
                out["data"] = round(float(total), 3)
            elif name == "Processing":
                out["step"] = round(float(total), 3)
            elif not name.startswith(("BundleTrainingTimer", "HandlersTimeProfiler")) and total >= 0.001:
                out["handlers"][f"{name} ({event})"] = round(float(total), 3)
        out["handlers"] = dict(sorted(out["handlers"].items(), key=lambda kv: -kv[1]))
        return out


def _plain(t: Any) -> Any:
    """A MetaTensor as a plain tensor (recursively in tuples / lists), anything else unchanged."""
    if isinstance(t, torch.Tensor):
        return t.as_tensor() if hasattr(t, "as_tensor") else t
    if isinstance(t, (list, tuple)):
        return type(t)(_plain(v) for v in t)
    return t


def plain_training_loop(
    network: torch.nn.Module,
    loss_function: Callable,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: Any,
    iterations: int = 10,
    warmup: int = 2,
) -> float:
    """Samples/s of ``zero_grad``, ``loss_function(network(inputs), targets).backward()``, ``step`` on one batch.

    ``inputs`` ``(B, C, *S)`` and ``targets`` stay in memory: no data loading, no handlers. ``warmup`` untimed
    iterations come first.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    network.train()
    start = 0.0
    for i in range(warmup + iterations):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_function(network(inputs), targets).backward()
        optimizer.step()
    return iterations * int(inputs.shape[0]) / (time.perf_counter() - start)


def plain_loader_loop(
    network: torch.nn.Module,
    loss_function: Callable,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    iterations: int = 10,
    device: torch.device | str = "cpu",
    input_key: str = "image",
    target_key: str = "label",
    blocks: int = 3,
) -> list[float]:
    """Samples/s of a plain PyTorch loop over ``loader`` in ``blocks`` timed blocks of ``iterations`` batches: next
    batch, ``batch[input_key]`` ``(B, C, *S)`` and ``batch[target_key]`` to ``device`` as plain tensors,
    ``zero_grad``, ``loss.backward()``, ``step``.

    The loader (a bundle's own ``DataLoader``: its dataset, transforms, batch size and workers) is iterated again
    from its start when exhausted; the first batch is an untimed warm-up (worker start, first allocations). The
    blocks follow each other on the same iterator; take their median on a shared machine.
    """
    if iterations < 1 or blocks < 1:
        raise ValueError(f"iterations and blocks must be >= 1, got {iterations} and {blocks}")
    network.train()
    batches = iter(loader)

    def train_step() -> int:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        for key in (input_key, target_key):
            if key not in batch:
                raise KeyError(f"plain loader loop: batch has no {key!r} (keys: {sorted(batch)})")
        x = _plain(batch[input_key]).to(device)
        y = _plain(batch[target_key]).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss_function(network(x), y).backward()
        optimizer.step()
        return int(x.shape[0])

    train_step()  # warm-up
    rates: list[float] = []
    for _ in range(blocks):
        samples, start = 0, time.perf_counter()
        for _ in range(iterations):
            samples += train_step()
        rates.append(samples / (time.perf_counter() - start))
    return rates


def forward_latency(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of ``fn(x)`` under ``torch.no_grad`` over ``repeats`` runs after ``warmup`` untimed ones."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            fn(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def backend_latency(
    network: torch.nn.Module, x: torch.Tensor, threads: Sequence[int] = (1, 2), repeats: int = 10, warmup: int = 2
) -> list[dict]:
    """Median latency of ``network(x)`` eager vs TorchScript vs ONNX Runtime at each thread count.

    One row per backend and thread count: ``median_s``, ``speedup_vs_eager`` (eager / backend, > 1 is faster),
    ``max_abs_diff_vs_eager`` and ``error`` (the reason when a backend cannot run this network). Backends are
    interleaved round by round so that a change of the machine's load hits all of them alike.
    """
    from medcnn.networks.export import OnnxRuntimeNetwork, TorchScriptNetwork

    network = network.eval()
    previous = torch.get_num_threads()
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="medcnn-bench-") as tmp:
            for n in threads:
                torch.set_num_threads(int(n))
                runners: dict[str, Callable] = {
                    "eager": network,
                    "torchscript": TorchScriptNetwork(network),
                    "onnxruntime": OnnxRuntimeNetwork(network, onnx_path=Path(tmp) / "model.onnx",
                                                      providers=["CPUExecutionProvider"], num_threads=int(n)),
                }
                with torch.no_grad():
                    reference = network(x)
                    diffs: dict[str, float | None] = {}
                    errors: dict[str, str | None] = {}
                    for name in list(runners):
                        try:
                            out = runners[name](x)  # builds the TorchScript module / ONNX Runtime session
                            diffs[name] = float((torch.as_tensor(out) - reference).abs().max())
                            errors[name] = None
                        except Exception as exc:  # noqa: BLE001 - a backend that cannot run this network is a result
                            logger.warning("%s backend failed: %s", name, exc)
                            diffs[name], errors[name] = None, f"{type(exc).__name__}: {exc}"[:300]
                            del runners[name]
                    times: dict[str, list[float]] = {name: [] for name in runners}
                    for i in range(warmup + repeats):
                        for name, run in runners.items():
                            start = time.perf_counter()
                            run(x)
                            if i >= warmup:
                                times[name].append(time.perf_counter() - start)
                eager = statistics.median(times["eager"])
                for name in ("eager", "torchscript", "onnxruntime"):
                    median = statistics.median(times[name]) if name in times else None
                    rows.append({
                        "backend": name, "threads": int(n),
                        "median_s": round(median, 6) if median is not None else None,
                        "speedup_vs_eager": round(eager / median, 3) if median else None,
                        "max_abs_diff_vs_eager": diffs.get(name), "error": errors.get(name),
                    })
    finally:
        torch.set_num_threads(previous)
    return rows


# ------------------------------------------------------------------------------------------- benchmark registry
@dataclass(frozen=True)
class BundleBenchmark:
    """What to run for one bundle: configs, a short budget (config overrides) and the level metric.

    Args:
        bundle: folder name under ``bundles/``.
        metric: validation metric of the evaluator read for time-to-level.
        levels: levels of ``metric`` to time.
        budget: config overrides giving a short run (epochs, ``epoch_length`` of trainer and evaluator, ...).
        configs: config files of the training run.
        higher_is_better: False for a loss-like metric.
        inference_shape: network input for the latency rows; default one training sample ``(1, C, *S)``.
        plain_iterations: timed iterations of the plain loop.
    """

    bundle: str
    metric: str
    levels: tuple[float, ...]
    budget: dict = field(default_factory=dict)
    configs: tuple[str, ...] = ("train.json",)
    higher_is_better: bool = True
    inference_shape: tuple[int, ...] | None = None
    plain_iterations: int = 10


def _budget(epochs: int, iterations: int, val_iterations: int, **extra) -> dict:
    return {"train#trainer#max_epochs": epochs, "train#trainer#epoch_length": iterations,
            "validate#evaluator#epoch_length": val_iterations, "val_interval": 1, **extra}


#: the benchmark of every bundle (and variant), with budgets that keep ``--bundle all`` to ~15 minutes on 2 cores
BENCHMARKS: dict[str, BundleBenchmark] = {
    "synthetic_localisation": BundleBenchmark(
        "synthetic_localisation", "val_accuracy", (0.7, 0.9, 0.99), _budget(6, 7, 7)),
    "synthetic_localisation_3d": BundleBenchmark(
        "synthetic_localisation", "val_accuracy", (0.7, 0.9), _budget(4, 7, 7), configs=("train.json", "3d.json")),
    "pneumonia_classification": BundleBenchmark(
        "pneumonia_classification", "val_auc", (0.9, 0.95), _budget(4, 20, 4)),
    "hippocampus_segmentation": BundleBenchmark(
        "hippocampus_segmentation", "val_mean_dice", (0.5, 0.7),
        _budget(3, 10, 4, **{"train#dataset#data": "$@train_datalist[:40]",
                             "validate#dataset#data": "$@val_datalist[:4]"}),
        inference_shape=(1, 1, 40, 56, 40)),
    "em_membrane_segmentation": BundleBenchmark(
        "em_membrane_segmentation", "val_membrane_dice", (0.5, 0.6), _budget(2, 6, 2),
        inference_shape=(4, 1, 192, 192)),
    "brats_tumour_localisation": BundleBenchmark(
        "brats_tumour_localisation", "val_auc", (0.8, 0.9), _budget(3, 10, 4)),
    "brats_tumour_segmentation": BundleBenchmark(
        "brats_tumour_segmentation", "val_dice", (0.5, 0.7), _budget(3, 10, 4)),
    "lgg_tumour_localisation": BundleBenchmark(
        "lgg_tumour_localisation", "val_auc", (0.8, 0.9),
        _budget(3, 10, 4, train_patients="$@split['train'][:8]", validation_patients="$@split['validation'][:3]")),
    "coco_tumour_segmentation": BundleBenchmark(
        "coco_tumour_segmentation", "val_dice", (0.5, 0.7),
        _budget(3, 10, 4, **{"train#dataset#data": "$@split['training'][:200]",
                             "validate#dataset#data": "$@split['validation'][:64]"})),
}


def run_bundle_benchmark(
    name: str,
    spec: BundleBenchmark | None = None,
    work_dir: str | os.PathLike | None = None,
    inference_threads: Sequence[int] = (1, 2),
    repeats: int = 10,
    overrides: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> dict:
    """Benchmark one bundle (see the module docstring); returns the result dict of schema ``SCHEMA``.

    ``spec`` defaults to ``BENCHMARKS[name]``; ``overrides`` are added to its budget (e.g. ``dataset_dir``).
    Outputs and checkpoints of the run go to ``work_dir`` (a temporary folder by default), never to the bundle's
    committed ``models/``.
    """
    if spec is None:
        if name not in BENCHMARKS:
            raise KeyError(f"no benchmark named {name!r}; known: {sorted(BENCHMARKS)}")
        spec = BENCHMARKS[name]
    cfg = {**spec.budget, **(overrides or {})}
    result: dict = {
        "schema": SCHEMA, "name": name, "bundle": spec.bundle, "configs": list(spec.configs),
        "overrides": {k: v for k, v in cfg.items()}, "command": command,
        "started_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "load_average": {"before": load_average(), "after": None},
    }
    with tempfile.TemporaryDirectory(prefix=f"medcnn-bench-{name}-") as tmp:
        out_dir = Path(work_dir) / name if work_dir else Path(tmp)
        wf = bundle_workflow(spec.bundle, spec.configs, "train", output_dir=str(out_dir),
                             ckpt_dir=str(out_dir / "models"), **cfg)
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        timer = BundleTrainingTimer(spec.metric)
        timer.attach(trainer, evaluator)
        logger.info("%s: training %s with %s", name, list(spec.configs), cfg)
        wf.run()
        wf.finalize()

        # one batch of the bundle's own pipeline, as the trainer feeds it to the network
        batch = next(iter(trainer.data_loader))
        prepared = trainer.prepare_batch(batch, trainer.state.device, trainer.non_blocking, **trainer.to_kwargs)
        inputs, targets = _plain(prepared[0]), _plain(prepared[1])
        # copied together, the optimiser's parameter groups (and settings, and state) point at the copied network
        network, optimizer = copy.deepcopy((trainer.network, trainer.optimizer))
        # three timed blocks, median: one block on a shared machine can be hit by another job's burst
        blocks = [plain_training_loop(network, trainer.loss_function, optimizer, inputs, targets,
                                      iterations=spec.plain_iterations, warmup=2 if i == 0 else 0) for i in range(3)]
        plain = statistics.median(blocks)
        # the same loop over the bundle's own loader: augmentation paid on both sides of ratio_same_data
        network, optimizer = copy.deepcopy((trainer.network, trainer.optimizer))
        same_blocks = plain_loader_loop(network, trainer.loss_function, optimizer, trainer.data_loader,
                                        iterations=spec.plain_iterations, device=trainer.state.device, blocks=3)
        plain_same = statistics.median(same_blocks)
        bundle_sps = timer.samples / timer.train_time_s if timer.train_time_s > 0 else None
        result["network"] = {"class": type(trainer.network).__name__,
                             "parameters": sum(p.numel() for p in trainer.network.parameters())}
        result["batch"] = {"input_shape": list(inputs.shape),
                           "target_shape": list(targets.shape) if isinstance(targets, torch.Tensor) else None,
                           "loss": type(trainer.loss_function).__name__,
                           "optimizer": type(trainer.optimizer).__name__}
        result["training"] = {
            "epochs": int(trainer.state.epoch), "iterations": int(trainer.state.iteration),
            "timed_iterations": timer.timed_iterations, "timed_samples": timer.samples,
            "train_time_s": round(timer.train_time_s, 3), "validation_time_s": round(timer.validation_s, 3),
            "bundle_samples_per_s": round(bundle_sps, 3) if bundle_sps else None,
            "plain_samples_per_s": round(plain, 3),
            "plain_samples_per_s_blocks": [round(b, 3) for b in blocks],
            "ratio": None,
            "plain_same_data_samples_per_s": round(plain_same, 3),
            "plain_same_data_samples_per_s_blocks": [round(b, 3) for b in same_blocks],
            "plain_same_data_iterations": 3 * spec.plain_iterations,
            "ratio_same_data": None,
            "breakdown_s": timer.breakdown(),
        }
        ratio = speed_ratio(bundle_sps, plain)
        result["training"]["ratio"] = round(ratio, 3) if ratio is not None else None
        ratio_same = speed_ratio(bundle_sps, plain_same)
        result["training"]["ratio_same_data"] = round(ratio_same, 3) if ratio_same is not None else None
        values = [c["value"] for c in timer.curve]
        best = (max(values) if spec.higher_is_better else min(values)) if values else None
        result["time_to_level"] = {
            "metric": spec.metric, "higher_is_better": spec.higher_is_better, "best": best,
            "levels": time_to_level(values, [c["epoch"] for c in timer.curve], [c["time_s"] for c in timer.curve],
                                    spec.levels, spec.higher_is_better),
            "curve": timer.curve,
        }
        shape = spec.inference_shape or (1, *inputs.shape[1:])
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        net = copy.deepcopy(trainer.network).cpu().eval()
        result["inference"] = {"input_shape": list(shape),
                               "rows": backend_latency(net, x, inference_threads, repeats=repeats)}
    result["load_average"]["after"] = load_average()
    return result


# --------------------------------------------------------------------------------------------------- the schema
_REQUIRED: dict[str, tuple[type, ...]] = {
    "schema": (str,), "name": (str,), "bundle": (str,), "configs": (list,), "overrides": (dict,),
    "started_utc": (str,), "machine": (dict,), "threads": (dict,), "load_average": (dict,), "network": (dict,),
    "batch": (dict,), "training": (dict,), "time_to_level": (dict,), "inference": (dict,),
}
_POSITIVE_TRAINING = ("bundle_samples_per_s", "plain_samples_per_s", "ratio", "train_time_s")


def validate_result(result: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field of ``result`` that does not follow the ``SCHEMA``."""
    for key, types in _REQUIRED.items():
        if key not in result:
            raise ValueError(f"benchmark result: missing field {key!r}")
        if not isinstance(result[key], types):
            raise ValueError(f"benchmark result: {key!r} is {type(result[key]).__name__}, expected "
                             f"{'/'.join(t.__name__ for t in types)}")
    if result["schema"] != SCHEMA and result["schema"] not in OLD_SCHEMAS:
        raise ValueError(f"benchmark result: schema {result['schema']!r}, expected {SCHEMA!r}")
    for key in ("cpu_model", "cores", "torch", "monai"):
        if key not in result["machine"]:
            raise ValueError(f"benchmark result: machine.{key} missing")
    for when in ("before", "after"):
        load = result["load_average"].get(when)
        if not (isinstance(load, list) and len(load) == 3):
            raise ValueError(f"benchmark result: load_average.{when} must be the three load averages, got {load!r}")
    training = result["training"]
    for key in _POSITIVE_TRAINING:
        value = training.get(key)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"benchmark result: training.{key} must be a positive number, got {value!r}")
    pairs = [("ratio", "plain_samples_per_s")]
    if result["schema"] == SCHEMA:
        pairs.append(("ratio_same_data", "plain_same_data_samples_per_s"))
        for key in ("plain_same_data_samples_per_s", "ratio_same_data"):
            value = training.get(key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"benchmark result: training.{key} must be a positive number, got {value!r}")
    for key, plain_key in pairs:
        ratio = training["bundle_samples_per_s"] / training[plain_key]
        if abs(ratio - training[key]) > 1e-3 * max(1.0, ratio):
            raise ValueError(f"benchmark result: training.{key} {training[key]} is not bundle / {plain_key} "
                             f"({ratio:.3f})")
    ttl = result["time_to_level"]
    for key in ("metric", "levels", "curve"):
        if key not in ttl:
            raise ValueError(f"benchmark result: time_to_level.{key} missing")
    for row in ttl["levels"]:
        if set(row) != {"level", "epoch", "time_s"}:
            raise ValueError(f"benchmark result: time_to_level level row {row!r} needs level, epoch, time_s")
    rows = result["inference"].get("rows")
    if not rows:
        raise ValueError("benchmark result: inference.rows is empty")
    for row in rows:
        if row.get("backend") not in ("eager", "torchscript", "onnxruntime"):
            raise ValueError(f"benchmark result: unknown inference backend in {row!r}")
        if row.get("error") is None and not (isinstance(row.get("median_s"), (int, float)) and row["median_s"] > 0):
            raise ValueError(f"benchmark result: inference row {row!r} has neither a positive median_s nor an error")
