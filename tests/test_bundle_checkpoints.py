"""Nothing a user has is lost: training writes under ``output_dir``; evaluation and inference read committed weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from tests.bundle_helpers import BUNDLES

TRAINING_BUNDLES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())


def _parsed(name: str, configs: list[str], **override) -> ConfigParser:
    root = BUNDLES / name
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(root), **override})
    return parser


def _components(node, target: str):
    """Every config dict with ``_target_`` == ``target`` (recursively)."""
    if isinstance(node, dict):
        if node.get("_target_") == target:
            yield node
        for v in node.values():
            yield from _components(v, target)
    elif isinstance(node, list):
        for v in node:
            yield from _components(v, target)


def test_every_training_bundle_is_checked():
    assert len(TRAINING_BUNDLES) >= 6, TRAINING_BUNDLES


@pytest.mark.parametrize("name", TRAINING_BUNDLES)
def test_training_checkpoints_go_under_output_dir_not_to_the_committed_weights(name, tmp_path):
    parser = _parsed(name, ["train.json"], output_dir=str(tmp_path / "out"))
    ckpt_dir = Path(parser.get_parsed_content("ckpt_dir"))
    assert ckpt_dir == tmp_path / "out" / "models"
    savers = list(_components(parser.get(""), "medcnn.handlers.CheckpointSaver"))
    assert savers and all(h["save_dir"] == "@ckpt_dir" for h in savers), name
    committed = (BUNDLES / name / "models").resolve()
    assert ckpt_dir.resolve() != committed


@pytest.mark.parametrize("name", TRAINING_BUNDLES)
@pytest.mark.parametrize("configs", [["train.json", "evaluate.json"], ["inference.json"]])
def test_evaluation_and_inference_load_the_committed_weights_by_default(name, configs, tmp_path):
    parser = _parsed(name, configs, output_dir=str(tmp_path / "out"))
    path = Path(parser.get_parsed_content("ckpt_path"))
    assert path.resolve() == (BUNDLES / name / "models" / "model.pt").resolve()
    assert path.is_file()
    loaders = list(_components(parser.get(""), "medcnn.handlers.CheckpointLoader"))
    assert loaders and all(h["load_path"] == "@ckpt_path" for h in loaders), (name, loaders)
    # a user's trained weights are chosen explicitly
    other = tmp_path / "mine.pt"
    assert _parsed(name, configs, ckpt_path=str(other)).get_parsed_content("ckpt_path") == str(other)


def test_a_default_training_run_writes_to_eval_models():
    """The default output folder of a bundle run from inside its folder is ``eval/``, beside ``models/``."""
    for name in TRAINING_BUNDLES:
        parser = _parsed(name, ["train.json"])
        ckpt = os.path.normpath(parser.get_parsed_content("ckpt_dir"))
        assert ckpt == os.path.normpath(str(BUNDLES / name / "eval" / "models")), (name, ckpt)
