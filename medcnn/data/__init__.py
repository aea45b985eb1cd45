"""Readers, datasets and datalists."""

from medcnn.data.brats import (
    BRATS_FILE_NAMES,
    BRATS_KEYS,
    BratsDataError,
    brats_case_datalist,
    brats_slices,
    load_brats_case,
    split_slices_by_block,
)
from medcnn.data.datalist import load_datalist, resolve_data_dir
from medcnn.data.tiff import StackReadError, TiffStackReader, expand_stack_datalist, read_stack, write_tiff_stack

__all__ = ["load_datalist", "resolve_data_dir"]
__all__ += [
    "BRATS_FILE_NAMES", "BRATS_KEYS", "BratsDataError", "brats_case_datalist", "brats_slices", "load_brats_case",
    "split_slices_by_block",
]
__all__ += ["StackReadError", "TiffStackReader", "expand_stack_datalist", "read_stack", "write_tiff_stack"]
