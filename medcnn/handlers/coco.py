"""Write segmentation predictions as PNG masks and as one COCO JSON (polygons / RLE) that reads back exactly."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from PIL import Image

from medcnn.data.coco import masks_to_coco
from medcnn.handlers.segmentation import as_class_map

__all__ = ["CocoPredictionWriter"]

logger = logging.getLogger(__name__)


class CocoPredictionWriter:
    """Collect predicted masks of an evaluator run; write ``<stem><suffix>`` PNGs and ``<json_name>`` (COCO).

    Attach to an evaluator whose decollated output items hold ``pred_key``: a class-index map ``(1, *S)`` or
    one-hot / probabilities ``(C, *S)`` on the input image's own grid (e.g. after ``Invertd``), as a MetaTensor
    whose ``filename_or_obj`` names the source image. ``layout="WH"`` means the array is ``(W, H)`` as MONAI's
    PIL reader loads PNG/JPEG; masks are transposed back to ``(H, W)`` before writing.

    Each PNG holds ``png_value`` where class ``category_value`` is predicted, 0 elsewhere. The COCO file lists
    every image by its source file name (so it pairs with the input folder, e.g. for
    :func:`medcnn.data.coco.load_coco_datalist` with ``image_dir``) and one annotation per non-empty mask, encoded
    with ``mode``: ``"auto"`` (polygons where they reproduce the mask exactly, else RLE: lossless), ``"polygon"``
    or ``"rle"``. A source image is never overwritten: a PNG whose path equals its source raises ``ValueError``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        pred_key: str = "pred",
        layout: str = "WH",
        category_value: int = 1,
        category_name: str = "tumour",
        mode: str = "auto",
        png_value: int = 255,
        suffix: str = "_tumour.png",
        json_name: str = "predictions.coco.json",
    ) -> None:
        if layout not in ("HW", "WH"):
            raise ValueError(f"CocoPredictionWriter: layout must be 'HW' or 'WH', got {layout!r}")
        if not 0 < int(png_value) < 256:
            raise ValueError(f"CocoPredictionWriter: png_value must be in 1..255, got {png_value}")
        self.output_dir = Path(output_dir)
        self.pred_key, self.layout = pred_key, layout
        self.category_value, self.category_name = int(category_value), str(category_name)
        self.mode, self.png_value, self.suffix, self.json_name = mode, int(png_value), suffix, json_name
        self.masks: list[tuple[str, np.ndarray]] = []
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_json)

    def _reset(self, engine: Engine) -> None:
        self.masks, self.written = [], []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            pred = item[self.pred_key]
            meta = pred.meta if isinstance(pred, MetaTensor) else {}
            source = str(meta.get("filename_or_obj", f"image_{len(self.masks):04d}.png"))
            mask = as_class_map(pred) == self.category_value
            if mask.ndim != 2:
                raise ValueError(f"{source}: CocoPredictionWriter expects 2D masks, got shape {mask.shape}")
            if self.layout == "WH":
                mask = mask.T
            mask = np.ascontiguousarray(mask)
            stem = Path(source).name
            stem = stem[: stem.rfind(".")] if "." in stem else stem
            path = self.output_dir / f"{stem}{self.suffix}"
            if path.resolve() == Path(source).resolve():
                raise ValueError(f"{source}: the predicted mask would overwrite the input image; choose another "
                                 f"output_dir or suffix")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * self.png_value).save(path)
            self.written.append(path)
            self.masks.append((Path(source).name, mask.astype(np.uint8)))

    def _write_json(self, engine: Engine) -> None:
        if not self.masks:
            return
        coco = masks_to_coco(self.masks, {1: self.category_name}, mode=self.mode)
        path = self.output_dir / self.json_name
        path.write_text(json.dumps(coco))
        self.written.append(path)
        logger.info("%d predicted masks written to %s (PNG) and %s (COCO, %s)", len(self.masks), self.output_dir,
                    path.name, self.mode)
