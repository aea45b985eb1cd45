"""Refinement steps of CAM pseudo-masks behind one interface.

A step is a :class:`PseudoMaskRefiner`: ``step(image, heatmap, mask, weight) -> (mask, weight)`` on one image,
``image`` ``(C, *S)`` float, ``heatmap`` ``(1, *S)`` in [0, 1], ``mask`` ``(1, *S)`` uint8, ``weight`` ``(1, *S)``
float32 (0 = the pixel is not used as a label). Steps are chained (:func:`refine`); each describes itself for the
provenance file (:meth:`PseudoMaskRefiner.describe`). 2D and 3D.

- :class:`DenseCRF`: fully connected CRF (Kraehenbuehl & Koltun 2011) on the image, unary from the mask; the mean
  field inference of the ``pydensecrf`` package (N-dimensional). MONAI's ``monai.networks.blocks.CRF`` computes the
  same model but needs MONAI's compiled extension (``monai._C``), which the pip wheel of MONAI does not ship.
- :class:`IgnoreBand`: the pixels whose label is uncertain (a band around the mask's boundary, and / or heatmap
  values between two levels) get weight 0, so a loss such as :class:`medcnn.losses.PixelWeightedDiceCELoss`
  ignores them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PseudoMaskRefiner", "DenseCRF", "IgnoreBand", "refine", "build_refiners", "REFINERS"]

logger = logging.getLogger(__name__)


class PseudoMaskRefiner:
    """Base class of a refinement step: ``(image, heatmap, mask, weight) -> (mask, weight)`` for one image."""

    name = "refiner"

    def __call__(
        self, image: torch.Tensor, heatmap: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The step's parameters (JSON-serialisable)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., **params}`` for the provenance file."""
        return {"name": self.name, **self.params()}


def _check(image: torch.Tensor, heatmap: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, who: str) -> None:
    spatial = tuple(image.shape[1:])
    for name, x in (("heatmap", heatmap), ("mask", mask), ("weight", weight)):
        if tuple(x.shape) != (1, *spatial):
            raise ValueError(f"{who}: {name} must be (1, *S) = {(1, *spatial)} for image {tuple(image.shape)}, "
                             f"got {tuple(x.shape)}")


class DenseCRF(PseudoMaskRefiner):
    """Dense CRF on the image: the mask (trusted with probability ``confidence``) is the unary term.

    The pairwise terms are an appearance kernel (pixels close in space, ``spatial_sigma`` pixels, and in
    intensity, ``intensity_sigma`` in units of the image's standard deviation, prefer the same label) and a
    smoothness kernel (``smooth_sigma`` pixels). Weight maps pass through unchanged.

    Args:
        iterations: mean field iterations.
        confidence: probability of the mask's label at each pixel in the unary term, in (0.5, 1).
        spatial_sigma, intensity_sigma, appearance_weight: the appearance (bilateral) kernel.
        smooth_sigma, smooth_weight: the smoothness (Gaussian) kernel; ``smooth_weight`` 0 disables it.
        image_sigma: Gaussian smoothing (pixels) of the image before its intensities enter the appearance kernel;
            on noisy images the per-pixel intensity says little, a local mean shows the object's edge.
    """

    name = "dense_crf"

    def __init__(
        self,
        iterations: int = 5,
        confidence: float = 0.7,
        spatial_sigma: float = 5.0,
        intensity_sigma: float = 0.5,
        appearance_weight: float = 3.0,
        smooth_sigma: float = 1.0,
        smooth_weight: float = 1.0,
        image_sigma: float = 0.0,
    ) -> None:
        if not 0.5 < float(confidence) < 1.0:
            raise ValueError(f"DenseCRF: confidence must be in (0.5, 1), got {confidence!r}")
        if int(iterations) < 1 or float(spatial_sigma) <= 0 or float(intensity_sigma) <= 0:
            raise ValueError("DenseCRF: iterations, spatial_sigma and intensity_sigma must be positive, got "
                             f"{iterations!r}, {spatial_sigma!r}, {intensity_sigma!r}")
        self.iterations, self.confidence = int(iterations), float(confidence)
        self.spatial_sigma, self.intensity_sigma = float(spatial_sigma), float(intensity_sigma)
        self.appearance_weight = float(appearance_weight)
        self.smooth_sigma, self.smooth_weight = float(smooth_sigma), float(smooth_weight)
        self.image_sigma = float(image_sigma)

    def params(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "confidence": self.confidence, "spatial_sigma": self.spatial_sigma,
                "intensity_sigma": self.intensity_sigma, "appearance_weight": self.appearance_weight,
                "smooth_sigma": self.smooth_sigma, "smooth_weight": self.smooth_weight, "image_sigma": self.image_sigma}

    def __call__(self, image, heatmap, mask, weight):
        _check(image, heatmap, mask, weight, "DenseCRF")
        try:
            import pydensecrf.densecrf as dcrf
            from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("DenseCRF needs the pydensecrf package: pip install 'medcnn[weak]' "
                              "(pydensecrf2)") from e
        m = (mask[0] > 0).cpu().numpy()
        if not m.any():
            return mask, weight
        spatial = m.shape
        img = image.detach().cpu().float().numpy()
        if self.image_sigma > 0:
            from scipy.ndimage import gaussian_filter

            img = np.stack([gaussian_filter(c, self.image_sigma) for c in img])
        std = img.reshape(img.shape[0], -1).std(axis=1).reshape(-1, *([1] * len(spatial)))
        img = (img - img.reshape(img.shape[0], -1).mean(axis=1).reshape(std.shape)) / np.where(std > 0, std, 1)
        n = int(np.prod(spatial))
        p_fg = np.where(m, self.confidence, 1.0 - self.confidence).reshape(-1)
        unary = -np.log(np.stack([1.0 - p_fg, p_fg]).astype(np.float32))
        crf = dcrf.DenseCRF(n, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(unary))
        nd = len(spatial)
        feats = create_pairwise_bilateral(sdims=(self.spatial_sigma,) * nd,
                                          schan=(self.intensity_sigma,) * img.shape[0],
                                          img=np.ascontiguousarray(img.astype(np.float32)), chdim=0)
        crf.addPairwiseEnergy(feats, compat=self.appearance_weight)
        if self.smooth_weight > 0:
            crf.addPairwiseEnergy(create_pairwise_gaussian(sdims=(self.smooth_sigma,) * nd, shape=spatial),
                                  compat=self.smooth_weight)
        q = np.asarray(crf.inference(self.iterations)).reshape(2, *spatial)
        out = torch.from_numpy((q[1] > q[0])[None].astype(np.uint8)).to(mask.device)
        return out, weight


def _dilate(x: torch.Tensor, width: int) -> torch.Tensor:
    """Binary dilation of ``(1, *S)`` by a (2 * width + 1) cube (max pooling)."""
    pool = F.max_pool2d if x.ndim == 3 else F.max_pool3d
    return pool(x[None].float(), 2 * width + 1, stride=1, padding=width)[0] > 0


class IgnoreBand(PseudoMaskRefiner):
    """Weight 0 where the pseudo-label is uncertain: within ``width`` pixels of the mask's boundary (on either
    side), and where ``heatmap_low <= heatmap < heatmap_high`` when both are given. The mask is unchanged.

    Args:
        width: half-width of the boundary band in pixels (0: no boundary band).
        heatmap_low, heatmap_high: heatmap levels of the uncertain range (``None``: no heatmap band).
    """

    name = "ignore_band"

    def __init__(self, width: int = 2, heatmap_low: float | None = None, heatmap_high: float | None = None) -> None:
        if int(width) < 0:
            raise ValueError(f"IgnoreBand: width must be >= 0 pixels, got {width!r}")
        if (heatmap_low is None) != (heatmap_high is None):
            raise ValueError("IgnoreBand: give both heatmap_low and heatmap_high, or neither")
        if heatmap_low is not None and not 0.0 <= float(heatmap_low) < float(heatmap_high) <= 1.0:
            raise ValueError(f"IgnoreBand: need 0 <= heatmap_low < heatmap_high <= 1, got {heatmap_low!r}, "
                             f"{heatmap_high!r}")
        self.width = int(width)
        self.heatmap_low = None if heatmap_low is None else float(heatmap_low)
        self.heatmap_high = None if heatmap_high is None else float(heatmap_high)

    def params(self) -> dict[str, Any]:
        return {"width": self.width, "heatmap_low": self.heatmap_low, "heatmap_high": self.heatmap_high}

    def __call__(self, image, heatmap, mask, weight):
        _check(image, heatmap, mask, weight, "IgnoreBand")
        uncertain = torch.zeros_like(mask, dtype=torch.bool)
        m = mask > 0
        if self.width > 0 and bool(m.any()):
            uncertain |= _dilate(m, self.width) & _dilate(~m, self.width)
        if self.heatmap_low is not None:
            uncertain |= (heatmap >= self.heatmap_low) & (heatmap < self.heatmap_high)
        return mask, torch.where(uncertain, torch.zeros_like(weight), weight)


#: name -> refiner class, for configs (``{"name": "dense_crf", "iterations": 5}``)
REFINERS: dict[str, type[PseudoMaskRefiner]] = {"dense_crf": DenseCRF, "ignore_band": IgnoreBand}


def build_refiners(spec: Sequence[PseudoMaskRefiner | Mapping[str, Any]] | None) -> list[PseudoMaskRefiner]:
    """Refiners from instances or ``{"name": <REFINERS key>, **params}`` dicts (as written in provenance files)."""
    out = []
    for i, s in enumerate(spec or []):
        if isinstance(s, PseudoMaskRefiner):
            out.append(s)
            continue
        s = dict(s)
        name = s.pop("name", None)
        if name not in REFINERS:
            raise ValueError(f"refinement step {i}: unknown name {name!r}; choose one of {sorted(REFINERS)}")
        out.append(REFINERS[name](**s))
    return out


def refine(
    steps: Sequence[PseudoMaskRefiner], image: torch.Tensor, heatmap: torch.Tensor, mask: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``steps`` in order to one image's ``mask`` ``(1, *S)``; ``weight`` defaults to ones."""
    w = torch.ones_like(mask, dtype=torch.float32) if weight is None else weight
    for step in steps:
        mask, w = step(image, heatmap, mask, w)
    return mask, w
