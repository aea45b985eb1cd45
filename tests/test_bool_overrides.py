"""Command-line overrides of a bundle's bool ids mean what they say.

``python -m monai.bundle run ... --dihedral_tta false`` hands the config the STRING ``'false'`` (python-fire only
parses ``False`` as a bool), and ``bool('false')`` is True. The contract, for every bundle config file in the stack
its model card runs it in and every top-level id whose default is a bool: with the override given as the strings
``'false'`` / ``'true'``, every consumer of the id resolves to what the Python bool gives, and ``'flase'`` is an
error naming the id and the value.

A consumer is every config entry whose text refers to ``@<id>``: a ``$`` expression (resolved and compared as the
object it gives: type and public state) or a component argument (compared as the value the constructor receives;
building the component itself would build trainers, checkpoints and pseudo-mask writers that need data and
weights, and a constructor given equal arguments builds an equal component).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, bundle_root
from bundle_helpers import error_messages as _messages
from monai.bundle import ConfigParser
from test_bundle_coco_segmentation import make_coco_images

#: the configs a file is layered on in its bundle's model card (default: ``train.json``); ``split.json`` is data
BASE = {"inference.json": [], "train.json": [], "predict.json": ["inference.json"],
        "instances.json": ["inference.json"],
        "weak_evaluate_segmenter.json": ["train.json", "weak_train_segmenter.json"],
        "weak_pseudo_masks_from_segmenter.json": ["train.json", "weak_pseudo_masks.json", "weak_train_segmenter.json"]}
NOT_CONFIGS = {"metadata.json", "split.json"}


def _stacks() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for cfg in sorted(BUNDLES.glob("*/configs/*.json")):
        if cfg.name in NOT_CONFIGS:
            continue
        out.append((cfg.parent.parent.name, (*BASE.get(cfg.name, ["train.json"]), cfg.name)))
    return out


def _read(name: str, files: tuple[str, ...]) -> dict:
    parser = ConfigParser()
    parser.read_config([str(bundle_root(name) / "configs" / f) for f in files])
    return parser.get()


def _bool_ids(name: str, files: tuple[str, ...]) -> list[str]:
    return sorted(k for k, v in _read(name, files).items() if isinstance(v, bool))


def _consumers(node, flag: str, path: str = "") -> list[str]:
    """Config paths of the strings that refer to ``@flag`` (a reference or an expression using it)."""
    import re

    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _consumers(value, flag, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _consumers(value, flag, f"{path}#{i}")
    elif isinstance(node, str) and re.search(rf"@{re.escape(flag)}(?![\w#])", node):
        found.append(path)
    return found


CASES = [(n, f, i) for n, f in _stacks() for i in _bool_ids(n, f)]


def _state(obj, depth: int = 3):
    """What a resolved consumer is, for comparing two resolutions: plain values as they are, objects by type and
    public attributes (tensors by shape and dtype, modules by type: their weights are random)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return type(obj).__name__, obj
    if isinstance(obj, (list, tuple)):
        return type(obj).__name__, [_state(v, depth) for v in obj]
    if isinstance(obj, dict):
        return "dict", {str(k): _state(v, depth) for k, v in obj.items()}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return type(obj).__name__, tuple(obj.shape), str(obj.dtype)
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if depth == 0 or isinstance(obj, torch.nn.Module) or not hasattr(obj, "__dict__"):
        return kind
    return kind, {k: _state(v, depth - 1) for k, v in sorted(vars(obj).items())
                  if not k.startswith("_") and not callable(v)}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """A COCO test folder with one labelled and one unlabelled image (``eval_include_unlabelled`` tells them apart),
    so that no consumer needs real data."""
    root = tmp_path_factory.mktemp("bool_ids")
    json_file = make_coco_images(root / "valid", 2, seed=3)
    coco = json.loads(json_file.read_text())
    coco["annotations"] = coco["annotations"][:1]
    json_file.write_text(json.dumps(coco))
    return root


def _resolve(name: str, files: tuple[str, ...], flag: str, value, path: str, dataset: Path, device: str | None):
    parser = ConfigParser()
    parser.read_config([str(bundle_root(name) / "configs" / f) for f in files])
    parser["bundle_root"] = str(bundle_root(name))
    parser["dataset_dir"] = str(dataset)
    if device is not None:
        parser["device"] = f"$torch.device('{device}')"
    parser[flag] = value
    return parser.get_parsed_content(path, instantiate=True)


def _devices(name: str, files: tuple[str, ...], path: str) -> list[str | None]:
    """The machine's device, and for a consumer that reads ``@device`` also a GPU's (``$@amp and @device.type ==
    'cuda'`` is False on a CPU whatever ``amp`` is; only a ``torch.device('cuda')`` object is made, nothing is
    moved to it)."""
    text = ConfigParser(_read(name, files))[path]
    return [None, "cuda"] if isinstance(text, str) and "@device" in text else [None]


def test_every_bundle_bool_id_is_checked():
    """The ids the contract covers, each consumed by some config of its bundle (else the contract checks nothing)."""
    ids = {(n, i) for n, _, i in CASES}
    assert {"dihedral_tta", "largest_region_only", "fill_holes", "box_postprocessing", "resume", "amp",
            "score_flip", "cam_largest_component", "overwrite", "eval_include_unlabelled",
            "slice_by_slice"} <= {i for _, i in ids}
    for n, i in sorted(ids - {("brats_tumour_localisation", "slice_by_slice")}):  # read by medcnn predict
        assert any(_consumers(_read(n, files), i) for m, files, j in CASES if (m, j) == (n, i)), f"{n}: {i} unused"


@pytest.mark.parametrize("name,files,flag", CASES, ids=[f"{n}-{f[-1][:-5]}-{i}" for n, f, i in CASES])
def test_string_override_resolves_like_the_python_bool(name, files, flag, small_dataset):
    failures = []
    for path in _consumers(_read(name, files), flag):
        for device in _devices(name, files, path):
            for text, value in (("false", False), ("true", True), ("FALSE", False), ("1", True)):
                got = _state(_resolve(name, files, flag, text, path, small_dataset, device))
                want = _state(_resolve(name, files, flag, value, path, small_dataset, device))
                if got != want:
                    failures.append(f"--{flag} {text} (device {device or 'default'}): {path} -> {got}, "
                                    f"the bool {value} gives {want}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name,files,flag", CASES, ids=[f"{n}-{f[-1][:-5]}-{i}" for n, f, i in CASES])
def test_unparseable_override_is_an_error_naming_the_id(name, files, flag, small_dataset):
    silent = []
    for path in _consumers(_read(name, files), flag):
        try:
            got = _resolve(name, files, flag, "flase", path, small_dataset, None)
        except Exception as exc:  # noqa: BLE001 - the message is the contract
            text = _messages(exc)
            assert flag in text and "'flase'" in text, text
        else:
            silent.append(f"{path} -> {got!r}")
    assert not silent, f"--{flag} flase was accepted: " + "; ".join(silent)


def test_every_initialize_list_installs_the_error_handler():
    """A config that replaces ``initialize`` keeps ``medcnn.errors.install_error_handler()`` in it: without it an
    unparseable override ends the run with MONAI's ``Failed to evaluate ConfigExpression`` instead of the line
    naming the id."""
    missing = []
    for cfg in sorted(BUNDLES.glob("*/configs/*.json")):
        init = json.loads(cfg.read_text()).get("initialize") if cfg.name not in NOT_CONFIGS else None
        if init is not None and "$medcnn.errors.install_error_handler()" not in init:
            missing.append(str(cfg.relative_to(BUNDLES)))
    assert not missing, missing


@pytest.mark.slow  # one `python -m monai.bundle run` start-up (imports, config, network): 15-45 s here
def test_command_line_flase_ends_with_one_line_naming_the_id(tmp_path):
    """``python -m monai.bundle run ... --dihedral_tta flase``: the run stops before any image is read, and the
    last line the user sees names the id and the value."""
    import os
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"), "--dihedral_tta", "flase"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MEDCNN_TRACEBACK", None)
    proc = subprocess.run(cmd, cwd=bundle_root("coco_tumour_segmentation"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: dihedral_tta must be true or false (or yes / no, 1 / 0), got 'flase'", proc.stderr[-2000:]
