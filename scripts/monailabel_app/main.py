"""MONAI Label app that serves the medcnn bundles (assembled and started by scripts/monailabel_server.py).

The bundles are local models under ``<app>/model/<name>`` (the ``monaibundle`` sample-app layout); the
``models`` conf value lists them. Unlike the sample app, nothing is ever fetched from a model zoo: a name that
is not a local bundle folder is an error. Segmentation bundles are served with their label names and
dimension; classification bundles (their output is class probabilities) are served as a segmentation of the
thresholded Grad-CAM region of the positive class, with the class probabilities in the result JSON.
Training, active-learning scoring and SAM2 are off: this app only runs the committed bundle weights.
"""

from __future__ import annotations

import logging
import os
import sys

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from medcnn_infer import make_infer_task  # noqa: E402

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
