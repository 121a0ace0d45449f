"""A data set's fingerprint: what the planner needs to know about the training images and masks.

One pass over the training split gathers image sizes, channels, the stored pixel type (bit depth),
per-channel intensity statistics in [0, 1] units (exact mean and std; percentiles from up to
``samples_per_image`` pixels of every image), and per-class pixel counts and per-image presence.
nnU-Net plans from the same kind of summary; :func:`unetkit.train.plan.make_plan` turns it into choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import SegmentationDataset
from .io import scale_of

#: Percentiles reported per channel; the outer two are the clip range of ``percentile`` normalisation.
PERCENTILES: tuple[float, ...] = (0.5, 50.0, 99.5)


@dataclass
class Fingerprint:
    """Summary of a training split. Intensities are in [0, 1] units (stored value / 255 or / 65535)."""

    name: str
    num_images: int
    num_classes: int
    in_channels: int
    class_names: list[str]
    dtype: str  # the widest stored pixel type: uint8, uint16 or float32
    sizes: list[tuple[int, int]]  # (height, width) of every image
    mean: list[float]
    std: list[float]
    minimum: list[float]
    maximum: list[float]
    percentiles: list[list[float]]  # per channel, at PERCENTILES
    clipped_mean: list[float]  # after clipping to the outer percentiles
    clipped_std: list[float]
    class_pixels: list[int]
    class_images: list[int]  # images in which each class occurs
    ignore_index: int = 255
    spacing: list[float] | None = None  # volumes: median voxel spacing of the slice grid (slice, row, column)
    modality: str | None = None  # volumes: "ct" (Hounsfield units) or "other"
    foreground_percentiles: list[float] | None = None  # of the voxels inside the labels, at PERCENTILES
    foreground_mean: float | None = None  # of those voxels clipped to their outer percentiles
    foreground_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_frequency(self) -> list[float]:
        total = max(1, sum(self.class_pixels))
        return [c / total for c in self.class_pixels]

    @property
    def class_presence(self) -> list[float]:
        return [c / max(1, self.num_images) for c in self.class_images]

    def size_stats(self) -> dict[str, tuple[int, int]]:
        """``min``/``median``/``max`` of heights and widths, as ``(height, width)`` pairs."""
        h = np.array([s[0] for s in self.sizes])
        w = np.array([s[1] for s in self.sizes])
        return {"min": (int(h.min()), int(w.min())), "median": (int(np.median(h)), int(np.median(w))),
                "max": (int(h.max()), int(w.max()))}

    @property
    def scale(self) -> float:
        """Stored units per [0, 1] unit (255, 65535 or 1), for showing intensities as stored."""
        return scale_of(np.dtype(self.dtype))

    def to_dict(self) -> dict[str, Any]:
        """A YAML-friendly summary (sizes as statistics, not one entry per image)."""
        stats = self.size_stats()
        return {
            "name": self.name, "images": self.num_images, "channels": self.in_channels, "dtype": self.dtype,
            "size_min": list(stats["min"]), "size_median": list(stats["median"]), "size_max": list(stats["max"]),
            "mean": _r(self.mean), "std": _r(self.std), "min": _r(self.minimum), "max": _r(self.maximum),
            "percentiles": {str(p): _r([c[k] for c in self.percentiles]) for k, p in enumerate(PERCENTILES)},
            "classes": {n: {"pixel_fraction": round(f, 6), "image_fraction": round(p, 4)}
                        for n, f, p in zip(self.class_names, self.class_frequency, self.class_presence)},
            **({"spacing": self.spacing} if self.spacing is not None else {}),
            **({"modality": self.modality} if self.modality is not None else {}),
            **({"foreground_percentiles": _r(self.foreground_percentiles), "foreground_mean":
                round(float(self.foreground_mean or 0.0), 6), "foreground_std":
                round(float(self.foreground_std or 0.0), 6)} if self.foreground_percentiles is not None else {}),
        }

    def summary(self) -> str:
        """A few lines for a person: sizes, pixel type, intensities as stored, classes."""
        stats = self.size_stats()
        sc = self.scale
        fmt = (lambda v: f"{v * sc:.0f}") if sc > 1 else (lambda v: f"{v:.4g}")
        lines = [f"{self.num_images} training images, {self.in_channels} channel(s), {self.dtype}",
                 "size (HxW): min {}x{}, median {}x{}, max {}x{}".format(*stats["min"], *stats["median"],
                                                                         *stats["max"])]
        for c in range(self.in_channels):
            p = self.percentiles[c]
            lines.append(f"channel {c}: percentiles 0.5/50/99.5 = {fmt(p[0])}/{fmt(p[1])}/{fmt(p[2])}, "
                         f"mean {fmt(self.mean[c])}, std {fmt(self.std[c])}" + (" (stored units)" if sc > 1 else ""))
        width = max(len(n) for n in self.class_names)
        lines.append(f"{'class':<{width}}  pixels    in images")
        for n, f, p in zip(self.class_names, self.class_frequency, self.class_presence):
            lines.append(f"{n:<{width}}  {100 * f:6.2f} %  {100 * p:5.1f} %")
        if self.spacing is not None:
            lines.insert(1, "volumes ({}): median voxel spacing {} mm (slice x row x column)".format(
                self.modality or "?", " x ".join(f"{v:.3g}" for v in self.spacing)))
        if self.foreground_percentiles is not None:
            p = self.foreground_percentiles
            lines.append(f"inside the labels: percentiles 0.5/50/99.5 = {fmt(p[0])}/{fmt(p[1])}/{fmt(p[-1])}")
        return "\n".join(lines)


def _r(values: list[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def fingerprint(dataset: SegmentationDataset, samples_per_image: int = 10_000, seed: int = 0) -> Fingerprint:
    """Fingerprint ``dataset`` (its stored, un-augmented images and masks) in one pass."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{dataset.name}: no training images to plan from")
    c_in, k = dataset.in_channels, dataset.num_classes
    rng = np.random.default_rng(seed)
    lo = np.full(c_in, np.inf)
    hi = np.full(c_in, -np.inf)
    s1 = np.zeros(c_in)
    s2 = np.zeros(c_in)
    count = 0
    samples: list[np.ndarray] = []
    fg_samples: list[np.ndarray] = []
    centre = c_in // 2  # the slice itself when 2.5D context channels surround it
    pixels = np.zeros(k, dtype=np.int64)
    images = np.zeros(k, dtype=np.int64)
    sizes: list[tuple[int, int]] = []
    widest = "uint8"
    for i in range(n):
        image, mask = dataset.load_stored(i)
        widest = _wider(widest, str(image.dtype))
        x = image.reshape(c_in, -1).astype(np.float64) / scale_of(image.dtype)
        if not np.isfinite(x).all():
            where = dataset.image_paths[i] if i < len(dataset.image_paths) else f"image {i}"
            raise ValueError(f"{where}: the image has NaN or infinite pixels; fix or remove it")
        lo = np.minimum(lo, x.min(1))
        hi = np.maximum(hi, x.max(1))
        s1 += x.sum(1)
        s2 += (x * x).sum(1)
        count += x.shape[1]
        take = x if x.shape[1] <= samples_per_image else x[:, rng.choice(x.shape[1], samples_per_image,
                                                                            replace=False)]
        samples.append(take.astype(np.float32))
        sizes.append((int(mask.shape[0]), int(mask.shape[1])))
        inside = x[centre][(mask.ravel() > 0) & (mask.ravel() != dataset.ignore_index)]
        if inside.size:
            fg_samples.append(inside if inside.size <= samples_per_image else
                              inside[rng.choice(inside.size, samples_per_image, replace=False)])
        m = mask.ravel().astype(np.int64)
        m = m[(m != dataset.ignore_index) & (m < k)]
        counts = np.bincount(m, minlength=k)
        pixels += counts
        images += counts > 0
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    pooled = np.concatenate(samples, axis=1)
    pct = np.percentile(pooled, PERCENTILES, axis=1).T  # (C, len(PERCENTILES))
    clipped = np.clip(pooled, pct[:, :1], pct[:, -1:])
    fg: dict[str, Any] = {}
    if fg_samples:
        inside = np.concatenate(fg_samples)
        fp_pct = np.percentile(inside, PERCENTILES)
        inside = np.clip(inside, fp_pct[0], fp_pct[-1])
        fg = {"foreground_percentiles": fp_pct.tolist(), "foreground_mean": float(inside.mean()),
              "foreground_std": float(inside.std())}
    volume: dict[str, Any] = {}
    cases = getattr(dataset, "cases", None)
    if cases:
        volume = {"spacing": np.median([c.spacing for c in cases], axis=0).round(4).tolist(),
                  "modality": getattr(dataset, "modality", None)}
    return Fingerprint(
        name=dataset.name, num_images=n, num_classes=k, in_channels=c_in, class_names=list(dataset.class_names),
        dtype=widest, sizes=sizes, mean=mean.tolist(), std=std.tolist(), minimum=lo.tolist(),
        maximum=hi.tolist(), percentiles=pct.tolist(),
        clipped_mean=clipped.mean(1).tolist(), clipped_std=clipped.std(1).tolist(),
        class_pixels=pixels.tolist(), class_images=images.tolist(), ignore_index=dataset.ignore_index,
        **volume, **fg)


def _wider(a: str, b: str) -> str:
    order = ("uint8", "uint16", "float32")
    b = "float32" if b.startswith("float") else b
    if b not in order:
        b = "float32"
    return max(a, b, key=order.index)
