"""Where a read's pixels go and in what form: ``device="cuda"`` and the output transform of ``read_region``.

A :class:`ReadTarget` is made once per ``read_region`` call. With a device backend it runs plans on the CUDA
executor (the transform fused into placement); on the CPU it applies the transform after the CPU executor.
Without either, ``read_region`` does not make one at all and nothing here runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .cuda.placement import OutputTransform, ResolvedTransform, cast_like_kernel
from .errors import InvalidArgumentError
from .formats.base import Level


@dataclass
class ReadTarget:
    """``backend``: a CUDA-executor backend, or None for the CPU executor; ``transform``: None keeps the
    image's dtype and (h, w, c) layout."""

    backend: Any
    transform: OutputTransform | None

    @property
    def on_device(self) -> bool:
        return self.backend is not None

    def resolve(self, level: Level, channels: int | None = None) -> ResolvedTransform:
        spec = self.transform or OutputTransform()
        return spec.resolve(level.dtype, level.shape[3] if channels is None else channels)

    def native(self) -> ReadTarget:
        """The same device without a transform (reads whose channels are picked before transforming)."""
        return ReadTarget(self.backend, None)

    def finish(self, arr: Any, level: Level, *, batch: bool, has_channels: bool) -> Any:
        """Apply the transform to a read's result (channels last, or none), on the array's own device: the
        un-fused path of the CPU executor and of channel picks. Batches keep their batch axis first."""
        if self.transform is None:
            return arr
        xp = _array_module(arr)
        values = arr if has_channels else arr[..., None]
        resolved = self.resolve(level, values.shape[-1])
        out = apply_transform(xp, values, resolved)
        if not has_channels:
            return out[..., 0]
        if resolved.channels_first:
            out = xp.ascontiguousarray(xp.moveaxis(out, -1, 1 if batch else 0))
        return out


def apply_transform(xp: Any, values: Any, t: ResolvedTransform) -> Any:
    """``values`` (channels last) through ``t`` with the kernel's arithmetic, with NumPy or CuPy."""
    if t.identity:
        if xp is np:
            return cast_like_kernel(values, t.dtype)
        x = values
    else:
        x = values.astype(xp.float32) * xp.asarray(t.mul) + xp.asarray(t.add)
    if xp is np:
        return cast_like_kernel(x, t.dtype)
    dtype = np.dtype(t.dtype)
    if dtype.kind == "f" or x.dtype == dtype:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    if x.dtype.kind == "f":
        x = xp.where(x >= 0, xp.floor(x + 0.5), xp.ceil(x - 0.5))
        x = xp.nan_to_num(x, nan=0.0)
    return xp.clip(x, info.min, info.max).astype(dtype)


def _array_module(arr: Any) -> Any:
    if isinstance(arr, np.ndarray):
        return np
    import cupy

    return cupy


def make_target(device: str, transform: OutputTransform | None, path: str | None) -> ReadTarget | None:
    """The target of a read on ``device`` ("cpu", "cuda[:N]") with ``transform``; None for a plain CPU read.

    Raises DeviceUnavailableError naming what ``device="cuda"`` lacks, InvalidArgumentError for another
    device or a transform that is not an :class:`OutputTransform`.
    """
    if transform is not None and not isinstance(transform, OutputTransform):
        raise InvalidArgumentError(f"transform must be a cucim_like.OutputTransform, got {type(transform).__name__}")
    kind = str(device).lower().split(":")[0]
    if kind == "cpu":
        return None if transform is None else ReadTarget(None, transform)
    if kind == "cuda":
        from .cuda import backend_for_device

        return ReadTarget(backend_for_device(device, path), transform)
    from .errors import DeviceUnavailableError

    raise DeviceUnavailableError(f"unknown device {device!r}; use 'cpu' or 'cuda'", path=path)


def device_shape(out: Any, t: ResolvedTransform, *, batch: int | None, depth: int, volume: bool,
                 drop_channel: bool) -> Any:
    """The CUDA executor's output ((D, h, w, c), or (Q, c, R, h, w) channels first) as the user's shape:
    (h, w, c) / (c, h, w) for slides, (d, h, w, c) / (c, d, h, w) for volumes, with a batch axis first for
    batches; single-channel volumes (dims "ZYX") lose the channel axis."""
    if t.channels_first:
        q, c, r, h, w = out.shape
        shape = (c, r, h, w) if volume else (c, h, w)
        arr = out.reshape((q, *shape)) if batch is not None else out.reshape(shape)
        if drop_channel:
            arr = arr[:, 0] if batch is not None else arr[0]
        return arr
    d, h, w, c = out.shape
    shape = (depth, h, w, c) if volume else (h, w, c)
    arr = out.reshape((d // depth, *shape)) if batch is not None else out.reshape(shape)
    return arr[..., 0] if drop_channel else arr
