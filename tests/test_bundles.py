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
