"""TiffStackReader: multi-page TIFF / PNG folder stacks through MONAI's LoadImage, dtype kept, bad stacks named."""

import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage
from PIL import Image

from medcnn.data.tiff import (
    LoadStackd,
    StackReadError,
    TiffStackReader,
    expand_stack_datalist,
    read_stack,
    stack_page_count,
    write_png_folder,
    write_tiff_stack,
)
from medcnn.transforms.stack import SelectSlice, SelectSliced
from medcnn.transforms.validation import InvalidInputError


@pytest.fixture
def stack16():
    rng = np.random.default_rng(0)
    return rng.integers(0, 65535, (5, 12, 9), dtype=np.uint16)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_load_image_reads_multipage_tiff_as_stack_keeping_dtype(tmp_path, dtype):
    arr = (np.arange(4 * 6 * 7).reshape(4, 6, 7) % 200).astype(dtype)
    path = write_tiff_stack(arr, tmp_path / "v.tif")
    # registered the MONAI way: by dotted name, like a built-in reader
    data, meta = TiffStackReader().get_data(TiffStackReader().read(path))
    assert data.dtype == arr.dtype and np.array_equal(data, arr) and meta["n_slices"] == 4
    img = LoadImage(reader="medcnn.data.TiffStackReader", dtype=None, image_only=True)(path)
    assert tuple(img.shape) == (4, 6, 7)
    # MONAI's tensors keep the dtype, except uint16 which MONAI widens (losslessly) to int32
    assert img.dtype == (torch.int32 if dtype == np.uint16 else torch.from_numpy(arr).dtype)
    assert np.array_equal(img.numpy(), arr)  # page i = rows x columns as in the file
    assert img.meta["n_slices"] == 4 and img.meta["filename_or_obj"] == str(path)


def test_several_stacks_load_as_channels_and_different_shapes_name_both_files(tmp_path, stack16):
    a = write_tiff_stack(stack16, tmp_path / "a.tif")
    b = write_tiff_stack(stack16[::-1].copy(), tmp_path / "b.tif")
    img = LoadImage(reader=TiffStackReader(), dtype=None, image_only=True)([a, b])
    assert tuple(img.shape) == (2, 5, 12, 9) and img.meta["original_channel_dim"] == 0
    assert np.array_equal(img[1].numpy(), stack16[::-1])
    short = write_tiff_stack(stack16[:3], tmp_path / "short.tif")
    with pytest.raises(StackReadError, match=r"a\.tif: \(5, 12, 9\).*short\.tif: \(3, 12, 9\)"):
        LoadImage(reader=TiffStackReader(), dtype=None, image_only=True)([a, short])


def test_png_folder_is_a_stack_in_natural_order(tmp_path):
    for i in range(12):  # 10.png and 11.png must come after 2.png
        Image.fromarray(np.full((3, 4), i, np.uint8)).save(tmp_path / f"{i}.png")
    arr = read_stack(tmp_path)
    assert arr.shape == (12, 3, 4) and arr.dtype == np.uint8
    assert arr[:, 0, 0].tolist() == list(range(12))
    assert stack_page_count(tmp_path) == 12


def test_dictionary_pipeline_selects_one_slice(tmp_path, stack16):
    write_tiff_stack(stack16, tmp_path / "img.tif")
    write_tiff_stack((stack16 > 30000).astype(np.uint8), tmp_path / "lab.tif")
    items = expand_stack_datalist([{"image": str(tmp_path / "img.tif"), "label": str(tmp_path / "lab.tif")}], [1, 3])
    assert [it["slice"] for it in items] == [1, 3]
    pipe = Compose(
        [
            LoadStackd(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            SelectSliced(["image", "label"]),
        ]
    )
    out = pipe(items[1])
    assert tuple(out["image"].shape) == (1, 12, 9) and out["image"].dtype == torch.int32
    assert np.array_equal(out["image"][0].numpy(), stack16[3])
    assert out["image"].meta["slice_index"] == 3
    assert tuple(out["image"].affine.shape) == (3, 3)  # a 2D image's affine


def test_select_slice_with_context_stacks_neighbours_as_channels_and_repeats_edges(stack16):
    img = torch.as_tensor(stack16.astype(np.int32))[None]  # (1, N=5, H, W)
    two = torch.stack([img[0], -img[0]])  # (2, N, H, W): two channels, kept in order
    mid = SelectSlice(context=1)(two, 2)
    assert tuple(mid.shape) == (6, 12, 9)
    expected = [two[0, 1], two[0, 2], two[0, 3], two[1, 1], two[1, 2], two[1, 3]]
    assert all(torch.equal(mid[i], e) for i, e in enumerate(expected))
    first, last = SelectSlice(context=2)(img, 0), SelectSlice(context=2)(img, -1)
    assert [int(c[0, 0]) for c in first] == [int(img[0, i, 0, 0]) for i in (0, 0, 0, 1, 2)]
    assert [int(c[0, 0]) for c in last] == [int(img[0, i, 0, 0]) for i in (2, 3, 4, 4, 4)]
    with pytest.raises(ValueError, match="context"):
        SelectSlice(context=-1)
    with pytest.raises(InvalidInputError, match=r"expected a channel-first stack .* got shape \(5, 12, 9\)"):
        SelectSlice()(img[0], 0)  # channel dimension missing


def test_select_sliced_context_per_key_keeps_metadata(tmp_path, stack16):
    write_tiff_stack(stack16, tmp_path / "img.tif")
    write_tiff_stack((stack16 > 30000).astype(np.uint8), tmp_path / "lab.tif")
    item = {"image": str(tmp_path / "img.tif"), "label": str(tmp_path / "lab.tif"), "slice": 4}
    pipe = Compose(
        [
            LoadStackd(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            SelectSliced(["image", "label"], context=[1, 0]),
        ]
    )
    out = pipe(item)
    assert tuple(out["image"].shape) == (3, 12, 9) and tuple(out["label"].shape) == (1, 12, 9)
    assert np.array_equal(out["image"][1].numpy(), stack16[4]) and np.array_equal(out["image"][2].numpy(), stack16[4])
    assert np.array_equal(out["image"][0].numpy(), stack16[3])
    assert out["image"].meta["slice_index"] == 4 and out["image"].meta["filename_or_obj"].endswith("img.tif")
    assert tuple(out["image"].affine.shape) == (3, 3)


def test_select_slice_out_of_range_names_file(tmp_path, stack16):
    img = LoadImage(reader=TiffStackReader(), dtype=None, ensure_channel_first=True)(
        write_tiff_stack(stack16, tmp_path / "v.tif")
    )
    with pytest.raises(InvalidInputError, match=r"v\.tif: slice 9 is outside the stack of 5"):
        SelectSlice()(img, 9)


def test_pages_of_different_sizes_name_the_file_and_page(tmp_path):
    path = tmp_path / "ragged.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((8, 8), np.uint8))
        tw.write(np.zeros((8, 6), np.uint8))
    with pytest.raises(StackReadError, match=r"ragged\.tif page 1: page size 8x6 differs from page 0 \(8x8\)"):
        read_stack(path)
    with pytest.raises(StackReadError, match=r"ragged\.tif page 1"):
        LoadStackd("image")({"image": path})


def test_folder_with_differently_sized_png_names_the_slice_file(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "1.png")
    with pytest.raises(StackReadError, match=r"1\.png .*differs from page 0"):
        read_stack(tmp_path)


def test_unreadable_missing_and_colour_files_are_named(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(StackReadError, match=r"broken\.tif: not readable as a TIFF"):
        read_stack(bad)
    with pytest.raises(StackReadError, match=r"nothere\.tif: no such file"):
        read_stack(tmp_path / "nothere.tif")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(StackReadError, match=r"rgb\.png.*single-channel"):
        read_stack(tmp_path / "rgb.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StackReadError, match="no slice files"):
        read_stack(tmp_path / "empty")


def test_image_and_label_slice_counts_must_match(tmp_path, stack16):
    write_tiff_stack(stack16, tmp_path / "img.tif")
    write_tiff_stack(stack16[:3], tmp_path / "lab.tif")
    with pytest.raises(StackReadError, match=r"img\.tif: 5 slices, label .*lab\.tif: 3 slices"):
        expand_stack_datalist([{"image": str(tmp_path / "img.tif"), "label": str(tmp_path / "lab.tif")}])
    with pytest.raises(StackReadError, match=r"slice indices \[7\]"):
        expand_stack_datalist([{"image": str(tmp_path / "img.tif")}], [0, 7])


def test_writers_never_overwrite_without_permission_and_png_refuses_lossy_dtypes(tmp_path, stack16):
    write_tiff_stack(stack16, tmp_path / "v.tif")
    with pytest.raises(FileExistsError, match="v.tif exists"):
        write_tiff_stack(stack16, tmp_path / "v.tif")
    with pytest.raises(ValueError, match="float32"):
        write_png_folder(stack16.astype(np.float32), tmp_path / "png")
    names = write_png_folder(stack16, tmp_path / "png")
    assert np.array_equal(read_stack(tmp_path / "png"), stack16) and len(names) == 5
