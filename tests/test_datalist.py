import json

import pytest

from medcnn.data.datalist import DatalistError, load_datalist


def test_msd_and_plain_lists_resolve_relative_paths(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "img" / "b.nii.gz").write_bytes(b"x")
    msd = tmp_path / "dataset.json"
    msd.write_text(json.dumps({"training": [{"image": "img/a.nii.gz", "label": "img/b.nii.gz"}]}))
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps([{"image": "img/a.nii.gz", "label": "img/b.nii.gz"}]))
    for f in (msd, plain):
        (entry,) = load_datalist(f)
        assert entry["image"] == str(tmp_path / "img" / "a.nii.gz")


def test_bad_datalists_name_the_file_and_entry(tmp_path):
    with pytest.raises(DatalistError, match="file not found"):
        load_datalist(tmp_path / "nope.json")
    f = tmp_path / "d.json"
    f.write_text("{not json")
    with pytest.raises(DatalistError, match="not readable as JSON"):
        load_datalist(f)
    f.write_text(json.dumps([{"image": "a.nii.gz"}]))
    with pytest.raises(DatalistError, match=r"entry 0 lacks key\(s\) \['label'\]"):
        load_datalist(f)
    f.write_text(json.dumps([{"image": "a.nii.gz", "label": "b.nii.gz"}]))
    with pytest.raises(DatalistError, match="a.nii.gz does not exist"):
        load_datalist(f)


def test_optional_brats_brainmask_resolves_against_the_json_file(tmp_path):
    """An --eval_datalist with a relative brainmask path (it used to stay relative: "missing brainmask file")."""
    from medcnn.data.brats import BRATS_KEYS, BRATS_OPTIONAL_KEYS

    case = tmp_path / "cases" / "c1"
    case.mkdir(parents=True)
    for name in ("flair.nii.gz", "t1c.nii.gz", "seg.nii.gz", "brain.nii.gz"):
        (case / name).write_bytes(b"x")
    entry = {"flair": "cases/c1/flair.nii.gz", "t1c": "cases/c1/t1c.nii.gz", "label": "cases/c1/seg.nii.gz"}
    f = tmp_path / "list.json"
    f.write_text(json.dumps([{**entry, "brainmask": "cases/c1/brain.nii.gz"}, entry]))
    with_mask, without = load_datalist(f, keys=BRATS_KEYS, optional_keys=BRATS_OPTIONAL_KEYS)
    assert with_mask["brainmask"] == str(case / "brain.nii.gz") and "brainmask" not in without
    f.write_text(json.dumps([{**entry, "brainmask": "cases/c1/nope.nii.gz"}]))
    with pytest.raises(DatalistError, match=r"key 'brainmask': file .*nope.nii.gz does not exist"):
        load_datalist(f, keys=BRATS_KEYS, optional_keys=BRATS_OPTIONAL_KEYS)
