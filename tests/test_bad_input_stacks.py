"""Bad TIFF stacks and `medcnn convert` misuse on real data: a clear file-named error, never a shorter or RGB stack,
and the input is never modified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import LoadImage

from medcnn.cli import main
from medcnn.data.tiff import StackReadError, TiffStackReader, read_stack, stack_page_count, write_tiff_stack

EM = "isbi2012_em_membranes"
LGG = "lgg_flair_tiff"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def em_stack(tmp_path, data_dir) -> Path:
    """The first 5 real ISBI 2012 EM slices as a multi-page TIFF (5 x 512 x 512 uint8)."""
    stack = read_stack(data_dir(EM) / "train" / "images")[:5]
    return write_tiff_stack(stack, tmp_path / "train-volume.tif")


def _page_offsets(path: Path) -> list[int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [p.offset for p in tif.pages]


@pytest.fixture
def truncated(em_stack, tmp_path) -> dict[str, Path]:
    """The EM stack cut at the start of page 3 (tifffile alone reads it as 2 pages) and in the middle of page 3."""
    data = em_stack.read_bytes()
    offsets = _page_offsets(em_stack)
    out = {"at_page_boundary": tmp_path / "cut_boundary.tif", "mid_page": tmp_path / "cut_mid.tif"}
    out["at_page_boundary"].write_bytes(data[: offsets[2]])
    out["mid_page"].write_bytes(data[: offsets[2] + 100_000])
    return out


@pytest.fixture
def rgb_tiff(data_dir) -> Path:
    """A real LGG slice: a 256 x 256 three-channel TIFF (pre-contrast, FLAIR, post-contrast)."""
    files = sorted(p for p in (data_dir(LGG)).glob("*/*.tif") if not p.name.endswith("_mask.tif"))
    return files[0]


@pytest.mark.parametrize("kind", ["at_page_boundary", "mid_page"])
def test_truncated_stack_is_an_error_naming_the_file(truncated, kind):
    path = truncated[kind]
    with pytest.raises(StackReadError) as info:
        read_stack(path)
    assert str(info.value).startswith(str(path)) and "TIFF" in str(info.value)
    if kind == "at_page_boundary":
        assert "truncated" in str(info.value)
        with pytest.raises(StackReadError, match="truncated"):
            stack_page_count(path)  # the datalist expansion counts pages the same way


@pytest.mark.parametrize("kind", ["at_page_boundary", "mid_page"])
def test_load_image_with_the_stack_reader_does_not_fall_back_to_a_shorter_stack(truncated, kind):
    with pytest.raises(StackReadError, match=str(truncated[kind].name)):
        LoadImage(reader=TiffStackReader(), image_only=True)(truncated[kind])


def test_load_image_with_the_stack_reader_refuses_a_colour_tiff(rgb_tiff):
    with pytest.raises(StackReadError) as info:
        LoadImage(reader=TiffStackReader(), image_only=True)(rgb_tiff)
    assert str(info.value).startswith(str(rgb_tiff)) and "single-channel" in str(info.value)
    assert "(256, 256, 3)" in str(info.value)


def test_good_stack_still_loads_through_load_image(em_stack):
    img = LoadImage(reader=TiffStackReader(), image_only=True, dtype=None)(em_stack)
    assert tuple(img.shape) == (5, 512, 512) and str(img.dtype) == "torch.uint8"


def test_convert_of_a_truncated_stack_fails_and_writes_nothing(truncated, tmp_path, capsys):
    out = tmp_path / "slices"
    assert main(["convert", str(truncated["at_page_boundary"]), str(out)]) == 1
    captured = capsys.readouterr()
    assert "verified" not in captured.out and str(truncated["at_page_boundary"]) in captured.err
    assert not out.exists()


@pytest.mark.parametrize("name_format", ["../x_{index}.png", "/tmp/x_{index}.png", "sub/{index}.png", ".."])
def test_convert_name_format_cannot_leave_the_output_folder(em_stack, tmp_path, capsys, name_format):
    out = tmp_path / "slices"
    assert main(["convert", str(em_stack), str(out), "--name-format", name_format]) == 1
    assert "not a plain file name" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("x_*.png"))


@pytest.mark.parametrize("name_format", ["{slice}.png", "{index}.tif", "same.png"])
def test_convert_name_format_errors_are_clear(em_stack, tmp_path, capsys, name_format):
    assert main(["convert", str(em_stack), str(tmp_path / "slices"), "--name-format", name_format]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medcnn convert: error: name_format") and len(err.strip().splitlines()) == 1


def test_convert_never_overwrites_its_input_even_with_overwrite(em_stack, capsys):
    before = _digest(em_stack)
    argv = ["convert", str(em_stack), str(em_stack.parent), "--name-format", "train-volume.tif", "--overwrite"]
    assert main(argv) == 1
    assert _digest(em_stack) == before
    assert main(["convert", str(em_stack), str(em_stack), "--overwrite"]) == 1
    assert _digest(em_stack) == before
    assert "never modified" in capsys.readouterr().err
    # a symlinked output folder whose slice name is a link to the input: the input is still refused as a target
    link_dir = em_stack.parent / "linked"
    link_dir.mkdir()
    (link_dir / "0.png").symlink_to(em_stack)
    assert main(["convert", str(em_stack), str(link_dir), "--overwrite"]) == 1
    assert _digest(em_stack) == before and "never modified" in capsys.readouterr().err


def test_convert_refuses_an_output_that_is_the_input_folder_itself(tmp_path, data_dir, capsys):
    stack = read_stack(data_dir(EM) / "train" / "labels")[:3]
    folder = tmp_path / "labels"
    from medcnn.data.tiff import write_png_folder

    write_png_folder(stack, folder)
    before = {p.name: _digest(p) for p in folder.iterdir()}
    assert main(["convert", str(folder), str(folder / "labels.tif"), "--overwrite"]) == 1
    assert {p.name: _digest(p) for p in folder.iterdir()} == before
    assert "never modified" in capsys.readouterr().err
    assert np.array_equal(read_stack(folder), stack)
