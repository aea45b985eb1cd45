"""Readers, datasets and datalists."""

from medcnn.data.datalist import load_datalist, resolve_data_dir

__all__ = ["load_datalist", "resolve_data_dir"]
