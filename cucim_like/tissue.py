"""Patch locations on tissue: a mask from a low-resolution level (Otsu on saturation), then a patch grid."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .arguments import as_int, check_level, int_tuple
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .cuimage import CuImage

_MAX_MASK_PIXELS = 4096 * 4096


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of float values in [0, 1]: maximises the between-class variance of the histogram."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = np.divide(s0, w0, out=np.zeros_like(s0), where=w0 > 0)
    m1 = np.divide(s0[-1] - s0, w1, out=np.zeros_like(s0), where=w1 > 0)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(rgb: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Boolean mask (h, w) of tissue in an image (h, w, c) and the threshold used.

    Colour images use HSV saturation (tissue is stained, glass is grey/white); single-channel images use
    darkness (1 - intensity). ``threshold`` in [0, 1] overrides Otsu's.
    """
    img = rgb.astype(np.float32)
    maxval = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else max(float(img.max()), 1e-6)
    img /= maxval
    if img.shape[2] >= 3:
        colour = img[..., :3]
        hi, lo = colour.max(axis=2), colour.min(axis=2)
        score = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 1e-6)
    else:
        score = 1.0 - img[..., 0]
    t = otsu_threshold(score) if threshold is None else float(threshold)
    return score > t, t


def tissue_locations(
    img: CuImage,
    size: tuple[int, int] | int,
    level: int = 0,
    stride: tuple[int, int] | int | None = None,
    threshold: float | None = None,
    min_tissue: float = 0.5,
    mask_level: int | None = None,
) -> np.ndarray:
    """Level-0 (x, y) locations of patches of ``size`` (w, h) at ``level`` that lie on tissue.

    Patches form a grid with ``stride`` (w, h) level pixels (default: ``size``, no overlap). A patch is kept
    when at least ``min_tissue`` of its area is tissue in a mask computed on ``mask_level`` (default: the
    smallest level). Returns an int64 array (N, 2), ready for ``read_region``.
    """
    levels = img.levels
    lvl = levels[check_level(level, len(levels))]
    w, h = int_tuple((size, size) if isinstance(size, int) else size, 2, "size")
    sx, sy = (w, h) if stride is None else int_tuple((stride, stride) if isinstance(stride, int) else stride,
                                                     2, "stride")
    if min(w, h, sx, sy) <= 0:
        raise InvalidArgumentError("size and stride must be positive")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InvalidArgumentError(f"min_tissue must lie in [0, 1], got {min_tissue}")
    if mask_level is None:
        mask_level = len(levels) - 1
    mlvl = levels[check_level(as_int(mask_level, "mask_level"), len(levels))]
    if mlvl.width * mlvl.height > _MAX_MASK_PIXELS and mlvl.index != len(levels) - 1:
        raise InvalidArgumentError(f"mask level {mlvl.index} is too large for a mask; choose a smaller level")
    overview = img.read_region(level=mlvl.index)
    if overview.ndim == 4:  # volumes: the first plane
        overview = overview[0]
    mask, _ = tissue_mask(overview, threshold)
    # Summed-area table of the mask for the tissue fraction of any box.
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    xs = np.arange(0, lvl.width - w + 1, sx, dtype=np.int64)
    ys = np.arange(0, lvl.height - h + 1, sy, dtype=np.int64)
    if not len(xs) or not len(ys):
        return np.empty((0, 2), np.int64)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    # patch box in mask pixels (at least one pixel)
    fx = mlvl.width / lvl.width
    fy = mlvl.height / lvl.height
    x0 = np.clip(np.floor(gx * fx).astype(np.int64), 0, mask.shape[1] - 1)
    y0 = np.clip(np.floor(gy * fy).astype(np.int64), 0, mask.shape[0] - 1)
    x1 = np.clip(np.maximum(x0 + 1, np.ceil((gx + w) * fx).astype(np.int64)), 1, mask.shape[1])
    y1 = np.clip(np.maximum(y0 + 1, np.ceil((gy + h) * fy).astype(np.int64)), 1, mask.shape[0])
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    fraction = inside / ((x1 - x0) * (y1 - y0))
    keep = fraction >= float(min_tissue) - 1e-9
    ds = lvl.downsample
    loc = np.stack([gx[keep], gy[keep]], axis=1).astype(np.float64) * ds
    return np.round(loc).astype(np.int64) if not math.isclose(ds, 1.0) else loc.astype(np.int64)
