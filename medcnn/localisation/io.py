"""Write localisation results: PNG overlays for 2D images, NIfTI heatmaps and masks for 3D volumes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["save_localisation"]

logger = logging.getLogger(__name__)


def _np(x: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def save_localisation(
    output_dir: str | os.PathLike,
    name: str,
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    true_mask: torch.Tensor | np.ndarray | None = None,
    title: str = "",
    affine: np.ndarray | None = None,
) -> list[Path]:
    """Save one image's localisation; returns the written paths.

    ``image`` ``(C, *S)``, ``heatmap`` / ``mask`` / ``true_mask`` ``(1, *S)``. 2D: ``<name>.png`` (image in grey,
    heatmap in colour, predicted mask outline in red, true mask outline in green). 3D:
    ``<name>_heatmap.nii.gz`` (float32 in [0, 1]) and ``<name>_mask.nii.gz`` (uint8), with ``affine``
    (identity by default).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    img, hm, m, tm = _np(image), _np(heatmap), _np(mask), _np(true_mask)
    spatial = hm.shape[1:]
    if len(spatial) == 2:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3, 3), dpi=100)
        ax.imshow(img[0], cmap="gray")
        ax.imshow(hm[0], cmap="jet", alpha=0.35, vmin=0, vmax=1)
        if m.any():
            ax.contour(m[0] > 0, levels=[0.5], colors="red", linewidths=1)
        if tm is not None and tm.any():
            ax.contour(tm[0] > 0, levels=[0.5], colors="lime", linewidths=1)
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=8)
        path = out / f"{name}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return [path]
    import nibabel as nib

    aff = np.eye(4) if affine is None else np.asarray(affine)
    paths = [out / f"{name}_heatmap.nii.gz", out / f"{name}_mask.nii.gz"]
    nib.save(nib.Nifti1Image(hm[0].astype(np.float32), aff), paths[0])
    nib.save(nib.Nifti1Image(m[0].astype(np.uint8), aff), paths[1])
    return paths
