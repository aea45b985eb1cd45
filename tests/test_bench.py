"""The benchmark harness: time-to-level, ratio and schema on known inputs, and one tiny real run on a bundle."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from medcnn.bench import (
    BUNDLES_DIR,
    SCHEMA,
    BundleBenchmark,
    backend_latency,
    bundle_workflow,
    plain_loader_loop,
    plain_training_loop,
    run_bundle_benchmark,
    speed_ratio,
    time_to_level,
    time_to_level_from_curves,
    validate_result,
)


def test_time_to_level_first_epoch_reaching_each_level():
    levels = time_to_level([0.5, 0.8, 0.7, 0.95], [2, 4, 6, 8], [10.0, 20.0, 30.0, 40.0], [0.75, 0.9, 0.99])
    assert levels == [
        {"level": 0.75, "epoch": 4, "time_s": 20.0},
        {"level": 0.9, "epoch": 8, "time_s": 40.0},
        {"level": 0.99, "epoch": None, "time_s": None},
    ]


def test_time_to_level_lower_is_better_and_missing_values():
    # a loss: reached when <= level; None and NaN values (a skipped validation) never count
    levels = time_to_level([None, float("nan"), 0.4, 0.2], [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], [0.5, 0.3],
                           higher_is_better=False)
    assert [(lv["epoch"], lv["time_s"]) for lv in levels] == [(3, 3.0), (4, 4.0)]


def test_time_to_level_rejects_curves_of_different_lengths():
    with pytest.raises(ValueError, match="curve lengths differ"):
        time_to_level([0.5, 0.6], [1, 2], [1.0], [0.5])


def test_time_to_level_from_training_curves_json():
    curves = {"epoch": [1, 2, 3, 4], "time_s": [5, 10, 15, 20], "val_dice": [0.6, 0.85],
              "val_dice_x": [2, 4], "val_dice_time_s": [11.5, 22.0]}
    assert time_to_level_from_curves(curves, "val_dice", [0.8]) == [{"level": 0.8, "epoch": 4, "time_s": 22.0}]
    with pytest.raises(KeyError, match="val_auc"):
        time_to_level_from_curves(curves, "val_auc", [0.8])


def test_speed_ratio():
    assert speed_ratio(45.0, 60.0) == pytest.approx(0.75)
    assert speed_ratio(None, 60.0) is None
    assert speed_ratio(45.0, 0.0) is None


def _result() -> dict:
    """A result that follows the schema (figures made up, consistent)."""
    return {
        "schema": SCHEMA, "name": "x", "bundle": "x", "configs": ["train.json"], "overrides": {}, "command": None,
        "started_utc": "2026-12-02T00:00:00Z",
        "machine": {"cpu_model": "cpu", "cores": 2, "torch": "2", "monai": "1"},
        "threads": {"torch": 1, "OMP_NUM_THREADS": "1"},
        "load_average": {"before": [1.0, 1.0, 1.0], "after": [1.0, 1.0, 1.0]},
        "network": {"class": "Net", "parameters": 10}, "batch": {"input_shape": [4, 1, 8, 8]},
        "training": {"bundle_samples_per_s": 45.0, "plain_samples_per_s": 60.0, "ratio": 0.75, "train_time_s": 2.0,
                     "plain_same_data_samples_per_s": 50.0, "ratio_same_data": 0.9, "plain_same_data_iterations": 20},
        "time_to_level": {"metric": "m", "levels": [{"level": 0.5, "epoch": None, "time_s": None}], "curve": []},
        "inference": {"input_shape": [1, 1, 8, 8], "rows": [
            {"backend": "eager", "threads": 1, "median_s": 0.01, "error": None},
            {"backend": "onnxruntime", "threads": 1, "median_s": None, "error": "RuntimeError: cannot export"}]},
    }


def test_validate_result_accepts_the_schema():
    validate_result(_result())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("machine"), "missing field 'machine'"),
        (lambda r: r["training"].update(ratio=0.9), "training.ratio 0.9 is not bundle / plain_samples_per_s"),
        (lambda r: r["training"].update(ratio_same_data=0.75), "ratio_same_data 0.75 is not bundle / plain_same_data"),
        (lambda r: r["training"].pop("plain_same_data_samples_per_s"), "plain_same_data_samples_per_s must be"),
        (lambda r: r["training"].update(plain_samples_per_s=0), "plain_samples_per_s must be a positive"),
        (lambda r: r["load_average"].update(after=None), "load_average.after"),
        (lambda r: r["inference"]["rows"][0].update(median_s=None), "neither a positive median_s nor an error"),
        (lambda r: r.update(schema="other/1"), "schema 'other/1'"),
    ],
)
def test_validate_result_names_the_wrong_field(change, message):
    result = copy.deepcopy(_result())
    change(result)
    with pytest.raises(ValueError, match=message):
        validate_result(result)


def test_schema_1_results_still_validate_without_the_same_data_figures():
    """Results written before the same-data loop (docs/benchmarks until the next sweep) keep validating."""
    result = copy.deepcopy(_result())
    result["schema"] = "medcnn.bench/1"
    for key in ("plain_same_data_samples_per_s", "ratio_same_data", "plain_same_data_iterations"):
        del result["training"][key]
    validate_result(result)
    with pytest.raises(ValueError, match="plain_same_data_samples_per_s must be"):
        validate_result({**result, "schema": SCHEMA})


def test_plain_loader_loop_iterates_the_loader_and_trains():
    """Every timed iteration takes the next batch (restarting an exhausted loader) and steps the optimiser."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 2))
    data = [{"image": torch.randn(1, 8, 8), "label": torch.tensor(i % 2)} for i in range(6)]
    seen = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            seen.append(i)
            return data[i]

    loader = torch.utils.data.DataLoader(Counting(), batch_size=2)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.stack([d["image"] for d in data]), torch.stack([d["label"] for d in data])
    start_loss = loss_fn(net(x), y).item()
    rates = plain_loader_loop(net, loss_fn, torch.optim.Adam(net.parameters(), 1e-2), loader, iterations=5, blocks=4)
    assert len(rates) == 4 and min(rates) > 0
    assert len(seen) == 21 * 2  # warm-up batch + 4 blocks of 5 timed ones, through 7 passes over 3 batches
    assert loss_fn(net(x), y).item() < start_loss
    with pytest.raises(KeyError, match="no 'label'"):
        plain_loader_loop(net, loss_fn, torch.optim.Adam(net.parameters()), [{"image": x}], iterations=1)


def test_plain_training_loop_trains_the_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 2))
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    loss_fn = torch.nn.CrossEntropyLoss()
    start_loss = loss_fn(net(x), y).item()
    rate = plain_training_loop(net, loss_fn, torch.optim.Adam(net.parameters(), 1e-2), x, y, iterations=20)
    assert rate > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    assert loss_fn(net(x), y).item() < start_loss


def test_backend_latency_rows_and_equal_outputs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    rows = backend_latency(net, torch.randn(1, 1, 16, 16), threads=(1,), repeats=2, warmup=1)
    assert [(r["backend"], r["threads"]) for r in rows] == [("eager", 1), ("torchscript", 1), ("onnxruntime", 1)]
    for r in rows:
        assert r["error"] is None, r
        assert r["median_s"] > 0
        assert r["max_abs_diff_vs_eager"] < 1e-5
    assert rows[0]["speedup_vs_eager"] == 1.0


def test_bundle_workflow_names_a_missing_config():
    with pytest.raises(FileNotFoundError, match="nonexistent.json"):
        bundle_workflow("synthetic_localisation", ["train.json", "nonexistent.json"])


def test_tiny_real_run_on_the_synthetic_bundle(tmp_path):
    """Two epochs of two iterations of the bundle's own train.json: a schema-valid JSON with positive figures."""
    committed = BUNDLES_DIR / "synthetic_localisation" / "models" / "model.pt"
    committed_hash = hashlib.sha256(committed.read_bytes()).hexdigest()
    spec = BundleBenchmark(
        "synthetic_localisation", "val_accuracy", (0.0, 2.0),
        {"train#trainer#max_epochs": 2, "train#trainer#epoch_length": 2, "validate#evaluator#epoch_length": 1,
         "val_interval": 1, "num_train": 32, "num_val": 16},
        plain_iterations=2,
    )
    result = run_bundle_benchmark("synthetic_tiny", spec, work_dir=tmp_path, inference_threads=(1,), repeats=2)
    validate_result(json.loads(json.dumps(result)))  # JSON-serialisable and following the schema
    training = result["training"]
    assert training["epochs"] == 2 and training["iterations"] == 4
    assert training["timed_iterations"] == 3  # the first iteration is the warm-up
    assert training["timed_samples"] == 3 * result["batch"]["input_shape"][0]
    assert training["validation_time_s"] > 0
    assert training["plain_same_data_iterations"] == 6 and len(training["plain_same_data_samples_per_s_blocks"]) == 3
    assert training["ratio_same_data"] == pytest.approx(
        training["bundle_samples_per_s"] / training["plain_same_data_samples_per_s"], rel=1e-2)
    assert any(k.startswith("ValidationHandler") for k in training["breakdown_s"]["handlers"])
    ttl = result["time_to_level"]
    assert [c["epoch"] for c in ttl["curve"]] == [1, 2]
    # level 0 is reached at the first validation, level 2 (accuracy > 1) never
    assert ttl["levels"][0]["epoch"] == 1 and ttl["levels"][0]["time_s"] == ttl["curve"][0]["time_s"]
    assert ttl["levels"][1] == {"level": 2.0, "epoch": None, "time_s": None}
    assert {(r["backend"], r["threads"]) for r in result["inference"]["rows"]} == {
        ("eager", 1), ("torchscript", 1), ("onnxruntime", 1)}
    # the run's checkpoints go to the work folder, the committed weights stay as they were
    assert any((tmp_path / "synthetic_tiny" / "models").iterdir())
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == committed_hash
