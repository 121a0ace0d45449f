"""Data layer: folder datasets, built-in datasets (``ct-chest``, ``shapes``), augmentation, export.

Typical use::

    from unetkit.data import AugmentConfig, get_datasets, make_loader
    train_ds, val_ds = get_datasets("ct-chest", augment=AugmentConfig())   # or a folder path
    loader = make_loader(train_ds, batch_size=8, shuffle=True, num_workers=2)

Every dataset returns ``(image float32 (C, H, W) normalised, mask int64 (H, W))`` and carries
``num_classes``, ``in_channels``, ``class_names``, ``class_colors``, ``mean``, ``std``,
``ignore_index``, ``names``, ``image_paths`` and ``mask_paths``. Bad input raises :class:`DatasetError`.
See ``docs/data.md``.
"""

from ..models.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from .base import ArrayDataset, SegmentationDataset, compute_stats
from .classes import IGNORE_COLOR, default_colors, default_names, read_class_file
from .config import DataConfig
from .ct_chest import CT_CHEST_CLASSES, CT_CHEST_COLORS, CT_CHEST_WINDOW, CTChestDataset, load_ct_chest
from .errors import DatasetError
from .export import export_dataset
from .folder import FolderDataset, FolderScan, load_folder, scan_folder, split_indices
from .io import IMAGE_EXTENSIONS, read_image, read_mask
from .loader import make_loader
from .preprocess import Normalization, imagenet_stats, prepare_image
from .registry import (
    BUILTIN_DATASETS,
    DEFAULT_DATASET,
    dataset_names,
    get_dataset,
    get_datasets,
    open_datasets,
    open_test_set,
)
from .shapes import ShapesDataset, generate_shapes
from .transforms import AugmentConfig, JointTransform, build_transforms

__all__ = [
    "BUILTIN_DATASETS",
    "CT_CHEST_CLASSES",
    "CT_CHEST_COLORS",
    "CT_CHEST_WINDOW",
    "DEFAULT_DATASET",
    "IGNORE_COLOR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "AugmentConfig",
    "CTChestDataset",
    "DataConfig",
    "DatasetError",
    "FolderDataset",
    "FolderScan",
    "JointTransform",
    "Normalization",
    "SegmentationDataset",
    "ShapesDataset",
    "build_transforms",
    "compute_stats",
    "dataset_names",
    "default_colors",
    "default_names",
    "export_dataset",
    "generate_shapes",
    "get_dataset",
    "get_datasets",
    "imagenet_stats",
    "open_datasets",
    "open_test_set",
    "load_ct_chest",
    "load_folder",
    "make_loader",
    "prepare_image",
    "read_class_file",
    "read_image",
    "read_mask",
    "scan_folder",
    "split_indices",
]
