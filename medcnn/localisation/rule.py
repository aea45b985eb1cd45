"""One typed CAM rule and the one post-processing transform that turns a CAM (+ class probability) into a mask.

:class:`CAMRule` holds everything that decides how a classifier's evidence becomes a region: the CAM method, its
target layer, the class whose evidence is mapped, the threshold (a fraction of each map's maximum, or Otsu),
whether only the largest connected component is kept, and the classifier's decision threshold ("absent" below
it -> empty mask). Evaluation (:class:`medcnn.handlers.cam.CAMDiceHandler`), the PDF report, MONAI Label and the
weak -> dense pipeline (:mod:`medcnn.weak`) all read a rule and apply it through :class:`CAMToMask` /
:class:`CAMToMaskd`, so the rule is spelled once and "classifier says absent -> empty mask" is written once.

A rule converts from / to the dicts found in bundles: the output of :func:`medcnn.localisation.calibrate_cam`
(``method``, ``target_layer``, ``threshold``, ``mode``, ``largest_component``), a bundle's ``cam`` config dict, and
a results JSON (``cam_method``, ``cam_layer``, ``cam_threshold``, ``cam_threshold_mode``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from torch import nn

from medcnn.config import flag
from medcnn.localisation.masks import MASK_MODES, cam_to_mask

__all__ = ["CAMRule", "CAMToMask", "CAMToMaskd", "RESULT_KEYS", "class_present"]

#: keys of a bundle's results JSON / metrics (``cam_method``, ``cam_layer``, ...) -> fields of :class:`CAMRule`
RESULT_KEYS = {"cam_method": "method", "cam_layer": "target_layer", "cam_target_layer": "target_layer",
               "cam_threshold": "threshold", "cam_threshold_mode": "mode", "cam_mode": "mode",
               "cam_largest_component": "largest_component", "cam_class_idx": "class_idx",
               "cam_decision_threshold": "decision_threshold", "cam_smooth_sigma": "smooth_sigma"}


@dataclasses.dataclass(frozen=True)
class CAMRule:
    """How a classifier's CAM becomes a binary mask.

    Args:
        method: CAM method name (:data:`medcnn.localisation.CAM_METHODS`).
        target_layer: module name of the CAM layer; ``None`` = the network's ``cam_target_layer_name``.
        class_idx: the class whose evidence is mapped (1 = object present).
        threshold: fraction of each heatmap's maximum in (0, 1] (``mode="fraction"``), or a probability
            (``mode="probability"``: heatmaps that are probabilities, a segmenter's softmax); ignored for ``"otsu"``.
        mode: ``"fraction"``, ``"otsu"`` or ``"probability"``.
        largest_component: keep only the largest connected component of the mask.
        smooth_sigma: Gaussian smoothing of the heatmap before thresholding, in pixels of the grid the rule is
            applied on (0 = none).
        decision_threshold: probability of ``class_idx`` at or above which the image is called positive; below
            it the mask is empty. ``None``: the arg-max class of a probability vector decides (a lone
            probability is then compared with 0.5).
    """

    method: str = "gradcam"
    target_layer: str | None = None
    class_idx: int = 1
    threshold: float = 0.5
    mode: str = "fraction"
    largest_component: bool = False
    decision_threshold: float | None = 0.5
    smooth_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"CAMRule: unknown threshold mode {self.mode!r}; choose one of {MASK_MODES}")
        if self.mode != "otsu" and not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"CAMRule: threshold must be a fraction of the maximum or a probability in (0, 1], "
                             f"got {self.threshold!r}")
        if self.decision_threshold is not None and not 0.0 <= float(self.decision_threshold) <= 1.0:
            raise ValueError(f"CAMRule: decision_threshold must be a probability in [0, 1], "
                             f"got {self.decision_threshold!r}")
        if float(self.smooth_sigma) < 0:
            raise ValueError(f"CAMRule: smooth_sigma must be >= 0 pixels, got {self.smooth_sigma!r}")
        object.__setattr__(self, "smooth_sigma", float(self.smooth_sigma))
        if int(self.class_idx) < 0:
            raise ValueError(f"CAMRule: class_idx must be >= 0, got {self.class_idx!r}")
        object.__setattr__(self, "method", str(self.method).lower())
        object.__setattr__(self, "class_idx", int(self.class_idx))
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "largest_component", flag(self.largest_component, "CAMRule: largest_component"))
        if self.decision_threshold is not None:
            object.__setattr__(self, "decision_threshold", float(self.decision_threshold))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | CAMRule | None = None, **overrides: Any) -> CAMRule:
        """A rule from a calibration / ``cam`` config / results dict (unknown keys ignored), then ``overrides``.

        A dict with ``cam_*`` keys is a results JSON: only those are read (its ``threshold`` is the classifier's).
        """
        if isinstance(d, CAMRule):
            return dataclasses.replace(d, **overrides) if overrides else d
        fields = {f.name for f in dataclasses.fields(cls)}
        d = dict(d or {})
        if any(k in RESULT_KEYS for k in d):  # a results JSON: its plain keys (e.g. "threshold") mean other things
            kw = {RESULT_KEYS[k]: v for k, v in d.items() if k in RESULT_KEYS}
        else:
            kw = {k: v for k, v in d.items() if k in fields}
        kw.update(overrides)
        if kw.get("threshold") is None:  # calibrate_cam gives threshold None for Otsu
            kw["threshold"] = 0.5
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Any, **overrides: Any) -> CAMRule:
        """A rule from a JSON file (a calibration result, ``models/cam_rule.json`` or a bundle's results JSON).

        Raises:
            FileNotFoundError / ValueError: naming the file when it is missing or holds no valid rule.
        """
        import json
        import os

        if not os.path.isfile(path):
            raise FileNotFoundError(f"CAM rule file {path}: no such file")
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"CAM rule file {path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"CAM rule file {path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The rule as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def mask_kwargs(self) -> dict[str, Any]:
        """``threshold`` / ``mode`` / ``largest_component`` arguments of :func:`medcnn.localisation.cam_to_mask`."""
        return {"threshold": self.threshold, "mode": self.mode, "largest_component": self.largest_component,
                "smooth_sigma": self.smooth_sigma}

    def cam(self, network: nn.Module):
        """The :class:`medcnn.localisation.CAMMethod` of this rule on ``network`` (checks the target layer)."""
        from medcnn.localisation.methods import get_cam_method

        return get_cam_method(self.method, network, self.target_layer)

    def scaled_to_grid(self, from_size: float, to_size: float) -> CAMRule:
        """This rule for heatmaps on another grid: ``smooth_sigma`` (pixels) scaled by ``to_size / from_size``.

        A rule chosen with Dice on the native mask grid (heatmaps resized to it before smoothing) and applied on the
        network grid (e.g. pseudo-masks at 128 x 128 of 256 x 256 slices) needs half the smoothing in pixels to
        smooth the same extent of anatomy. The threshold (a fraction of each heatmap's maximum) and the largest
        component do not depend on the grid.
        """
        if float(from_size) <= 0 or float(to_size) <= 0:
            raise ValueError(f"CAMRule.scaled_to_grid: sizes must be > 0 pixels, got {from_size!r} -> {to_size!r}")
        return dataclasses.replace(self, smooth_sigma=self.smooth_sigma * float(to_size) / float(from_size))

    def check(self, network: nn.Module) -> CAMRule:
        """Raise a ``ValueError`` naming the parameter when the method or layer does not exist in ``network``."""
        from medcnn.localisation.methods import CAM_METHODS, resolve_target_layer

        if self.method not in CAM_METHODS:
            raise ValueError(f"CAMRule: unknown CAM method {self.method!r}; choose one of {sorted(CAM_METHODS)}")
        try:
            resolve_target_layer(network, self.target_layer)
        except ValueError as e:
            raise ValueError(f"CAMRule target_layer: {e}") from None
        return self

    def present(self, probability: Any) -> bool:
        """Whether the classifier calls ``class_idx`` present: ``probability`` is a class-probability vector
        ``(num_classes,)`` or the probability of ``class_idx`` alone (``None``: present)."""
        return class_present(probability, self.class_idx, self.decision_threshold)


def class_present(probability: Any, class_idx: int = 1, decision_threshold: float | None = 0.5) -> bool:
    """The decision of :meth:`CAMRule.present` for a probability vector / scalar (``None`` means present)."""
    if probability is None:
        return True
    p = torch.as_tensor(np.asarray(probability) if not isinstance(probability, torch.Tensor) else probability)
    p = p.detach().float().reshape(-1)
    if p.numel() == 0 or bool(torch.isnan(p).any()):
        raise ValueError(f"class probability must be a finite scalar or vector, got {probability!r}")
    if p.numel() == 1:
        return float(p[0]) >= (0.5 if decision_threshold is None else float(decision_threshold))
    if class_idx >= p.numel():
        raise ValueError(f"class_idx {class_idx} is not a class of a {p.numel()}-class probability vector")
    if decision_threshold is None:
        return int(torch.argmax(p)) == int(class_idx)
    return float(p[class_idx]) >= float(decision_threshold)


class CAMToMask(Transform):
    """Heatmap ``(1, *S)`` (or a batch ``(B, 1, *S)``) + optional class probability -> uint8 mask of the same shape.

    Applies a :class:`CAMRule` (or its fields as keyword arguments): threshold (fraction of max / Otsu), optional
    largest connected component, and an empty mask when the classifier calls the class absent. The probability
    is one image's class-probability vector ``(num_classes,)`` or the probability of ``rule.class_idx``; for a
    batch, a sequence / ``(B, num_classes)`` / ``(B,)`` of them. A ``MetaTensor`` heatmap gives a ``MetaTensor``
    mask with the same metadata.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, rule: CAMRule | Mapping[str, Any] | None = None, **rule_fields: Any) -> None:
        self.rule = CAMRule.from_dict(rule, **rule_fields)

    def __call__(self, heatmap: torch.Tensor | np.ndarray, probability: Any = None) -> torch.Tensor | np.ndarray:
        """Mask of ``heatmap``; with ``probability`` the classifier's decision can empty it."""
        t = torch.as_tensor(heatmap.as_tensor() if isinstance(heatmap, MetaTensor) else heatmap)
        if bool(torch.isnan(t).any()):
            raise ValueError("CAMToMask: the heatmap contains NaN")
        mask = cam_to_mask(t, **self.rule.mask_kwargs())
        batched = not (t.ndim in (3, 4) and t.shape[0] == 1)  # the convention of cam_to_mask
        if probability is not None:
            if batched:
                probs = list(probability)
                if len(probs) != mask.shape[0]:
                    raise ValueError(f"CAMToMask: {len(probs)} probabilities for a batch of {mask.shape[0]} heatmaps")
                for i, p in enumerate(probs):
                    if not self.rule.present(p):
                        mask[i] = 0
            elif not self.rule.present(probability):
                mask = torch.zeros_like(mask)
        if isinstance(heatmap, MetaTensor):
            out = MetaTensor(mask, meta=dict(heatmap.meta), applied_operations=list(heatmap.applied_operations))
            return out
        if isinstance(heatmap, np.ndarray):
            return mask.cpu().numpy()
        return mask.to(t.device)


class CAMToMaskd(MapTransform):
    """Dictionary version of :class:`CAMToMask`: ``d[key]`` heatmap (+ ``d[prob_key]``) -> ``d[name]`` mask.

    Args:
        keys: heatmap keys.
        rule: a :class:`CAMRule` or a dict of its fields (further fields as keyword arguments).
        prob_key: key of the class probability (vector or scalar, e.g. the evaluator's ``"pred"`` after softmax),
            or ``None`` to threshold without the classifier's decision.
        names: output keys, one per key (default: overwrite the heatmap key).
        allow_missing_keys: skip missing keys.
    """

    backend = CAMToMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        rule: CAMRule | Mapping[str, Any] | None = None,
        prob_key: str | None = None,
        names: KeysCollection | None = None,
        allow_missing_keys: bool = False,
        **rule_fields: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = CAMToMask(rule, **rule_fields)
        self.prob_key = prob_key
        names = self.keys if names is None else ([names] if isinstance(names, str) else list(names))
        if len(names) != len(self.keys):
            raise ValueError(f"CAMToMaskd: {len(names)} names for {len(self.keys)} keys")
        self.names: Sequence[Hashable] = tuple(names)

    @property
    def rule(self) -> CAMRule:
        """The rule applied."""
        return self.converter.rule

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        prob = d.get(self.prob_key) if self.prob_key is not None else None
        for key, name in self.key_iterator(d, self.names):
            d[name] = self.converter(d[key], prob)
        return d
