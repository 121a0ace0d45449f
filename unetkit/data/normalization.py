"""Normalisation schemes: how pixel values become network input, and the one rule that picks a scheme.

Each scheme is a class behind a name in :data:`SCHEMES` (as nnU-Net keeps its schemes): it turns the data
set's :class:`~unetkit.data.fingerprint.Fingerprint` (and, for pretrained encoders, the statistics their
weights were trained with) into the :class:`~unetkit.data.preprocess.Normalization` every split, the
checkpoint and the exported model apply. :func:`choose_normalization` is the single place the scheme is
decided, from the fingerprint and the encoder, so ``unetkit plan`` shows exactly what training uses.
"""

from __future__ import annotations

from typing import ClassVar

from ..models.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from ..models.encoders.torchvision_backbones import adapt_normalisation
from .fingerprint import Fingerprint
from .preprocess import Normalization

Stats = tuple[tuple[float, ...], tuple[float, ...]]


class Scheme:
    """A normalisation scheme: ``values`` computes its :class:`Normalization` for the data."""

    name: ClassVar[str]
    help: ClassVar[str]

    def values(self, fp: Fingerprint, encoder_stats: Stats | None = None) -> Normalization:
        raise NotImplementedError


class ZScore(Scheme):
    name, help = "zscore", "the data set's mean and std"

    def values(self, fp: Fingerprint, encoder_stats: Stats | None = None) -> Normalization:
        return Normalization(fp.mean, [s if s >= 1e-6 else 1.0 for s in fp.std])


class Percentile(Scheme):
    name, help = "percentile", "clip to the 0.5-99.5 percentiles, then z-score"

    def values(self, fp: Fingerprint, encoder_stats: Stats | None = None) -> Normalization:
        clip = tuple((p[0], p[-1]) for p in fp.percentiles)
        return Normalization(fp.clipped_mean, [max(s, 1e-6) for s in fp.clipped_std], clip)


class CT(Scheme):
    name, help = "ct", "clip to the 0.5-99.5 percentiles of the voxels inside the labels, then z-score (nnU-Net's CT)"

    def values(self, fp: Fingerprint, encoder_stats: Stats | None = None) -> Normalization:
        if fp.foreground_percentiles is None or fp.foreground_mean is None or fp.foreground_std is None:
            raise ValueError("normalization ct needs labelled voxels in the training data; use percentile")
        p, c = fp.foreground_percentiles, fp.in_channels
        return Normalization([fp.foreground_mean] * c, [max(fp.foreground_std, 1e-6)] * c, [(p[0], p[-1])] * c)


class ImageNet(Scheme):
    name, help = "imagenet", "the statistics a pretrained encoder's weights were trained with (ImageNet's)"

    def values(self, fp: Fingerprint, encoder_stats: Stats | None = None) -> Normalization:
        mean, std = encoder_stats or adapt_normalisation(IMAGENET_MEAN, IMAGENET_STD, fp.in_channels)
        return Normalization(mean, std)


#: Scheme name -> class; ``TrainConfig.normalization`` takes these names.
SCHEMES: dict[str, type[Scheme]] = {s.name: s for s in (ZScore, Percentile, CT, ImageNet)}


def choose_normalization(fp: Fingerprint, given: str | None = None, encoder_stats: Stats | None = None
                         ) -> tuple[str, Normalization, str]:
    """``(scheme name, its Normalization, reason)`` for data fingerprinted as ``fp``.

    ``given`` (``--normalization``) wins; else a pretrained encoder (``encoder_stats``: the statistics of
    its weights) gets them; CT volumes get nnU-Net's CT scheme; 16-bit images and float images outside
    [0, 1] (scanner and sensor units with outliers) get percentile clipping; 8-bit images and floats already
    in [0, 1] the data set's mean and std.
    """
    if given is not None:
        name, reason = given, "given"
    elif encoder_stats is not None:
        name, reason = "imagenet", "pretrained encoder: the statistics its weights were trained with"
    elif fp.modality == "ct" and fp.foreground_percentiles is not None:
        name = "ct"
        reason = ("CT volumes: clip to the 0.5-99.5 percentiles of the Hounsfield units inside the labels, then "
                  "z-score with their mean and std (as nnU-Net)")
    elif fp.dtype == "uint16" or (fp.dtype == "float32" and (min(fp.minimum) < 0 or max(fp.maximum) > 1)):
        name = "percentile"
        kind = ("volumes in scanner units" if fp.spacing is not None else
                "16-bit images" if fp.dtype == "uint16" else "unscaled float images")
        reason = f"{kind}: clip outliers to the 0.5-99.5 percentiles, then z-score"
    else:
        name = "zscore"
        reason = f"{'8-bit' if fp.dtype == 'uint8' else 'float [0, 1]'} images: the data set's mean and std"
    if name not in SCHEMES:
        raise ValueError(f"normalization must be one of {', '.join(SCHEMES)}, not {name!r}")
    return name, SCHEMES[name]().values(fp, encoder_stats), reason
