"""em_membrane_segmentation bundle: metadata, the checks of its tiny training + evaluation (run by
tests/test_bundles.py), inference and TorchScript export on the committed weights, bad inputs, and the model card's
test figures reproduced."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, read_metrics, run_workflow

from medcnn.data.tiff import read_stack, write_tiff_stack

NAME = "em_membrane_segmentation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"
DATASET = "isbi2012_em_membranes"
pytestmark = [pytest.mark.realdata]
# two training slices, one validation slice, 96x96 patches: a training run of seconds
TINY_TRAINING = {
    "train_slices": [0, 1],
    "val_slices": [20],
    "patch_size": [96, 96],
    "samples_per_slice": 4,
    "val_interval": 1,
    "learning_rate": 0.01,
}


def _chain(exc: BaseException) -> str:
    """Messages of an exception and all its causes (MONAI wraps transform errors in RuntimeError)."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def check_tiny_run(run: TinyRun) -> None:
    """The tiny evaluation of tests/test_bundles.py on test slice 25: the Rand figures, the normalised confusion
    matrix and the error overlay of that slice."""
    m, out = run.metrics, run.out
    assert (out / "curves.png").is_file()
    assert m["v_rand_threshold"] in [round(0.1 * i, 1) for i in range(11)]
    assert np.isclose(np.sum(m["confusion_matrix_normalised"]), 1.0)
    assert 0.0 <= m["pixel_accuracy"] <= 1.0
    assert (out / "confusion_matrix.png").is_file()
    assert (out / "error_overlays" / "train-volume_slice025_error.png").is_file()


@pytest.mark.slow
def test_border_weight_override_trains_with_weighted_labels(tmp_path, data_dir):
    """configs/border_weights.json: the weight map rides as a second label channel into the weighted loss."""
    from monai.bundle import ConfigParser

    out, ckpt = tmp_path / "out", tmp_path / "models"
    overrides = {"dataset_dir": str(data_dir(DATASET)), "output_dir": str(out), "ckpt_dir": str(ckpt)}
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "border_weights.json")])
    parser.update({"bundle_root": str(ROOT), **overrides, "train_slices": [0], "patch_size": [96, 96]})
    for _ in parser.get_parsed_content("initialize"):
        pass
    sample = parser.get_parsed_content("train#dataset")[0][0]
    assert sample["label"].shape == (2, 96, 96)  # class index + weight map
    cls, weight = sample["label"][0], sample["label"][1]
    assert set(torch.unique(cls).tolist()) <= {0.0, 1.0}
    assert float(weight.min()) >= 1.0 - 1e-4 and float(weight.max()) > 2.0  # thin membranes weigh more
    run_workflow(
        NAME,
        ["train.json", "border_weights.json"],
        "train",
        **overrides,
        **TINY_TRAINING,
        **{"train#trainer#max_epochs": 2},
    )
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves["loss"]) == 2 and (ckpt / "model.pt").is_file()
    assert 0.0 < curves["val_membrane_dice"][-1] <= 1.0


def test_evaluation_on_committed_weights_reproduces_the_model_card(tmp_path, data_dir, weights):
    card = json.loads((ROOT / "docs" / "metrics_test.json").read_text())
    out = tmp_path / "eval"
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval", dataset_dir=str(data_dir(DATASET)), output_dir=str(out))
    m = read_metrics(out)
    assert m["n_slices"] == card["n_slices"] == 5
    for key in ("pixel_accuracy", "membrane_dice", "cell_dice", "adapted_rand_error", "isbi_pixel_error"):
        assert m[key] == pytest.approx(card[key], abs=0.005), key
    for key in ("v_rand", "v_info", "instance_v_rand", "instance_v_info"):  # the challenge's scores, as in the card
        assert m[key] == pytest.approx(card[key], abs=0.002), key
    assert m["v_rand_threshold"] == card["v_rand_threshold"]
    assert len(list((out / "error_overlays").glob("*_error.png"))) == 5


def test_instance_parameters_are_the_ones_chosen_on_validation_slices():
    """evaluate.json and configs/instances.json carry the watershed parameters of docs/instances_val.json."""
    chosen = json.loads((ROOT / "docs" / "instances_val.json").read_text())
    assert chosen["split"] == "val_slices" and chosen["slices"] == [20, 21, 22, 23, 24]
    best = chosen["best"]
    assert best["v_rand"] == max(row["v_rand"] for row in chosen["grid"])
    for config in ("evaluate.json", "instances.json"):
        c = json.loads((ROOT / "configs" / config).read_text())
        for key in ("sigma", "seed_depth", "merge_threshold"):
            assert c[f"instance_{key}"] == best[key], (config, key)


def test_inference_with_instances_writes_a_cell_label_tiff(tmp_path, data_dir, weights):
    from skimage.measure import label as components

    from medcnn.metrics import foreground_restricted_scores

    ds = data_dir(DATASET)
    out = tmp_path / "inf"
    run_workflow(
        NAME, ["inference.json", "instances.json"], "infer", dataset_dir=str(ds), output_dir=str(out), input_slices=[22]
    )
    membranes = read_stack(out / "predictions" / "images_membranes.tif")
    cells = read_stack(out / "predictions" / "images_instances.tif")
    assert membranes.shape == cells.shape == (1, 512, 512) and cells.dtype == np.uint32
    assert set(np.unique(membranes).tolist()) <= {0, 255}  # the membrane mask is still written, unchanged
    truth = components(read_stack(ds / "train" / "labels" / "22.png")[0] > 0, connectivity=1)
    assert cells.min() >= 1 and len(np.unique(cells)) > 0.5 * truth.max()  # a label per cell, no boundary
    assert foreground_restricted_scores(truth, cells[0])["v_rand"] > 0.9  # a validation slice


def test_inference_writes_a_membrane_tiff_stack(tmp_path, data_dir, weights):
    ds = data_dir(DATASET)
    out = tmp_path / "inf"
    run_workflow(NAME, ["inference.json"], "infer", dataset_dir=str(ds), output_dir=str(out), input_slices=[27])
    pred = read_stack(out / "predictions" / "images_membranes.tif")
    label = read_stack(ds / "train" / "labels" / "27.png")
    assert pred.shape == (1, 512, 512) and pred.dtype == np.uint8
    assert set(np.unique(pred).tolist()) <= {0, 255}
    assert (pred == label).mean() > 0.8  # same convention as the source labels (membrane = 0)


def test_eval_datalist_with_bad_labels_or_slice_counts_names_the_file(tmp_path, data_dir, weights):
    ds = data_dir(DATASET)
    img = read_stack(ds / "train" / "images")[25:27]
    lab = read_stack(ds / "train" / "labels")[25:27].copy()
    write_tiff_stack(img, tmp_path / "img.tif")
    lab[0, 0, :5] = 128
    write_tiff_stack(lab, tmp_path / "lab128.tif")
    write_tiff_stack(lab[:1], tmp_path / "lab1.tif")
    for label_file, pattern in (("lab128.tif", r"lab128\.tif.*128"), ("lab1.tif", r"img\.tif: 2 slices.*lab1\.tif: 1")):
        dl = tmp_path / f"{label_file}.json"
        dl.write_text(json.dumps([{"image": "img.tif", "label": label_file}]))
        with pytest.raises(Exception) as info:
            run_workflow(
                NAME,
                ["train.json", "evaluate.json"],
                "eval",
                dataset_dir=str(ds),
                output_dir=str(tmp_path / "e"),
                eval_datalist=str(dl),
            )
        import re

        assert re.search(pattern, _chain(info.value), re.S), _chain(info.value)[-2000:]


def test_torchscript_export_matches_eager(tmp_path, weights):
    from monai.bundle import verify_net_in_out

    meta, inf = str(ROOT / "configs" / "metadata.json"), str(ROOT / "configs" / "inference.json")
    x = torch.randn(1, 1, 192, 192, generator=torch.Generator().manual_seed(0))
    export_matches_eager(NAME, weights, x, tmp_path)
    verify_net_in_out("network_def", meta_file=meta, config_file=inf, bundle_root=str(ROOT))


def _error_bands_script():
    import importlib.util
    import sys

    path = ROOT.parents[1] / "scripts" / "em_error_bands.py"
    if str(path.parent) not in sys.path:  # as `python scripts/em_error_bands.py` does: its shared em_ensemble module
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("em_error_bands", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_error_band_analysis_reproduces_the_model_card(tmp_path, data_dir, weights):
    bands = _error_bands_script()
    membrane = np.zeros((6, 6), bool)
    membrane[:, 2:4] = True  # a two-pixel-wide membrane: columns 1-4 touch both classes
    assert bands.edge_band(membrane)[0].tolist() == [False, True, True, True, True, False]
    card = json.loads((ROOT / "docs" / "error_bands_val.json").read_text())
    out = bands.main(["--dataset_dir", str(data_dir(DATASET)), "--out", str(tmp_path / "bands.json")])
    assert [r["slice"] for r in out["slices"]] == [20, 21, 22, 23, 24]  # validation slices, never the test ones
    for key in ("pixel_accuracy", "share_of_wrong_pixels_in_edge_band", "pixel_accuracy_if_edge_band_right"):
        assert out[key] == pytest.approx(card[key], abs=0.002), key
