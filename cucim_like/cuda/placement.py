"""Placement tables: what the CUDA placement kernel (kernels/place.cu) does, as plain arrays, plus the NumPy
reference that does exactly the same on the CPU.

A wave of decoded tiles sits in *slots*. Each job copies a box of one slot into the output, converting colour
(YCbCr to RGB when the stream was decoded unconverted) and applying the output transform on the way; each fill
box writes the transformed fill value. Nothing here imports cupy: the tables are NumPy arrays that the kernel
launcher uploads, and the reference runs them on NumPy arrays, so CI checks the semantics without a GPU.

Layout of the tables (all int32, C-contiguous):

- ``jobs`` (n, 13): slot, sz0, sy0, sx0, sc0, dz0, dy0, dx0, dc0, nz, ny, nx, nc. Source offsets are in the
  slot's tile, destination offsets in the output (d, h, w, c) before the layout is applied.
- ``fills`` (m, 8): dz0, dy0, dx0, dc0, nz, ny, nx, nc.

Slots are described by ``slot_ptrs`` (uint64 device addresses) and ``slot_strides`` (int64 (k, 4): element
strides of z, y, x and c), so decoder output with padded rows is read in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..plan import Box, TileJob

JOB_COLUMNS = 13
FILL_COLUMNS = 8

# dtypes the kernel is instantiated for (kernels/place.cu name expressions)
KERNEL_IN_DTYPES = ("uint8", "uint16", "int16", "float32")
KERNEL_OUT_DTYPES = ("uint8", "uint16", "int16", "float16", "float32")
LAYOUTS = ("HWC", "CHW")


def kernel_supports(in_dtype: np.dtype, out_dtype: np.dtype) -> bool:
    """Whether the placement kernel is built for this pair (others: CPU read, upload, transform after)."""
    return np.dtype(in_dtype).name in KERNEL_IN_DTYPES and np.dtype(out_dtype).name in KERNEL_OUT_DTYPES


@dataclass(frozen=True)
class OutputTransform:
    """A transform applied while tiles are placed: ``out = (x * scale - mean[c]) / std[c]`` cast to ``dtype``.

    ``dtype``: output dtype (None keeps the image's); ``layout``: "HWC" (channels last, the default) or "CHW"
    (channels first; volumes: "CDHW"); ``scale``: None means 1/255 for uint8 images when ``mean``/``std`` are
    given, else 1; ``mean``/``std``: one value per channel, or one for all. Integer outputs are rounded to
    nearest and clipped to the dtype's range. The CUDA executor fuses it into the placement kernel; the CPU
    executor applies the same arithmetic in float32 after placement.
    """

    dtype: str | np.dtype | None = None
    layout: str = "HWC"
    mean: Sequence[float] | float | None = None
    std: Sequence[float] | float | None = None
    scale: float | None = None

    def resolve(self, in_dtype: np.dtype, channels: int) -> ResolvedTransform:
        """Per-channel float32 multipliers and addends for an image of ``in_dtype`` with ``channels``."""
        in_dtype = np.dtype(in_dtype)
        out_dtype = np.dtype(self.dtype) if self.dtype is not None else in_dtype
        if out_dtype.kind not in "uif" or out_dtype.itemsize > 8:
            raise InvalidArgumentError(f"transform dtype must be an integer or float type, got {out_dtype}")
        layout = str(self.layout).upper()
        if layout not in LAYOUTS:
            raise InvalidArgumentError(f"transform layout must be 'HWC' or 'CHW', got {self.layout!r}")
        normalise = self.mean is not None or self.std is not None
        scale = self.scale if self.scale is not None else (1 / 255 if normalise and in_dtype == np.uint8 else 1.0)
        mean = _per_channel(self.mean, 0.0, channels, "mean")
        std = _per_channel(self.std, 1.0, channels, "std")
        if np.any(std == 0) or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)):
            raise InvalidArgumentError("transform std must be finite and non-zero, mean finite")
        mul = (np.float32(scale) / std).astype(np.float32)
        add = (-mean / std).astype(np.float32)
        identity = bool(np.all(mul == 1) and np.all(add == 0))
        return ResolvedTransform(out_dtype, layout == "CHW", mul, add, identity)


def _per_channel(value: Sequence[float] | float | None, default: float, channels: int, name: str) -> np.ndarray:
    if value is None:
        return np.full(channels, default, np.float32)
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).astype(np.float32)
    if arr.ndim != 1 or arr.size not in (1, channels):
        raise InvalidArgumentError(f"transform {name} needs 1 or {channels} values, got {arr.size}")
    return np.broadcast_to(arr, (channels,)).copy()


@dataclass(frozen=True)
class ResolvedTransform:
    """``OutputTransform`` bound to an image: out = x * mul[c] + add[c] (float32), cast to ``dtype``."""

    dtype: np.dtype
    channels_first: bool
    mul: np.ndarray  # float32 (c,)
    add: np.ndarray  # float32 (c,)
    identity: bool

    def out_shape(self, shape: tuple[int, ...], zdiv: int = 0) -> tuple[int, ...]:
        """Output shape for a plan's (D, h, w, c): the same for channels last; (D // zdiv, c, zdiv, h, w) for
        channels first, so a batch of B regions of depth d (D = B * d, zdiv = d) is (B, c, d, h, w).
        ``zdiv`` 0 means D (one region)."""
        d, h, w, c = shape
        zdiv = zdiv or d
        return (d // zdiv, c, zdiv, h, w) if self.channels_first else (d, h, w, c)

    def out_strides(self, shape: tuple[int, ...], zdiv: int = 0) -> tuple[int, int, int, int, int]:
        """Element strides of the output for (q, r, y, x, c) where z = q * zdiv + r: what the kernel indexes."""
        d, h, w, c = shape
        zdiv = zdiv or d
        if self.channels_first:
            return (c * zdiv * h * w, h * w, w, 1, zdiv * h * w)
        return (zdiv * h * w * c, h * w * c, w * c, c, 1)

    def apply(self, values: Any, xp: Any = np) -> Any:
        """Transform values (channels last) to ``dtype`` with the kernel's arithmetic; ``xp`` is the array
        module of ``values`` (NumPy, or CuPy for the un-fused device path)."""
        if self.identity:
            return cast_like_kernel(values, self.dtype, xp)
        x = values.astype(xp.float32) * xp.asarray(self.mul) + xp.asarray(self.add)
        return cast_like_kernel(x, self.dtype, xp)


def cast_like_kernel(x: Any, dtype: np.dtype, xp: Any = np) -> Any:
    """The kernel's float-to-output conversion: integers rounded half away from zero (``floor(x + 0.5)`` /
    ``ceil(x - 0.5)`` in float32, as place.cu does), NaN to 0, saturated; floats converted directly."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or x.dtype == dtype:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    if x.dtype.kind in "iu":
        return xp.clip(x, info.min, info.max).astype(dtype)
    r = xp.where(x >= 0, xp.floor(x + 0.5), xp.ceil(x - 0.5))
    return xp.clip(xp.nan_to_num(r, nan=0.0), info.min, info.max).astype(dtype)


def job_table(jobs: Sequence[TileJob]) -> np.ndarray:
    """int32 (n, 13) rows for ``jobs`` whose ``tile`` field is the slot holding their decoded tile."""
    table = np.empty((len(jobs), JOB_COLUMNS), np.int32)
    for i, (slot, src, dst) in enumerate(jobs):
        (sz, _), (sy, _), (sx, _), (sc, _) = src
        (dz0, dz1), (dy0, dy1), (dx0, dx1), (dc0, dc1) = dst
        table[i] = (slot, sz, sy, sx, sc, dz0, dy0, dx0, dc0, dz1 - dz0, dy1 - dy0, dx1 - dx0, dc1 - dc0)
    return table


def fill_table(boxes: Sequence[Box]) -> np.ndarray:
    """int32 (m, 8) rows for output boxes to fill."""
    table = np.empty((len(boxes), FILL_COLUMNS), np.int32)
    for i, ((z0, z1), (y0, y1), (x0, x1), (c0, c1)) in enumerate(boxes):
        table[i] = (z0, y0, x0, c0, z1 - z0, y1 - y0, x1 - x0, c1 - c0)
    return table


def ycbcr_to_rgb_float(ycc: np.ndarray, maxval: float) -> np.ndarray:
    """Full-range BT.601 YCbCr to RGB in float32, rounded half to even (``rintf`` in the kernel, ``np.rint`` in
    the CPU decoders) and clipped to [0, maxval]: the kernel's formula."""
    half = (maxval + 1) / 2
    y = ycc[..., 0].astype(np.float32)
    cb = ycc[..., 1].astype(np.float32) - np.float32(half)
    cr = ycc[..., 2].astype(np.float32) - np.float32(half)
    rgb = np.stack([y + np.float32(1.402) * cr,
                    y - np.float32(0.344136) * cb - np.float32(0.714136) * cr,
                    y + np.float32(1.772) * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, maxval)


def _zsplit(view: np.ndarray, dz: int, nz: int, zdiv: int) -> np.ndarray:
    """The (nz, h, w, c) part of a (Q, R, h, w, c) view holding output rows z in [dz, dz + nz)."""
    q, r = divmod(dz, zdiv)
    if r + nz > zdiv:
        raise InvalidArgumentError(f"box z {dz}+{nz} crosses a region boundary (depth {zdiv})")
    return view[q, r : r + nz]


def place_reference(slots: Sequence[np.ndarray], jobs: np.ndarray, fills: np.ndarray, out: np.ndarray,
                    fill: float, transform: ResolvedTransform, ycbcr: bool = False, zdiv: int = 0) -> np.ndarray:
    """What the kernel does, in NumPy: ``slots`` are decoded tiles (tz, ty, tx, cs); ``out`` is the output of
    ``transform.out_shape(plan_shape, zdiv)`` and the transform's dtype."""
    if transform.channels_first:
        view = out.transpose(0, 2, 3, 4, 1)  # (Q, c, R, h, w) -> (Q, R, h, w, c)
    else:
        d, h, w, c = out.shape
        zdiv = zdiv or d
        view = out.reshape(d // zdiv, zdiv, h, w, c)
    zdiv = view.shape[1]
    for slot, sz, sy, sx, sc, dz, dy, dx, dc, nz, ny, nx, nc in jobs.tolist():
        src = slots[slot][sz : sz + nz, sy : sy + ny, sx : sx + nx, sc : sc + nc]
        if ycbcr and nc == 3:
            maxval = float(np.iinfo(src.dtype).max) if src.dtype.kind in "iu" else 1.0
            src = ycbcr_to_rgb_float(src, maxval).astype(src.dtype)
        mul, add = transform.mul[dc : dc + nc], transform.add[dc : dc + nc]
        part = ResolvedTransform(transform.dtype, False, mul, add, transform.identity)
        _zsplit(view, dz, nz, zdiv)[:, dy : dy + ny, dx : dx + nx, dc : dc + nc] = part.apply(src)
    for dz, dy, dx, dc, nz, ny, nx, nc in fills.tolist():
        values = np.full((1, 1, 1, nc), fill, np.float32)
        part = ResolvedTransform(transform.dtype, False, transform.mul[dc : dc + nc], transform.add[dc : dc + nc],
                                 transform.identity)
        _zsplit(view, dz, nz, zdiv)[:, dy : dy + ny, dx : dx + nx, dc : dc + nc] = part.apply(values)
    return out
