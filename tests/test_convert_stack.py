"""`medcnn convert`: TIFF stack <-> PNG folder, lossless (bit-exact round trip), never touching the input."""

import hashlib

import numpy as np
import pytest

from medcnn.cli import main
from medcnn.convert import build_stack, convert_stack
from medcnn.data.tiff import read_stack, write_tiff_stack


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_cli_round_trip_is_bit_exact(tmp_path, dtype, capsys):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, np.iinfo(dtype).max, (11, 17, 13), dtype=dtype, endpoint=True)
    src = write_tiff_stack(arr, tmp_path / "volume.tif")
    before = _digest(src)
    assert main(["convert", str(src), str(tmp_path / "png")]) == 0
    assert "11 slices, verified bit-exact" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:3] == ["0.png", "1.png", "10.png"]
    assert main(["convert", str(tmp_path / "png"), str(tmp_path / "back.tif")]) == 0
    back = read_stack(tmp_path / "back.tif")
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    assert _digest(src) == before  # input untouched


def test_cli_refuses_overwrite_and_unknown_direction(tmp_path, capsys):
    arr = np.zeros((2, 4, 4), np.uint8)
    src = write_tiff_stack(arr, tmp_path / "v.tif")
    assert main(["convert", str(src), str(tmp_path / "png")]) == 0
    assert main(["convert", str(src), str(tmp_path / "png")]) == 1
    assert "exists; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "png"), "--overwrite"]) == 0
    assert main(["convert", str(tmp_path / "png" / "0.png"), str(tmp_path / "folder")]) == 1
    assert "cannot tell the direction" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.tif"), str(tmp_path / "x")]) == 1
    assert "missing.tif: no such file" in capsys.readouterr().err


def test_build_stack_rewrites_only_when_content_changes(tmp_path):
    from PIL import Image

    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 5), i, np.uint8)).save(folder / f"{i}.png")
    dst = tmp_path / "out" / "stack.tif"
    assert build_stack(folder, dst) == str(dst)
    mtime = dst.stat().st_mtime_ns
    build_stack(folder, dst)
    assert dst.stat().st_mtime_ns == mtime
    Image.fromarray(np.full((5, 5), 9, np.uint8)).save(folder / "2.png")
    build_stack(folder, dst)
    assert read_stack(dst)[2, 0, 0] == 9


def test_real_isbi_images_round_trip(tmp_path, data_dir):
    images = data_dir("isbi2012_em_membranes") / "train" / "images"
    convert_stack(images, tmp_path / "train-volume.tif")
    convert_stack(tmp_path / "train-volume.tif", tmp_path / "png")
    for i in (0, 17, 29):
        assert _digest(tmp_path / "png" / f"{i}.png") != "" and np.array_equal(
            read_stack(tmp_path / "png" / f"{i}.png"), read_stack(images / f"{i}.png")
        )
