"""Cell instances from a membrane probability map (medcnn.transforms.instances) and the Ignite V_rand / V_info metrics
of the EM bundle's evaluation (ThinnedRandInfoMetric, InstanceRandInfoMetric), plus the instance TIFF writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.networks.utils import one_hot

from medcnn.data.tiff import read_stack
from medcnn.handlers.segmentation import InstanceRandInfoMetric, StackPredictionWriter, ThinnedRandInfoMetric
from medcnn.metrics import foreground_restricted_scores
from medcnn.transforms import InvalidInputError, MembraneToInstances, MembraneToInstancesd, membrane_to_instances


def _three_cells() -> tuple[np.ndarray, np.ndarray]:
    """Membrane probability (32, 32) with a vertical and a half horizontal membrane (3 cells), and its reference."""
    membrane = np.zeros((32, 32), bool)
    membrane[:, 15] = True
    membrane[15, 16:] = True
    prob = np.where(membrane, 0.9, 0.05).astype(np.float32)
    return prob, membrane


def test_watershed_gives_one_label_per_cell_and_no_boundary():
    prob, membrane = _three_cells()
    prob[4, 4] = 0.3  # a faint speck inside the first cell: its minimum is shallower than the seed depth
    cells = membrane_to_instances(prob, sigma=1.0, seed_depth=0.1)
    assert cells.dtype == np.int32 and cells.min() >= 1 and len(np.unique(cells)) == 3
    assert len(np.unique(cells[:, :15])) == 1 and len(np.unique(cells[:15, 16:])) == 1
    truth = np.zeros((32, 32), int)
    truth[:, :15], truth[:15, 16:], truth[16:, 16:] = 1, 2, 3
    s = foreground_restricted_scores(truth, cells)
    assert s["v_rand"] == 1.0 and s["v_info"] == 1.0
    assert (membrane_to_instances(np.full((8, 8), 0.9), 1.0, 0.1) == 1).all()  # no minimum: one cell


def test_agglomeration_merges_regions_across_a_faint_boundary_only():
    prob, _ = _three_cells()
    prob[:, 7] = 0.3  # a faint false membrane cutting the left cell in two (the true one at column 15 is 0.9)
    split = membrane_to_instances(prob, sigma=0.0, seed_depth=0.02)
    assert len(np.unique(split[:, :15])) == 2 and len(np.unique(split)) == 4  # the watershed alone splits it
    # boundary means over the pixels on both sides: faint (0.3 + 0.05) / 2, true (0.9 + 0.05) / 2
    merged = membrane_to_instances(prob, sigma=0.0, seed_depth=0.02, merge_threshold=0.3)
    assert len(np.unique(merged[:, :15])) == 1 and len(np.unique(merged)) == 3  # 0.175 < 0.3 < 0.475
    assert set(np.unique(merged[:, :15])).isdisjoint(merged[:, 16:].ravel())


def test_transform_keeps_metadata_and_names_the_file_on_bad_input():
    prob, _ = _three_cells()
    probs = torch.from_numpy(np.stack([1 - prob, prob]))
    img = MetaTensor(probs, meta={"filename_or_obj": "/data/stack.tif", "slice_index": 7})
    out = MembraneToInstancesd(keys="instances", seed_depth=0.1)({"instances": img})["instances"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 32, 32) and out.meta["slice_index"] == 7
    assert out.dtype == torch.int32 and len(torch.unique(out)) == 3
    bad = MetaTensor(torch.full((2, 8, 8), float("nan")), meta={"filename_or_obj": "/data/stack.tif"})
    with pytest.raises(InvalidInputError, match=r"/data/stack\.tif: membrane probability has NaN"):
        MembraneToInstances()(bad)
    with pytest.raises(InvalidInputError, match=r"/data/stack\.tif: expected class probabilities"):
        MembraneToInstances()(MetaTensor(torch.rand(1, 8, 8), meta={"filename_or_obj": "/data/stack.tif"}))
    with pytest.raises(ValueError, match="seed_depth"):
        MembraneToInstances(seed_depth=0.0)


def _engine_items():
    """One slice: probabilities (2, H, W) [cell, membrane], one-hot reference, and instance labels that merge
    the two right-hand cells (the horizontal membrane is missed)."""
    prob, membrane = _three_cells()
    label = torch.from_numpy(membrane.astype(np.float32))[None]
    merged = np.broadcast_to(np.where(np.arange(32) < 15, 1, 2), (32, 32))
    return [
        {
            "prob": torch.from_numpy(np.stack([1 - prob, prob])),
            "label": one_hot(label[None], 2)[0],
            "instances": MetaTensor(
                torch.from_numpy(merged[None].astype(np.int32)),
                meta={"filename_or_obj": "/data/vol.tif", "slice_index": 2},
            ),
        }
    ]


def test_ignite_metrics_report_the_challenge_scores(tmp_path):
    engine = Engine(lambda e, batch: batch)
    ThinnedRandInfoMetric(scored_class=0).attach(engine, "rand")
    InstanceRandInfoMetric(cell_class=0).attach(engine, "instances")
    writer = StackPredictionWriter(tmp_path, pred_key="instances", suffix="_instances.tif", dtype="uint16")
    writer.attach(engine)
    m = engine.run([_engine_items()], max_epochs=1).metrics
    assert m["v_rand"] == 1.0 and m["v_info"] == 1.0  # the probability map separates all three cells
    assert 0.05 < m["v_rand_threshold"] < 0.9
    # instances: left cell 32 x 15 = 480 px, right cells 15 x 16 = 240 and 16 x 16 = 256 merged into one
    a2 = 480**2 + 240**2 + 256**2
    b2 = 480**2 + (240 + 256) ** 2
    assert m["instance_v_rand"] == pytest.approx(a2 / (0.5 * a2 + 0.5 * b2))
    assert m["instance_v_rand_split"] == pytest.approx(1.0) and m["instance_v_info_merge"] < 1.0
    stack = read_stack(tmp_path / "vol_instances.tif")
    assert stack.dtype == np.uint16 and stack.shape == (1, 32, 32) and set(np.unique(stack).tolist()) == {1, 2}


def test_writer_refuses_labels_that_do_not_fit_its_dtype(tmp_path):
    engine = Engine(lambda e, batch: batch)
    StackPredictionWriter(tmp_path, pred_key="instances").attach(engine)
    item = _engine_items()[0]
    item["instances"] = item["instances"] * 200  # labels 200 and 400 > uint8
    with pytest.raises(ValueError, match=r"/data/vol\.tif: label 400 does not fit"):
        engine.run([[item]], max_epochs=1)
