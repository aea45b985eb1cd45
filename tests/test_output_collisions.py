"""Outputs never collide with each other or with the inputs (real MSD hippocampus cases, real EM slices)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from medcnn.data import common_parent
from medcnn.data.tiff import read_stack, write_png_folder
from medcnn.errors import OutputCollisionError
from medcnn.handlers.segmentation import StackPredictionWriter
from tests.bundle_helpers import BUNDLES, run_workflow


def test_two_inputs_with_one_name_get_two_predictions(tmp_path, data_dir):
    ds = data_dir("msd_hippocampus")
    cases = json.loads((BUNDLES / "hippocampus_segmentation" / "configs" / "split.json").read_text())["test"][:2]
    inputs = []
    for folder, case in zip(("site_a", "site_b"), cases, strict=True):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / "case.nii.gz")
        shutil.copy(ds / case["image"], inputs[-1])
    assert nib.load(inputs[0]).shape != nib.load(inputs[1]).shape  # two different real volumes
    out = tmp_path / "out"
    run_workflow("hippocampus_segmentation", ["inference.json"], "infer", input_files=[str(p) for p in inputs],
                 output_dir=str(out))
    preds = sorted((out / "predictions").rglob("*_seg.nii.gz"))
    assert [p.relative_to(out / "predictions").as_posix() for p in preds] == [
        "site_a/case_seg.nii.gz", "site_b/case_seg.nii.gz"]
    for src, pred in zip(inputs, preds, strict=True):
        assert nib.load(pred).shape == nib.load(src).shape
        np.testing.assert_allclose(nib.load(pred).affine, nib.load(src).affine)


def test_common_parent_keeps_single_folder_layout(tmp_path):
    files = [str(tmp_path / "imagesTs" / f"c{i}.nii.gz") for i in range(3)]
    assert common_parent(files) == str(tmp_path / "imagesTs")
    assert common_parent([{"image": f} for f in files]) == str(tmp_path / "imagesTs")
    assert common_parent([]) == ""


def _run_writer(writer: StackPredictionWriter, sources: list[str], shape=(16, 16)) -> None:
    items = [{"pred": MetaTensor(torch.zeros(1, *shape), meta={"filename_or_obj": s, "slice_index": 0})}
             for s in sources]
    engine = Engine(lambda e, batch: [batch])
    writer.attach(engine)
    engine.run(items, max_epochs=1)


@pytest.fixture
def em_slices(tmp_path, data_dir):
    """Three real EM slices as a PNG folder: the input of an EM inference run."""
    stack = read_stack(data_dir("isbi2012_em_membranes") / "train" / "images")[:3]
    folder = tmp_path / "my_slices"
    write_png_folder(stack, folder)
    return folder


def test_prediction_inside_the_input_folder_is_refused(em_slices):
    before = sorted(p.name for p in em_slices.iterdir())
    writer = StackPredictionWriter(output_dir=em_slices, suffix="_membranes.tif")
    with pytest.raises(OutputCollisionError) as info:
        _run_writer(writer, [str(em_slices)])
    assert str(info.value).startswith(str(em_slices)) and "next run" in str(info.value)
    assert sorted(p.name for p in em_slices.iterdir()) == before  # nothing written into the input


def test_two_stacks_with_one_name_are_refused(tmp_path):
    writer = StackPredictionWriter(output_dir=tmp_path / "out", suffix="_membranes.tif")
    a, b = tmp_path / "a" / "volume.tif", tmp_path / "b" / "volume.tif"
    with pytest.raises(OutputCollisionError) as info:
        _run_writer(writer, [str(a), str(b)])
    assert str(info.value).startswith(str(b)) and str(a) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_distinct_stacks_are_written(tmp_path):
    writer = StackPredictionWriter(output_dir=tmp_path / "out", suffix="_membranes.tif")
    _run_writer(writer, [str(tmp_path / "a" / "left.tif"), str(tmp_path / "a" / "right.tif")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["left_membranes.tif", "right_membranes.tif"]
