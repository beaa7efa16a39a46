"""Where a read's pixels go and in what form: ``device="cuda"`` and the output transform of ``read_region``.

A :class:`ReadTarget` is made once per ``read_region`` call. With a device backend it runs plans on the CUDA
executor (the transform fused into placement); on the CPU it applies the transform after the CPU executor.
Without either, ``read_region`` does not make one at all and nothing here runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import arguments as args
from . import memory
from .cache import current_cache
from .cuda.cache import device_cache
from .cuda.placement import OutputTransform, ResolvedTransform, kernel_supports
from .errors import DeviceUnavailableError, InvalidArgumentError
from .formats.base import Level
from .plan import Plan


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
        out = resolved.apply(values, xp)
        if not has_channels:
            return out[..., 0]
        if resolved.channels_first:
            out = xp.ascontiguousarray(xp.moveaxis(out, -1, 1 if batch else 0))
        return out


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


def read_with_target(img: Any, target: ReadTarget, plan: Plan, lvl: Level, pick: list[int] | None, squeeze: bool,
                     fill: float, workers: int, batch: int | None, progress: Callable[[int], None] | None = None,
                     cancel: Any = None) -> Any:
    """Run ``plan`` of CuImage ``img`` for a read with a device or a transform; returns the user's array (see
    :func:`device_shape`) with the channels ``read_region(c=...)`` picked (``pick`` positions, ``squeeze``: no
    channel axis). The CUDA executor fuses the transform when no channels are picked and the kernel is built
    for the dtypes; otherwise the CPU executor reads, the result is uploaded (on a device) and transformed."""
    volume = img.is_volume
    depth = plan.out_shape[0] // (batch or 1)
    fused = pick is None and not squeeze
    resolved = (target if fused else target.native()).resolve(lvl)
    wanted = target.transform.dtype if target.transform is not None else None
    out_itemsize = max(lvl.dtype.itemsize, np.dtype(wanted).itemsize if wanted is not None else 0)
    args.check_output_bytes(math.prod(plan.out_shape) * out_itemsize, "this read")
    if target.on_device and kernel_supports(lvl.dtype, resolved.dtype):
        from .cuda import executor as cuda_executor

        out = cuda_executor.execute(plan, lvl, path=img._path, readers=img._readers, file_keys=img._file_keys,
                                    fill=fill, transform=resolved, backend=target.backend, cache=device_cache(),
                                    workers=workers, roi=batch is not None, zdiv=depth, progress=progress)
        out = device_shape(out, resolved, batch=batch, depth=depth, volume=volume,
                           drop_channel=img._drop_channel and fused)
        if fused:
            return out
    else:
        out = memory.empty(plan.out_shape, lvl.dtype)
        img._run(plan, lvl, out, fill, workers, current_cache(), progress, cancel)
        if target.on_device:  # dtypes the placement kernel is not built for: decoded here, then uploaded
            out = target.backend.upload(out)
        out = out.reshape((batch, depth, *out.shape[1:])) if batch is not None else out
        if not volume:
            out = out[:, 0] if batch is not None else out[0]
        if img._drop_channel and pick is None:
            out = out[..., 0]
    if pick is not None:
        out = out[..., pick]
    if squeeze:
        out = out[..., 0]
    return target.finish(out, lvl, batch=batch is not None,
                         has_channels=not (squeeze or (img._drop_channel and pick is None)))
