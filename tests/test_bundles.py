"""The bundle contract of DESIGN.md §3, checked once for every bundle (bundle-specific figures stay in
tests/test_bundle_<name>.py)."""

from __future__ import annotations

import json

import pytest
import torch
from bundle_helpers import BUNDLES, META_SCHEMA, bundle_root
from monai.bundle import ConfigParser

ALL_BUNDLES = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))
#: synthetic_localisation generates its images: its data/ folder is all it needs
GENERATED_DATA = {"synthetic_localisation"}

TRAIN_IDS = ["bundle_root", "dataset_dir", "output_dir", "ckpt_dir", "device", "network_def", "network",
             "train#trainer", "train#trainer#max_epochs", "train#dataset#data", "train#handlers",
             "validate#evaluator", "validate#dataset#data", "val_interval"]
INFERENCE_IDS = ["network_def", "preprocessing", "inferer", "postprocessing"]
#: the required properties of MONAI's "eval" workflow type (``ConfigWorkflow(workflow_type="eval")``)
EVAL_IDS = ["dataset", "evaluator", "inferer"]


def _parser(name: str, *configs: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle_root(name) / "configs" / c) for c in configs])
    return parser


def _targets(node, suffix: str) -> list[dict]:
    """Every config dict whose ``_target_`` ends with ``suffix``, anywhere in ``node``."""
    found = []
    if isinstance(node, dict):
        if str(node.get("_target_", "")).endswith(suffix):
            found.append(node)
        for value in node.values():
            found += _targets(value, suffix)
    elif isinstance(node, list):
        for value in node:
            found += _targets(value, suffix)
    return found


def test_every_bundle_folder_is_checked():
    folders = sorted(p.name for p in BUNDLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    assert ALL_BUNDLES == folders, "a bundle folder without configs/metadata.json"


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_metadata_verifies_against_the_shipped_schema(name):
    from monai.bundle import verify_metadata

    import medcnn

    meta_file = bundle_root(name) / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(META_SCHEMA))  # raises naming what is invalid
    meta = json.loads(meta_file.read_text())
    assert meta["required_packages_version"]["medcnn"] == medcnn.__version__


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_top_level_config_ids_of_the_bundle_contract(name):
    train = _parser(name, "train.json")
    assert [i for i in TRAIN_IDS if i not in train] == [], f"{name}/configs/train.json"
    inference = _parser(name, "inference.json")
    assert [i for i in INFERENCE_IDS if i not in inference] == [], f"{name}/configs/inference.json"
    evaluate = _parser(name, "train.json", "evaluate.json")
    assert "validate#evaluator" in evaluate and "eval_datalist" in evaluate, f"{name}/configs/evaluate.json"
    assert [i for i in EVAL_IDS if i not in evaluate] == [], f"{name}/configs/evaluate.json"


@pytest.mark.parametrize("name", sorted(set(ALL_BUNDLES) - GENERATED_DATA))
def test_dataset_dir_defaults_through_resolve_data_dir(name):
    """``$MEDCNN_DATA_DIR/<dataset>`` or the bundle's data/ folder, never a machine path or the repository layout."""
    value = json.loads((bundle_root(name) / "configs" / "train.json").read_text())["dataset_dir"]
    assert value.startswith("$medcnn.data.resolve_data_dir(") and value.endswith(", @bundle_root)"), value


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_evaluate_json_writes_output_dir_metrics_json(name):
    config = json.loads((bundle_root(name) / "configs" / "evaluate.json").read_text())
    writers = _targets(config, "MetricsJSONWriter")
    assert writers, f"{name}/configs/evaluate.json has no MetricsJSONWriter"
    assert any(w.get("output_dir") == "@output_dir" and w.get("filename", "metrics.json") == "metrics.json"
               for w in writers), writers


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_committed_weights_load_as_plain_tensors_into_the_network(name):
    """``models/model.pt`` loads with ``weights_only=True`` into the inference network, every key matching."""
    weights = bundle_root(name) / "models" / "model.pt"
    assert weights.is_file(), f"{name}: no committed models/model.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    parser = _parser(name, "inference.json")
    parser["bundle_root"] = str(bundle_root(name))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)  # strict: raises naming missing / unexpected keys


def _literal_num_workers(node, where: str = "") -> list[str]:
    """Config paths whose ``num_workers`` is a literal number rather than a config id."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_workers" and isinstance(value, int) and where:  # a top-level id is the definition
                found.append(f"{where}#{key}")
            found += _literal_num_workers(value, f"{where}#{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _literal_num_workers(value, f"{where}#{i}")
    return found


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_worker_counts_are_config_ids(name):
    """Loader and cache workers are set once per bundle (``num_workers`` / ``cache_num_workers``), so a user with
    more cores changes one id on the command line instead of editing every loader."""
    configs = sorted((bundle_root(name) / "configs").glob("*.json"))
    literal = {c.name: _literal_num_workers(json.loads(c.read_text())) for c in configs}
    assert not any(literal.values()), {k: v for k, v in literal.items() if v}
    for standalone in ("train.json", "inference.json"):
        parser = _parser(name, standalone)
        for key in ("num_workers", "cache_num_workers"):
            if f'"@{key}"' in (bundle_root(name) / "configs" / standalone).read_text():
                assert isinstance(parser.get_parsed_content(key), int), f"{name}/{standalone}: {key}"


@pytest.mark.parametrize("name", [n for n in ALL_BUNDLES
                                  if _targets(json.loads((bundle_root(n) / "configs" / "evaluate.json").read_text()),
                                              "PDFReportHandler")])
def test_report_handler_block_gives_each_argument_once(name):
    """The PDF report block: handler arguments, a nested ReportCases collection, page options of the writer."""
    import inspect

    from medcnn.handlers.report import PAGE_OPTIONS, PDFReportHandler
    from medcnn.report.cases import ReportCases
    from medcnn.report.pdf import write_case_report

    assert set(PAGE_OPTIONS) <= set(inspect.signature(write_case_report).parameters)
    for block in _targets(json.loads((bundle_root(name) / "configs" / "evaluate.json").read_text()),
                          "PDFReportHandler"):
        handler_args = set(inspect.signature(PDFReportHandler).parameters)
        assert set(block) - {"_target_"} <= handler_args, f"{name}: {sorted(set(block) - handler_args)}"
        cases = block["cases"]
        assert cases["_target_"] == "medcnn.report.cases.ReportCases", name
        assert set(cases) - {"_target_"} <= set(inspect.signature(ReportCases).parameters), name
        assert set(block.get("page_options", {})) <= set(PAGE_OPTIONS), name


# ---------------------------------------------------------------------------------------- --eval_datalist
# Each entry writes a few labelled cases of a bundle into a user folder as a JSON datalist with relative paths and
# returns (datalist file, overrides giving the SAME cases through the bundle's own data, figures to compare, count
# key and count). The cases come from the bundle's own test data (real data) or its generator (synthetic).


def _synthetic_user_cases(folder, data_dir):
    import nibabel as nib
    import numpy as np

    from medcnn.data.synthetic import synthetic_datalist

    config = json.loads((bundle_root("synthetic_localisation") / "configs" / "train.json").read_text())
    entries = []
    for i, item in enumerate(synthetic_datalist(6, 7, **config["synthetic"])):
        nib.save(nib.Nifti1Image(item["image"][0], np.eye(4)), folder / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(item["mask"][0].astype(np.uint8), np.eye(4)), folder / f"msk{i}.nii.gz")
        entries.append({"image": f"img{i}.nii.gz", "mask": f"msk{i}.nii.gz", "label": int(item["label"])})
    return entries, {"num_test": 6, "test_seed": 7}, ("accuracy", "auc", "cam_dice"), "n_images", 6


def _pneumonia_user_cases(folder, data_dir):
    import numpy as np
    from PIL import Image

    d = np.load(data_dir("pneumoniamnist") / "pneumoniamnist.npz")
    y = d["test_labels"][:, 0]
    idx = np.r_[np.flatnonzero(y == 0)[:4], np.flatnonzero(y == 1)[:4]]
    np.savez(folder / "same.npz", test_images=d["test_images"][idx], test_labels=d["test_labels"][idx])
    entries = []
    for i in idx:
        Image.fromarray(d["test_images"][i]).save(folder / f"x{i}.png")
        entries.append({"image": f"x{i}.png", "label": int(y[i])})
    own = {"dataset_dir": str(data_dir("pneumoniamnist")), "eval_datalist": str(folder / "same.npz"), "num_gradcam": 0}
    return entries, own, ("accuracy", "auc", "sensitivity", "specificity"), "n_images", 8


def _hippocampus_user_cases(folder, data_dir):
    import shutil

    ds = data_dir("msd_hippocampus")
    cases = json.loads((bundle_root("hippocampus_segmentation") / "configs" / "split.json").read_text())["test"][:2]
    entries = []
    for case in cases:
        for key in ("image", "label"):
            (folder / key).mkdir(exist_ok=True)
            shutil.copy(ds / case[key], folder / key / case[key].split("/")[-1])
        entries.append({k: f"{k}/{case[k].split('/')[-1]}" for k in ("image", "label")})
    own = {"dataset_dir": str(ds), "validate#dataset#data": "$@test_datalist[:2]"}
    return entries, own, ("mean_dice", "dice_anterior", "dice_posterior"), "n_cases", 2


def _em_user_cases(folder, data_dir):
    from medcnn.data.tiff import read_stack, write_tiff_stack

    ds = data_dir("isbi2012_em_membranes")
    (folder / "stacks").mkdir()
    write_tiff_stack(read_stack(ds / "train" / "images")[25:27], folder / "stacks" / "img.tif")
    write_tiff_stack(read_stack(ds / "train" / "labels")[25:27], folder / "stacks" / "lab.tif")
    own = {"dataset_dir": str(ds), "test_slices": [25, 26]}
    return ([{"image": "stacks/img.tif", "label": "stacks/lab.tif"}], own,
            ("pixel_accuracy", "membrane_dice", "cell_dice"), "n_slices", 2)


USER_CASES = {
    "synthetic_localisation": _synthetic_user_cases,
    "pneumonia_classification": _pneumonia_user_cases,
    "hippocampus_segmentation": _hippocampus_user_cases,
    "em_membrane_segmentation": _em_user_cases,
}


@pytest.mark.parametrize("name", sorted(USER_CASES))
def test_eval_datalist_with_relative_paths_gives_the_figures_of_the_same_cases(name, tmp_path, data_dir):
    """DESIGN.md §3: a user's labelled cases as a JSON list with paths relative to the JSON file, evaluated from
    another working folder, give the figures the bundle's own data path gives on the same cases."""
    import os

    from bundle_helpers import read_metrics, run_workflow

    user = tmp_path / "user"
    user.mkdir()
    entries, own, figures, count_key, count = USER_CASES[name](user, data_dir)
    (user / "mine.json").write_text(json.dumps(entries))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)  # relative paths resolve against the JSON's folder, not the working directory
    try:
        run_workflow(name, ["train.json", "evaluate.json"], None, output_dir=str(tmp_path / "mine"),
                     eval_datalist=str(user / "mine.json"),
                     **{k: v for k, v in own.items() if k not in ("eval_datalist", "validate#dataset#data",
                                                                    "num_test", "test_seed", "test_slices")})
    finally:
        os.chdir(cwd)
    run_workflow(name, ["train.json", "evaluate.json"], None, output_dir=str(tmp_path / "own"), **own)
    mine, reference = read_metrics(tmp_path / "mine"), read_metrics(tmp_path / "own")
    assert mine[count_key] == reference[count_key] == count
    for key in figures:
        assert mine[key] == pytest.approx(reference[key], abs=1e-6), key
