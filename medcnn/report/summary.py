"""Plain-language case summary for the PDF report, filled from a ``string.Template`` (no external service).

:func:`case_facts` measures a predicted mask (and optionally the reference mask and the CAM heatmap) and returns
the template fields; :func:`render_summary` fills a template. Users can pass their own template text using the
same ``$fields`` (see :data:`SUMMARY_FIELDS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from string import Template
from typing import Any

import numpy as np

__all__ = ["SUMMARY_TEMPLATE", "SUMMARY_FIELDS", "case_facts", "render_summary", "DISCLAIMER"]

DISCLAIMER = (
    "This summary was generated automatically by a research model and is not a diagnosis; "
    "a qualified reader must review the images."
)

SUMMARY_TEMPLATE = Template(
    "${classifier_sentence}"
    "The model found $finding_phrase. "
    "$extent_sentence$reference_sentence$cam_sentence$evaluation_sentence$disclaimer"
)

SUMMARY_FIELDS = (
    "case_id", "finding_name", "finding_phrase", "n_positive", "n_slices", "slice_word", "slice_range", "largest_slice",
    "largest_area", "volume", "extent_sentence", "dice", "reference_sentence", "cam_sentence",
    "evaluation_sentence", "disclaimer", "probability", "classifier_sentence",
)

# metrics.json keys worth a sentence, in order, with plain names
_EVAL_NAMES = {
    "auc": "AUC", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity",
    "dice": "Dice", "mean_dice": "mean Dice", "cam_dice": "Grad-CAM Dice", "pixel_accuracy": "pixel accuracy",
}


def _fmt(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _as_volume(a, name: str) -> np.ndarray:
    """(H, W) -> (H, W, 1); (1, X, Y[, Z]) channel -> squeezed; slices along the last axis."""
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
    if a.ndim in (3, 4) and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected a 2D or 3D array (optionally with one channel), got shape {a.shape}")
    return a


def case_facts(
    mask,
    spacing: Sequence[float] | None = None,
    label=None,
    cam=None,
    metrics: Mapping[str, Any] | None = None,
    case_id: str = "case",
    finding_name: str = "tumour-like region",
    probability: float | None = None,
) -> dict[str, Any]:
    """Template fields for one case. ``mask``/``label``/``cam``: ``(X, Y[, Z])`` arrays, slices on the last axis.

    ``spacing`` (mm per voxel) turns areas and volumes into cm² and mL; without it they are in pixels/voxels.
    ``probability``: a classifier's probability that the finding is present (weakly supervised path).
    """
    m = _as_volume(mask, "mask") > 0
    n_slices = m.shape[-1]
    areas = m.reshape(-1, n_slices).sum(0)
    positive = np.flatnonzero(areas)
    facts: dict[str, Any] = {
        "case_id": case_id, "finding_name": finding_name, "n_positive": int(positive.size), "n_slices": n_slices,
        "slice_word": "slice" if n_slices == 1 else "slices", "disclaimer": DISCLAIMER,
    }
    if n_slices == 1:  # a 2D image: "found ... in 1 of 1 slice" reads oddly, say "image"
        facts["slice_word"] = "image"
    facts["probability"] = _fmt(probability) if probability is not None else "n/a"
    facts["classifier_sentence"] = (
        f"The classifier gives a probability of {facts['probability']} that this "
        f"{'image' if n_slices == 1 else 'volume'} shows a {finding_name}. " if probability is not None else ""
    )
    sp = [float(s) for s in spacing] if spacing is not None else None
    if positive.size:
        k = int(np.argmax(areas))
        first, last = positive[0] + 1, positive[-1] + 1
        rng = f" (slice {first})" if first == last else f" (slices {first} to {last})"
        facts["slice_range"] = rng if n_slices > 1 else ""
        facts["largest_slice"] = k + 1
        if sp is not None and len(sp) >= 2:
            area = areas[k] * sp[0] * sp[1] / 100.0
            facts["largest_area"] = f"{area:.1f} cm²"
            if len(sp) >= 3 and n_slices > 1:
                facts["volume"] = f"{m.sum() * sp[0] * sp[1] * sp[2] / 1000.0:.1f} mL"
            elif n_slices > 1:  # in-plane spacing only (slices without their distance): no volume in mL
                facts["volume"] = f"{int(m.sum())} voxels"
            else:
                facts["volume"] = f"{area:.1f} cm²"
        else:
            facts["largest_area"] = f"{int(areas[k])} pixels"
            facts["volume"] = f"{int(m.sum())} {'pixels' if n_slices == 1 else 'voxels'}"
        where = f" on slice {k + 1}" if n_slices > 1 else ""
        facts["extent_sentence"] = (
            f"The largest cross-section is {facts['largest_area']}{where}; the whole region measures "
            f"{facts['volume']}. "
        )
    else:
        facts.update(slice_range="", largest_slice="n/a", largest_area="0", volume="0", extent_sentence="")
    if n_slices == 1:
        facts["finding_phrase"] = f"{'a' if positive.size else 'no'} {finding_name} in this image"
    elif positive.size:
        facts["finding_phrase"] = f"a {finding_name} in {positive.size} of {n_slices} slices{facts['slice_range']}"
    else:
        facts["finding_phrase"] = f"no {finding_name} in any of the {n_slices} slices"
    facts["dice"] = "n/a"
    facts["reference_sentence"] = ""
    if label is not None:
        ref = _as_volume(label, "label") > 0
        if ref.shape != m.shape:
            raise ValueError(f"label shape {ref.shape} does not match the mask {m.shape}")
        inter, total = float((ref & m).sum()), float(ref.sum() + m.sum())
        dice = 1.0 if total == 0 else 2 * inter / total
        facts["dice"] = _fmt(dice)
        ref_slices = int((ref.reshape(-1, n_slices).sum(0) > 0).sum())
        extra = f"; the reference marks {ref_slices} of {n_slices} slices" if n_slices > 1 else ""
        facts["reference_sentence"] = (
            f"Compared with the reference outline, the overlap (Dice score, where 1 is perfect agreement) is "
            f"{facts['dice']}{extra}. "
        )
    facts["cam_sentence"] = ""
    if cam is not None:
        heat = _as_volume(cam, "cam").astype(float)
        if heat.shape != m.shape:
            raise ValueError(f"CAM shape {heat.shape} does not match the mask {m.shape}")
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        top = heat >= np.quantile(heat, 0.95) if heat.max() > heat.min() else np.zeros_like(m)
        inside = float((top & m).sum() / max(top.sum(), 1))
        where = f"on slice {peak[-1] + 1}" if n_slices > 1 else "in this image"
        facts["cam_sentence"] = (
            f"The attention map (Grad-CAM: where the classifier looked) is strongest {where}; "
            f"{100 * inside:.0f}% of its top 5% lies inside the predicted region. "
        )
    facts["evaluation_sentence"] = ""
    if metrics:
        parts = [f"{name} {_fmt(float(metrics[key]))}" for key, name in _EVAL_NAMES.items()
                 if isinstance(metrics.get(key), (int, float)) and not isinstance(metrics.get(key), bool)]
        if parts:
            facts["evaluation_sentence"] = (
                "On its held-out evaluation data the model reached " + ", ".join(parts) + ". "
            )
    return facts


def render_summary(facts: Mapping[str, Any], template: Template | str | None = None) -> str:
    """Fill ``template`` (default :data:`SUMMARY_TEMPLATE`) with ``facts``; unknown ``$fields`` raise ValueError."""
    tpl = template if isinstance(template, Template) else Template(template) if template else SUMMARY_TEMPLATE
    try:
        text = tpl.substitute(facts)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"summary template: unknown or malformed field {exc}; available: {SUMMARY_FIELDS}") from exc
    return " ".join(text.split())
