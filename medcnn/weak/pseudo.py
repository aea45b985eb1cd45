"""Classifier + CAM rule -> pseudo-masks of a whole training set, written with the image geometry and provenance.

Only image-level labels are read: every item is reduced to its image, its class label and its id
(:func:`image_level_items`) before anything is loaded, so a training set's pixel labels (``"mask"``, ``"seg"``,
...) never reach the pipeline. Positive images (class 1) get the CAM mask of the rule (:class:`CAMToMask`, with
the image-level label as the decision), then the refinement steps (:mod:`medcnn.weak.refine`); negative images
get an empty mask with full weight. A positive image whose mask comes out empty (the refinement can erase a small
region) trains as an empty image unless ``ignore_empty_positives``: then it gets weight 0 everywhere, since its
label says the object is there and the mask does not say where.

A second round (self-training) uses the same path with ``heatmap="segmenter"``: the network is the segmenter
trained on the first round's pseudo-masks, its softmax probability of ``rule.class_idx`` is the heatmap, and the
rule thresholds it as a probability (``CAMRule(mode="probability", threshold=0.5)``); the image-level label still
decides which images may hold the object.

Files in ``output_dir`` (NIfTI, 2D or 3D, affine of the preprocessed image): ``<id>_image.nii.gz`` (the image the
mask was computed on), ``<id>_pseudo.nii.gz`` (uint8 mask), ``<id>_weight.nii.gz`` (float32, 0 = ignored),
``<id>_cam.nii.gz`` (float32 heatmap), and ``pseudo_masks.json``: provenance (weights file + sha256, rule,
refinement, time, counts, throughput) and a ``"training"`` datalist (``image``, ``label`` = pseudo-mask,
``weight``, ``class``) that :func:`medcnn.data.datalist.load_datalist` reads.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from medcnn.config import flag
from medcnn.localisation.rule import CAMRule, CAMToMask
from medcnn.weak.refine import PseudoMaskRefiner, build_refiners, refine

__all__ = [
    "HEATMAP_SOURCES",
    "PROVENANCE_FILE",
    "PseudoMaskGenerator",
    "compute_pseudo_masks",
    "file_sha256",
    "image_level_items",
    "load_classifier",
    "previous_round_segmenter",
    "pseudo_mask_datalist",
]

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "pseudo_masks.json"
#: where the heatmap of a positive image comes from: the rule's CAM of a classifier, or a segmenter's softmax
HEATMAP_SOURCES = ("cam", "segmenter")
SUFFIXES = {"image": "_image.nii.gz", "label": "_pseudo.nii.gz", "weight": "_weight.nii.gz", "cam": "_cam.nii.gz"}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_classifier(network: nn.Module, weights_file: str | os.PathLike, device: Any = None) -> nn.Module:
    """Load ``weights_file`` (a state dict, or a checkpoint dict with ``"model"``) into ``network``, strictly.

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing, unreadable or does not match the
            network definition (missing / unexpected / differently shaped parameters).
    """
    path = Path(weights_file)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling error means the file is not a checkpoint
        raise ValueError(f"classifier weights {path}: not a readable PyTorch checkpoint ({e})") from None
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise ValueError(f"classifier weights {path}: expected a state dict, got {type(state).__name__}")
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"classifier weights {path} do not match the network definition {type(network).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}, shape mismatch {shapes[:5]}"
        )
    network.load_state_dict(state, strict=True)
    if device is not None:
        network.to(device)
    return network.eval()


def image_level_items(
    data: Sequence[Mapping[str, Any]], image_key: str = "image", label_key: str = "label", id_key: str = "id",
) -> list[dict[str, Any]]:
    """``data`` reduced to ``{image_key, label_key, id_key}`` per item: the only keys the pseudo-mask path reads.

    Raises:
        ValueError: an item without an image or an image-level label (0 / 1).
    """
    out = []
    for i, item in enumerate(data):
        name = item.get(id_key) or (item[image_key] if isinstance(item.get(image_key), (str, os.PathLike)) else i)
        if image_key not in item:
            raise ValueError(f"training item {name}: no {image_key!r}")
        if label_key not in item or item[label_key] is None:
            raise ValueError(f"training item {name}: no image-level label {label_key!r} (0 / 1)")
        label = int(np.asarray(item[label_key]).reshape(-1)[0])
        if label not in (0, 1):
            raise ValueError(f"training item {name}: image-level label {label_key!r} must be 0 or 1, got {label}")
        if isinstance(item.get(image_key), (str, os.PathLike)):
            default_id = Path(str(item[image_key])).name.split(".")[0]
        else:
            default_id = f"item_{i:05d}"
        out.append({image_key: item[image_key], label_key: label, id_key: str(item.get(id_key) or default_id)})
    ids = [o[id_key] for o in out]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})[:5]
        raise ValueError(f"training items share ids {dup}: pseudo-mask files would collide")
    return out


def _default_preprocessing(image_key: str) -> Callable:
    from monai.transforms import EnsureTyped, LoadImaged

    load = LoadImaged(keys=image_key, ensure_channel_first=True, image_only=True)
    ensure = EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=True)

    def prep(d: dict) -> dict:
        return ensure(load(d) if isinstance(d[image_key], (str, os.PathLike)) else d)

    return prep


def compute_pseudo_masks(
    network: nn.Module,
    items: Sequence[Mapping[str, Any]],
    rule: CAMRule | Mapping[str, Any],
    refinement: Sequence[PseudoMaskRefiner | Mapping[str, Any]] | None = None,
    preprocessing: Callable | None = None,
    batch_size: int = 16,
    keys: Sequence[str] = ("image", "label"),
    id_key: str = "id",
    progress: bool = False,
    heatmap: str = "cam",
    ignore_empty_positives: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "class", "image" (C, *S), "cam" (1, *S), "label" (1, *S) uint8, "weight" (1, *S)}`` per item.

    ``items`` are reduced by :func:`image_level_items` first (pixel labels are dropped unread), then
    ``preprocessing`` (default: load a path / ensure a tensor) maps each to a channel-first image. ``heatmap``:
    ``"cam"`` (the rule's CAM of ``network``, a classifier) or ``"segmenter"`` (the softmax probability of
    ``rule.class_idx`` of ``network``, a segmenter; the ``"cam"`` key then holds that probability).
    ``ignore_empty_positives``: a positive image with an empty mask gets weight 0 everywhere (default: weight 1).
    """
    image_key, label_key = keys
    rule = CAMRule.from_dict(rule)
    steps = build_refiners(refinement)
    items = image_level_items(items, image_key, label_key, id_key)
    prep = preprocessing or _default_preprocessing(image_key)
    cam = _heatmap_fn(network, rule, heatmap)
    to_mask = CAMToMask(rule)
    device = next(network.parameters()).device
    rng = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc="pseudo-masks", unit="batch")
    for start in rng:
        chunk = [prep(dict(it)) for it in items[start: start + batch_size]]
        images = [d[image_key] for d in chunk]
        classes = [int(it[label_key]) for it in items[start: start + batch_size]]
        pos = [i for i, c in enumerate(classes) if c == 1]
        heat: dict[int, torch.Tensor] = {}
        if pos:
            x = torch.stack([torch.as_tensor(images[i]).float() for i in pos]).to(device)
            x = x.as_tensor() if isinstance(x, MetaTensor) else x
            for i, h in zip(pos, cam(x).cpu(), strict=True):
                heat[i] = h
        for i, d in enumerate(chunk):
            image = d[image_key]
            img_t = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            img_t = img_t.detach().cpu().float()
            h = heat.get(i, torch.zeros((1, *img_t.shape[1:])))
            # the image-level label is the decision: positives get the CAM region, negatives an empty mask
            mask = to_mask(h, float(classes[i]))
            mask, weight = refine(steps, img_t, h, mask) if classes[i] == 1 else (
                mask, torch.ones_like(mask, dtype=torch.float32))
            if ignore_empty_positives and classes[i] == 1 and not bool(mask.any()):  # there, but not in the mask
                weight = torch.zeros_like(weight, dtype=torch.float32)
            yield {"id": items[start + i][id_key], "class": classes[i], "image": image, "cam": h,
                   "label": mask.to(torch.uint8), "weight": weight.float()}


def previous_round_segmenter(
    previous_round: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    checkpoint: str = "segmenter/model_segmenter.pt",
) -> Path:
    """The segmenter checkpoint of the round written to ``previous_round`` (its ``--output_dir``), for the next round.

    ``previous_round`` may also be the segmenter checkpoint itself (e.g. a bundle's committed
    ``models/model_segmenter.pt``), which then need not sit under an ``output_dir`` at ``checkpoint``.

    Raises:
        ValueError: no previous round given, or it is (or lies in) this round's own ``output_dir`` (the next round
            would write over the pseudo-masks and segmenter it learns from).
        FileNotFoundError: naming the checkpoint when that round has no segmenter.
    """
    if previous_round is None or str(previous_round) == "":
        raise ValueError("a second round of pseudo-masks needs --previous_round <the --output_dir of the round whose "
                         "segmenter makes them, or that segmenter's .pt file>")
    prev, own = Path(previous_round).resolve(), Path(output_dir).resolve()
    if prev == own or (prev.is_file() and own in prev.parents):
        raise ValueError(f"--previous_round {previous_round} is (in) this run's --output_dir: the next round must be "
                         f"written to another folder, or it would replace the pseudo-masks and segmenter it learns "
                         f"from")
    if prev.is_file():
        return prev
    path = prev / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"--previous_round {previous_round}: no segmenter {path} (train one with "
                                f"weak_train_segmenter.json and that --output_dir first, or give the segmenter's "
                                f".pt file)")
    return path


def _heatmap_fn(network: nn.Module, rule: CAMRule, source: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (B, C, *S) -> (B, 1, *S)`` heatmaps of ``source`` (:data:`HEATMAP_SOURCES`)."""
    if source == "cam":
        cam = rule.cam(network)
        return lambda x: cam(x, rule.class_idx)
    if source != "segmenter":
        raise ValueError(f"pseudo-masks: unknown heatmap source {source!r}; choose one of {HEATMAP_SOURCES}")
    if rule.mode != "probability":
        raise ValueError(f"pseudo-masks: a segmenter's heatmap is a probability; its rule needs "
                         f"mode='probability' (a threshold such as 0.5), got mode={rule.mode!r}")

    def probability(x: torch.Tensor) -> torch.Tensor:
        network.eval()
        with torch.no_grad():
            logits = network(x)
        if logits.ndim != x.ndim or logits.shape[2:] != x.shape[2:] or logits.shape[1] <= rule.class_idx:
            raise ValueError(f"pseudo-masks: the segmenter maps an input {tuple(x.shape)} to {tuple(logits.shape)}; "
                             f"expected (B, classes > {rule.class_idx}, {', '.join(map(str, x.shape[2:]))})")
        return torch.softmax(logits.float(), dim=1)[:, rule.class_idx: rule.class_idx + 1]

    return probability


def _affine(image: Any) -> np.ndarray:
    """4x4 affine of a MetaTensor (identity for plain arrays); a 2D ``(3, 3)`` affine is embedded."""
    if not isinstance(image, MetaTensor):
        return np.eye(4)
    a = np.asarray(image.affine, dtype=np.float64)
    if a.shape == (4, 4):
        return a
    out = np.eye(4)
    n = a.shape[0] - 1
    out[:n, :n], out[:n, 3] = a[:n, :n], a[:n, n]
    return out


class PseudoMaskGenerator:
    """Write the pseudo-masks of a training set (see the module docstring); a bundle component with ``run()``.

    Args:
        network: the classifier definition (weights are loaded from ``weights_file``).
        weights_file: the classifier checkpoint (its path and sha256 go into the provenance file).
        data: training items with an image (array / path) and an image-level label; other keys are dropped unread.
        output_dir: folder of the files (created).
        rule: the :class:`medcnn.localisation.CAMRule` (or a dict of its fields, e.g. a calibration result).
        refinement: refinement steps (instances or ``{"name": ..., **params}`` dicts), applied in order.
        preprocessing: callable on an item dict -> dict with a channel-first image (default: load / ensure tensor).
        overwrite: replace existing files; otherwise any existing target file is an error before work starts.
        heatmap: ``"cam"`` (``network`` is a classifier) or ``"segmenter"`` (a second round: ``network`` is a
            segmenter, ``weights_file`` its checkpoint, ``rule`` a ``mode="probability"`` rule).
        ignore_empty_positives: a positive image whose (refined) mask is empty gets weight 0 everywhere instead of
            training as an empty image.
        batch_size, keys, id_key, device, progress: as named.
    """

    def __init__(
        self,
        network: nn.Module,
        weights_file: str | os.PathLike,
        data: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        rule: CAMRule | Mapping[str, Any],
        refinement: Sequence[PseudoMaskRefiner | Mapping[str, Any]] | None = None,
        preprocessing: Callable | None = None,
        overwrite: bool = False,
        batch_size: int = 16,
        keys: Sequence[str] = ("image", "label"),
        id_key: str = "id",
        device: Any = None,
        progress: bool = True,
        heatmap: str = "cam",
        ignore_empty_positives: bool = False,
    ) -> None:
        if heatmap not in HEATMAP_SOURCES:
            raise ValueError(f"PseudoMaskGenerator: unknown heatmap source {heatmap!r}; "
                             f"choose one of {HEATMAP_SOURCES}")
        self.heatmap = heatmap
        self.ignore_empty_positives = flag(ignore_empty_positives, "PseudoMaskGenerator: ignore_empty_positives")
        self.network, self.weights_file = network, Path(weights_file)
        self.data, self.output_dir = data, Path(output_dir)
        self.rule = CAMRule.from_dict(rule)
        self.refinement = build_refiners(refinement)
        self.preprocessing, self.overwrite = preprocessing, flag(overwrite, "PseudoMaskGenerator: overwrite")
        self.batch_size, self.keys, self.id_key = int(batch_size), tuple(keys), id_key
        self.device, self.progress = device, bool(progress)

    def _targets(self, ids: Sequence[str]) -> list[Path]:
        files = [self.output_dir / f"{i}{s}" for i in ids for s in SUFFIXES.values()]
        return [self.output_dir / PROVENANCE_FILE, *files]

    def run(self) -> dict[str, Any]:
        """Check everything, compute all pseudo-masks, then write them; returns the provenance dict."""
        load_classifier(self.network, self.weights_file, self.device)
        if self.heatmap == "cam":
            self.rule.check(self.network)
        items = image_level_items(self.data, *self.keys, self.id_key)
        n_pos = sum(it[self.keys[1]] == 1 for it in items)
        if n_pos == 0:
            raise ValueError(f"pseudo-masks: the training set ({len(items)} items) has no positive images "
                             f"(image-level label {self.keys[1]!r} = 1): there is nothing to localise")
        if not self.overwrite:
            existing = [str(p) for p in self._targets([it[self.id_key] for it in items]) if p.exists()]
            if existing:
                raise FileExistsError(f"pseudo-masks: {len(existing)} files already exist in {self.output_dir}, "
                                      f"e.g. {existing[0]}; pass overwrite=True (--overwrite true) to replace them")
        t0 = time.perf_counter()
        records = list(compute_pseudo_masks(self.network, items, self.rule, self.refinement, self.preprocessing,
                                            self.batch_size, self.keys, self.id_key, self.progress, self.heatmap,
                                            self.ignore_empty_positives))
        seconds = time.perf_counter() - t0
        nonempty = sum(bool(r["label"].any()) for r in records if r["class"] == 1)
        ignored = sum(not bool(r["weight"].any()) for r in records if r["class"] == 1)
        if nonempty == 0:
            raise ValueError(f"pseudo-masks: all {n_pos} positive images got an empty mask with rule "
                             f"{self.rule.to_dict()} and refinement {[s.describe() for s in self.refinement]} "
                             f"(classifier {self.weights_file}): no training is possible; check the rule")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        entries = [self._write(r) for r in records]
        prov = {
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "medcnn_version": _version(),
            "classifier": {"weights": str(self.weights_file.resolve()), "sha256": file_sha256(self.weights_file),
                           "network": type(self.network).__name__},
            "heatmap": self.heatmap, "ignore_empty_positives": self.ignore_empty_positives,
            "rule": self.rule.to_dict(),
            "refinement": [s.describe() for s in self.refinement],
            "label_source": f"image-level labels only (keys {list(self.keys)}); no pixel label was read",
            "n_images": len(records), "n_positive": int(n_pos), "n_positive_nonempty": int(nonempty),
            "n_positive_ignored": int(ignored),
            "seconds": round(seconds, 3), "images_per_second": round(len(records) / max(seconds, 1e-9), 3),
            "training": entries,
        }
        with open(self.output_dir / PROVENANCE_FILE, "w") as f:
            json.dump(prov, f, indent=2)
        logger.info("pseudo-masks: %d images (%d positive, %d non-empty masks) in %.1f s (%.2f images/s) -> %s",
                    len(records), n_pos, nonempty, seconds, prov["images_per_second"], self.output_dir)
        return prov

    def _write(self, r: dict[str, Any]) -> dict[str, Any]:
        import nibabel as nib

        affine = _affine(r["image"])
        image = r["image"].as_tensor() if isinstance(r["image"], MetaTensor) else torch.as_tensor(r["image"])
        arrays = {"image": image.detach().cpu().float().numpy(), "label": r["label"].numpy().astype(np.uint8),
                  "weight": r["weight"].numpy().astype(np.float32), "cam": r["cam"].numpy().astype(np.float32)}
        entry: dict[str, Any] = {"id": r["id"], "class": int(r["class"])}
        for key, arr in arrays.items():
            name = f"{r['id']}{SUFFIXES[key]}"
            data = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)  # channels last in NIfTI
            nib.save(nib.Nifti1Image(data, affine), self.output_dir / name)
            entry[key] = name
        return entry


def _version() -> str:
    import medcnn

    return str(getattr(medcnn, "__version__", "unknown"))


def pseudo_mask_datalist(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``"training"`` entries of ``<folder>/pseudo_masks.json`` with absolute paths (``image``, ``label``
    = pseudo-mask, ``weight``, ``cam``, ``class``, ``id``).

    Raises:
        FileNotFoundError: naming the provenance file when the folder has none (run the pseudo-mask step first).
    """
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pseudo-mask provenance file; write the pseudo-masks first")
    with open(path) as f:
        prov = json.load(f)
    out = []
    for e in prov.get("training", []):
        out.append({k: (str(path.parent / v) if k in SUFFIXES else v) for k, v in e.items()})
    if not out:
        raise ValueError(f"{path}: the pseudo-mask datalist is empty")
    return out
