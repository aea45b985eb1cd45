"""medcnn's MONAI Label app: serves the medcnn bundles to 3D Slicer (optional extra ``medcnn[monailabel]``).

- :mod:`medcnn.monailabel.launcher`: pre-flight checks, assembles the app, starts ``monailabel start_server``
  (standard library only; ``scripts/monailabel_server.py`` calls it);
- :mod:`medcnn.monailabel.adapter`: what the app decides (served config, labels, CAM rule, upload checks, HTTP
  errors, result grid), without MONAI Label, so it is tested in the main environment;
- :mod:`medcnn.monailabel.infer` and :mod:`medcnn.monailabel.app`: the MONAI Label task classes and app (these two
  import MONAI Label);
- ``overrides/<bundle>.json``: how a bundle whose ``inference.json`` does not read one image file is served.

Importing this package does not import MONAI Label.
"""
