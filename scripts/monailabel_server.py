#!/usr/bin/env python3
"""Serve the medcnn bundles to 3D Slicer through MONAI Label 0.8.5, offline: ``medcnn.monailabel.launcher``.

Usage (from the repository root)::

    scripts/monailabel_env.sh                                   # once: builds .venv-monailabel (pinned)
    python scripts/monailabel_server.py --studies /path/to/images [--port 8000] [--bundles a,b] [--device cpu]

Runs in any Python 3.10+ (the launcher's checks use the standard library only); the server itself runs in the
MONAI Label environment with this checkout's medcnn.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's medcnn, even when not installed

from medcnn.monailabel.launcher import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
