"""medcnn.engines.run_trainer: MetaTensor tracking off for the run only, restored after a failed run too."""

from __future__ import annotations

import pytest
from monai.data import get_track_meta

import medcnn
from medcnn.engines import run_trainer


class _Trainer:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.seen = fail, None

    def run(self) -> None:
        self.seen = get_track_meta()
        if self.fail:
            raise RuntimeError("data error in case_7.nii.gz")


def test_tracking_is_off_during_the_run_and_restored_after_it():
    trainer = _Trainer()
    run_trainer(trainer, track_meta=False)
    assert trainer.seen is False and get_track_meta() is True


def test_a_failed_run_restores_tracking_and_keeps_its_error():
    trainer = _Trainer(fail=True)
    with pytest.raises(RuntimeError, match="case_7.nii.gz"):
        run_trainer(trainer, track_meta=False)
    assert trainer.seen is False and get_track_meta() is True


def test_bundle_configs_reach_it_through_import_medcnn():
    assert medcnn.engines.run_trainer is run_trainer
    with pytest.raises(AttributeError, match="no_such_part"):
        medcnn.no_such_part  # noqa: B018
