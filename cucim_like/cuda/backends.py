"""Where the CUDA executor's arrays live and how it reads, decodes and places: the GPU (CuPy, kvikio,
nvImageCodec on the device, the placement kernel), or the host stand-in that CI runs (NumPy, positional reads,
nvImageCodec's CPU backend, the NumPy reference of the kernel). The executor is the same code for both."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DeviceUnavailableError
from ..fileio import FileReader
from ..plan import ByteRange
from .placement import ResolvedTransform, place_reference


class HostBackend:
    """NumPy arrays, reads through the image's readers, nvImageCodec's CPU decoder, reference placement."""

    decoder = "cpu"
    device_id = 0
    cuda_stream = 0

    def activate(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def from_image(self, image: Any) -> np.ndarray:
        """A decoded nvImageCodec image as a (1, h, w, c) array."""
        arr = np.asarray(image.cpu())
        return arr.reshape(1, *arr.shape[:2], -1)

    def upload(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def read_ranges(self, readers: Sequence[FileReader], ranges: Sequence[ByteRange], level: int) -> list:
        return [memoryview(readers[r.file_id].read(r.start, r.stop, level=level)) for r in ranges]

    def place(self, slots: Sequence[Any], jobs: np.ndarray, fills: np.ndarray, out: Any, fill: float,
              transform: ResolvedTransform, ycbcr: bool, zdiv: int) -> None:
        place_reference(slots, jobs, fills, out, fill, transform, ycbcr, zdiv)

    def fence(self) -> None:
        """A marker of the work enqueued so far (nothing is asynchronous here)."""
        return None

    def wait(self, fence: Any) -> None:
        return None


class CudaBackend:
    """CuPy arrays on ``device_id``, ordered on the CuPy stream current when the read was asked for; tile
    bytes read with kvikio into pinned host memory; nvImageCodec decoding on the GPU; the placement kernel."""

    def __init__(self, device_id: int | None = None, decoder: str = "gpu", io_threads: int | None = None) -> None:
        import cupy

        self.cupy = cupy
        self.device_id = cupy.cuda.runtime.getDevice() if device_id is None else int(device_id)
        with cupy.cuda.Device(self.device_id):
            self.stream = cupy.cuda.get_current_stream()
        self.cuda_stream = int(self.stream.ptr)
        self.decoder = decoder
        self.io_threads = io_threads

    def activate(self):
        """Context in which this backend's device and stream are current (executor threads enter it)."""
        return _Active(self)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        return self.cupy.empty(shape, dtype)

    def from_image(self, image: Any):
        cp = self.cupy
        on_device = str(image.buffer_kind).endswith("STRIDED_DEVICE")
        arr = cp.asarray(image) if on_device else cp.asarray(np.asarray(image.cpu()))  # a view keeps image alive
        return arr.reshape(1, *arr.shape[:2], -1)

    def upload(self, arr: np.ndarray):
        return self.cupy.asarray(arr)

    def read_ranges(self, readers: Sequence[FileReader], ranges: Sequence[ByteRange], level: int) -> list:
        from .io import read_ranges_kvikio

        return read_ranges_kvikio([r.path for r in readers], ranges, self.io_threads)

    def place(self, slots: Sequence[Any], jobs: np.ndarray, fills: np.ndarray, out: Any, fill: float,
              transform: ResolvedTransform, ycbcr: bool, zdiv: int) -> None:
        from .kernels import place

        place(slots, jobs, fills, out, fill, transform, ycbcr, zdiv)

    def fence(self) -> Any:
        """A CUDA event recorded on the stream after the work enqueued so far."""
        event = self.cupy.cuda.Event(disable_timing=True)
        event.record(self.stream)
        return event

    def wait(self, fence: Any) -> None:
        """Block until the work before ``fence`` is done (its inputs may then be freed)."""
        fence.synchronize()


class _Active:
    def __init__(self, backend: CudaBackend) -> None:
        self.device = backend.cupy.cuda.Device(backend.device_id)
        self.stream = backend.stream

    def __enter__(self) -> None:
        self.device.__enter__()
        self.stream.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)


def backend_for(device: str) -> CudaBackend:
    """The backend serving ``device`` ("cuda" or "cuda:N"); tests put the host stand-in in its place."""
    kind, _, index = str(device).lower().partition(":")
    if kind != "cuda":
        raise DeviceUnavailableError(f"no CUDA backend for device {device!r}")
    from . import OPTIONS

    return CudaBackend(int(index) if index else None, decoder=str(OPTIONS["decoder"]),
                       io_threads=OPTIONS["io_threads"])  # type: ignore[arg-type]
