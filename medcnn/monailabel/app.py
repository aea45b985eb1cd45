"""The MONAI Label app that serves the medcnn bundles (assembled and started by :mod:`medcnn.monailabel.launcher`).

The bundles are local models under ``<app>/model/<name>`` (the ``monaibundle`` sample-app layout); the ``models``
conf value lists them. Unlike the sample app, nothing is ever fetched from a model zoo: a name that is not a local
bundle folder is an error. Segmentation bundles are served with their label names and dimension; classification
bundles (their output is class probabilities) are served as a segmentation of the thresholded CAM region of the
positive class, with the class probabilities in the result JSON. Training, active-learning scoring and SAM2 are
off: this app only runs the committed bundle weights.

What the app adds to MONAI Label's defaults, for the people who call it:

- a bad request answers 4xx with the reason (the medcnn message naming the file) instead of "500 Internal Server
  Error" with the reason only in the server log (:func:`medcnn.monailabel.adapter.http_error`);
- an upload that is not a readable, finite NIfTI image is refused before anything is stored in the studies folder
  (:func:`medcnn.monailabel.adapter.check_upload`);
- the studies folder lists NIfTI images only (:data:`~medcnn.monailabel.adapter.STUDY_EXTENSIONS`): MONAI Label
  would hand a PNG to 3D Slicer on a grid perpendicular to the image, so other files there are logged and not served.

Imports MONAI Label: runs inside its environment only (``pip install medcnn[monailabel]`` or
``scripts/monailabel_env.sh``).
"""

from __future__ import annotations

import logging
import os

import monailabel
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from medcnn.monailabel.adapter import STUDY_EXTENSIONS, check_upload, http_error
from medcnn.monailabel.infer import make_infer_task
from medcnn.transforms.validation import InvalidInputError

__all__ = ["MedcnnApp", "MedcnnDatastore", "local_bundles"]

logger = logging.getLogger(__name__)


def local_bundles(app_dir: str, conf: dict) -> dict[str, str]:
    """``{name: folder}`` of the bundles named in ``conf['models']``; each must be a local folder."""
    names = [m.strip() for m in (conf.get("models") or "").split(",") if m.strip()]
    if not names:
        raise ValueError("no bundle given: start the server with --conf models <name>[,<name>...]")
    out = {}
    for n in names:
        p = os.path.join(app_dir, "model", n)
        if not os.path.isdir(p):
            raise ValueError(f"bundle {n!r} is not a local folder ({p}); this app never downloads from a model zoo")
        out[n] = p
    return out


class MedcnnDatastore(LocalDatastore):
    """MONAI Label's local datastore that lists NIfTI images only and refuses an unreadable upload before storing it."""

    def __init__(self, studies: str, **kwargs) -> None:
        super().__init__(studies, extensions=STUDY_EXTENSIONS, **kwargs)
        skipped = sorted(f for f in os.listdir(studies) if os.path.isfile(os.path.join(studies, f))
                         and not f.startswith(".") and not f.lower().endswith((".nii", ".nii.gz", ".json")))
        if skipped:
            logger.warning("studies folder %s: not served (only NIfTI images are): %s", studies, skipped[:20])

    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        try:
            check_upload(image_filename, name=f"upload {image_id!r}" if image_id else None)
        except InvalidInputError as e:
            logger.warning("refused: %s", e)
            raise HTTPException(status_code=422, detail=str(e)) from None
        return super().add_image(image_id, image_filename, image_info)


class MedcnnApp(MONAILabelApp):
    """The medcnn bundles as MONAI Label infer tasks."""

    def __init__(self, app_dir, studies, conf):
        self.models = local_bundles(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"medcnn bundles (MONAI Label {monailabel.__version__})",
            description="medcnn MONAI bundles: segmentation, and Grad-CAM localisation of classifiers",
            version=monailabel.__version__,
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        from monailabel.config import settings

        return MedcnnDatastore(self.studies, auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                               read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            try:
                task = make_infer_task(path, self.conf)
            except Exception as e:
                raise ValueError(f"bundle {name!r} ({os.path.realpath(path)}): cannot build its MONAI Label task "
                                 f"from configs/inference.json: {type(e).__name__}: {e}") from e
            if not task.is_valid():
                raise ValueError(f"bundle {name!r} ({path}) could not be loaded as a MONAI Label model")
            logger.info("+++ medcnn model %s => %s (dimension %s, labels %s)", name, task.type, task.dimension,
                        task.labels)
            infers[name] = task
        return infers

    def init_trainers(self):
        return {}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request, datastore=None):
        """MONAI Label's inference, with a request error answered 4xx and its reason (see module docstring)."""
        image = request.get("image")
        store = datastore or self.datastore()
        if (isinstance(image, str) and image and not os.path.exists(image) and request.get("model") in self._infers
                and not store.get_image_uri(image)):
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the studies folder "
                                                        f"{self.studies}; upload it first (PUT /datastore/image)")
        try:
            if isinstance(image, str) and os.path.isfile(image):  # a file sent with the request (POST /infer with file)
                check_upload(image, name=f"uploaded file for {request.get('model')!r}")
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:
            answer = http_error(e)
            if answer is None:
                raise
            logger.warning("infer %s on %s: %d %s", request.get("model"), image, *answer)
            raise HTTPException(status_code=answer[0], detail=answer[1]) from None
