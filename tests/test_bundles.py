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
