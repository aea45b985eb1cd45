"""MONAI Label app entry point, copied into the assembled app folder by medcnn.monailabel.launcher.

MONAI Label loads ``<app>/main.py`` and serves the first ``MONAILabelApp`` subclass it finds; the app itself is
:class:`medcnn.monailabel.app.MedcnnApp`, in the installed medcnn package.
"""

from medcnn.monailabel.app import MedcnnApp

__all__ = ["MedcnnApp"]
