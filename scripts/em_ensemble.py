"""The EM bundle's evaluation ensemble on one slice split: what ``em_instances.py`` and ``em_error_bands.py`` share.

The bundle's ``train.json`` + ``evaluate.json`` are parsed with the datalist restricted to ``split``, the checkpoint
is loaded, and every slice goes through the evaluation inferer (8-view ensemble around the sliding window).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "em_membrane_segmentation"
SPLITS = ("val_slices", "test_slices", "train_slices")


def shown_path(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (stable across checkouts), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def membrane_probabilities(ckpt: str | Path, split: str = "val_slices",
                           dataset_dir: str | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(slice index, membrane probability (H, W) float32, reference membrane mask (H, W) bool)`` per slice."""
    from monai.bundle import ConfigParser

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with tempfile.TemporaryDirectory() as tmp:
        p = ConfigParser()
        p.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")])
        p["bundle_root"], p["output_dir"] = str(BUNDLE), tmp
        if dataset_dir:
            p["dataset_dir"] = dataset_dir
        p["validate#dataset#data"] = f"$medcnn.data.expand_stack_datalist(@stacks, @{split})"
        for _ in p.get_parsed_content("initialize"):
            pass
        net = p.get_parsed_content("network")
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        net.eval()
        inferer, dataset = p.get_parsed_content("validate#inferer"), p.get_parsed_content("validate#dataset")
        with torch.no_grad():
            for item in dataset:
                logits = inferer(item["image"][None].as_tensor(), net)
                prob = torch.softmax(logits, 1)[0, 1].numpy().astype(np.float32)
                yield int(item["slice"]), prob, item["label"][0].numpy() > 0.5
