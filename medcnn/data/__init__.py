"""Readers, datasets and datalists."""

from medcnn.data.batching import MixUpBatch, PatientSliceBatchSampler, group_balanced_weights
from medcnn.data.brats import (
    BRATS_FILE_NAMES,
    BRATS_KEYS,
    BratsDataError,
    brats_case_datalist,
    brats_hemispheres,
    brats_slices,
    brats_volume_transforms,
    load_brats_case,
    split_slices_by_block,
)
from medcnn.data.coco import (
    CocoFormatError,
    coco_categories,
    load_coco_datalist,
    load_coco_eval_datalist,
    masks_to_coco,
    split_coco_datalist,
)
from medcnn.data.datalist import common_parent, load_datalist, resolve_data_dir
from medcnn.data.dicom import (
    DicomSeriesError,
    DicomSeriesReader,
    LoadDicomSeries,
    LoadDicomSeriesd,
    load_dicom_series,
    read_dicom_series,
    save_like,
    write_dicom_seg,
    write_dicom_series_like,
)
from medcnn.data.lgg import LGGDataError, lgg_datalist, load_lgg_datalist
from medcnn.data.synthetic import (
    SyntheticObjectDataset,
    SyntheticObjectGenerator,
    ball_mask,
    load_labelled_arrays,
    synthetic_datalist,
)
from medcnn.data.tiff import StackReadError, TiffStackReader, expand_stack_datalist, read_stack, write_tiff_stack
from medcnn.data.tiff_pages import TiffPagesReader, read_tiff_pages, write_tiff_pages

__all__ = ["common_parent", "load_datalist", "resolve_data_dir", "PatientSliceBatchSampler", "MixUpBatch",
           "group_balanced_weights"]
__all__ += [
    "BRATS_FILE_NAMES", "BRATS_KEYS", "BratsDataError", "brats_case_datalist", "brats_hemispheres", "brats_slices",
    "brats_volume_transforms", "load_brats_case", "split_slices_by_block",
]
__all__ += ["StackReadError", "TiffStackReader", "expand_stack_datalist", "read_stack", "write_tiff_stack"]
__all__ += [
    "CocoFormatError", "coco_categories", "load_coco_datalist", "load_coco_eval_datalist", "masks_to_coco",
    "split_coco_datalist",
]
__all__ += [
    "DicomSeriesError", "DicomSeriesReader", "LoadDicomSeries", "LoadDicomSeriesd", "load_dicom_series",
    "read_dicom_series", "save_like", "write_dicom_seg", "write_dicom_series_like",
]
__all__ += [
    "SyntheticObjectDataset", "SyntheticObjectGenerator", "ball_mask", "load_labelled_arrays", "synthetic_datalist",
]
__all__ += ["TiffPagesReader", "read_tiff_pages", "write_tiff_pages"]
__all__ += ["LGGDataError", "lgg_datalist", "load_lgg_datalist"]
