"""Readers, datasets and datalists."""

from medcnn.data.datalist import load_datalist, resolve_data_dir
from medcnn.data.tiff import StackReadError, TiffStackReader, expand_stack_datalist, read_stack, write_tiff_stack

__all__ = ["load_datalist", "resolve_data_dir"]
__all__ += ["StackReadError", "TiffStackReader", "expand_stack_datalist", "read_stack", "write_tiff_stack"]
