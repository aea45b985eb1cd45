"""medcnn.config.flag: the one reader of bool ids as a command line gives them, and the medcnn classes using it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medcnn.config import FlagError, flag


@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), ("true", True), ("false", False), (" FALSE ", False), ("True", True),
    ("yes", True), ("No", False), ("1", True), ("0", False), (1, True), (0, False), (np.bool_(True), True),
    (np.int64(0), False)])
def test_flag_reads_what_a_user_types(value, expected):
    assert flag(value, "amp") is expected


@pytest.mark.parametrize("value", ["flase", "", "on", 2, -1, 0.0, 1.0, None, [True], np.array([1])])
def test_flag_refuses_anything_else_naming_the_id_and_the_value(value):
    with pytest.raises(FlagError, match=rf"^dihedral_tta must be true or false .*, got {re.escape(repr(value))}$"):
        flag(value, "dihedral_tta")
    assert issubclass(FlagError, ValueError)


def test_medcnn_classes_read_their_bool_arguments_through_flag():
    """A Python or config user passing the string 'false' to a medcnn class gets False, not ``bool('false')``."""
    from medcnn.localisation.rule import CAMRule
    from medcnn.networks.slice_scoring import SliceScoreInferer
    from medcnn.transforms.coco import MaskToBoxes

    boxes = MaskToBoxes(largest_only="false", boxes="False", fill_holes="0")
    assert (boxes.largest_only, boxes.boxes, boxes.fill_holes) == (False, False, False)
    assert CAMRule(largest_component="false").largest_component is False
    assert SliceScoreInferer(flip="no").flip is False
    with pytest.raises(FlagError, match="MaskToBoxes: fill_holes must be true or false .*'flase'"):
        MaskToBoxes(fill_holes="flase")
    with pytest.raises(FlagError, match="CAMRule: largest_component .*'flase'"):
        CAMRule(largest_component="flase")
