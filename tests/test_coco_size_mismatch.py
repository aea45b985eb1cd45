"""COCO: an image file whose size differs from the JSON's height / width is refused by name (real Roboflow export)."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from medcnn.data.coco import CocoFormatError, load_coco_datalist


@pytest.fixture
def small_export(data_dir, tmp_path):
    """The first 3 images of the real validation export with their annotations, copied beside a trimmed JSON."""
    src = data_dir("coco_brain_tumour") / "valid"
    content = json.loads((src / "_annotations.coco.json").read_text())
    images = content["images"][:3]
    ids = {im["id"] for im in images}
    for im in images:
        shutil.copy(src / im["file_name"], tmp_path / im["file_name"])
    trimmed = {**content, "images": images, "annotations": [a for a in content["annotations"] if a["image_id"] in ids]}
    path = tmp_path / "_annotations.coco.json"
    path.write_text(json.dumps(trimmed))
    return path, images


def test_real_export_loads(small_export):
    path, images = small_export
    items = load_coco_datalist(path)
    assert len(items) == 3 and all((it["height"], it["width"]) == (640, 640) for it in items)


def test_resized_image_file_is_refused_by_name(small_export):
    path, images = small_export
    victim = path.parent / images[1]["file_name"]
    with Image.open(victim) as im:
        im.resize((320, 320)).save(victim)  # e.g. a downsampled copy next to the original JSON
    with pytest.raises(CocoFormatError) as info:
        load_coco_datalist(path)
    msg = str(info.value)
    assert msg.startswith(str(victim)) and "320 x 320" in msg and "640 x 640" in msg
