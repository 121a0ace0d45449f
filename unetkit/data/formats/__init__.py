"""The volume formats :mod:`unetkit.data.volume_io` reads and writes, one module each.

Each module describes its format with one :class:`~unetkit.data.volume_io.VolumeFormat` (``FORMAT``):
its name, file endings, reader, header-only geometry reader and label writer. :data:`FORMATS` is the
registry ``volume_io`` dispatches through; adding a format is a module here and one entry below.
"""

from __future__ import annotations

from ..volume_io import VolumeFormat
from . import dicom, metaimage, nifti, nrrd

#: The formats, in the order a path is tried against them (DICOM series folders last).
FORMATS: tuple[VolumeFormat, ...] = (nifti.FORMAT, nrrd.FORMAT, metaimage.FORMAT, dicom.FORMAT)

__all__ = ["FORMATS"]
