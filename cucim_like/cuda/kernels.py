"""Launcher of the placement kernels (kernels/place.cu): builds the CuPy module once and runs ``place_tiles`` and
``fill_boxes`` over the tables of cucim_like.cuda.placement on the current CuPy stream.

Importing this module needs neither CuPy nor CUDA; cupy (and cupy_backends' NVRTC binding) are imported inside
the functions that use them. ``compile_ptx`` compiles the source with NVRTC alone, so a machine without a GPU
can check that it builds.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CucimLikeError, DeviceUnavailableError, InvalidArgumentError
from .placement import FILL_COLUMNS, JOB_COLUMNS, KERNEL_IN_DTYPES, KERNEL_OUT_DTYPES, ResolvedTransform

if TYPE_CHECKING:
    import cupy

SOURCE_NAME = "place.cu"

# NumPy dtype name -> C type of the kernel's template argument
C_TYPES: dict[str, str] = {
    "uint8": "unsigned char",
    "uint16": "unsigned short",
    "int16": "short",
    "float16": "__half",
    "float32": "float",
}

# NVRTC options; CuPy's RawModule adds -arch, -ftz=true and include paths of its own (the kernel's float
# arithmetic is written as explicit PTX so neither --fmad nor -ftz changes its results; --fmad=false is kept
# so that no other float expression is contracted either)
OPTIONS: tuple[str, ...] = ("-std=c++17", "--fmad=false")

THREADS = 256  # threads per block
MAX_GRID_X = 1024  # blocks per job (threads stride over the rest)
MAX_GRID_Y = 65535  # jobs per launch (CUDA's limit on gridDim.y)


class KernelCompileError(CucimLikeError, RuntimeError):
    """NVRTC rejected kernels/place.cu; the message holds the compiler log."""


def place_name(in_dtype: str, out_dtype: str) -> str:
    """Name expression of ``place_tiles`` for NumPy dtype names, e.g. ``place_tiles<unsigned char, float>``."""
    return f"place_tiles<{C_TYPES[in_dtype]}, {C_TYPES[out_dtype]}>"


def fill_name(out_dtype: str) -> str:
    """Name expression of ``fill_boxes`` for a NumPy dtype name, e.g. ``fill_boxes<__half>``."""
    return f"fill_boxes<{C_TYPES[out_dtype]}>"


NAME_EXPRESSIONS: list[str] = [
    *(place_name(i, o) for i in KERNEL_IN_DTYPES for o in KERNEL_OUT_DTYPES),
    *(fill_name(o) for o in KERNEL_OUT_DTYPES),
]


def kernel_source() -> str:
    """Text of place.cu: the packaged copy (``cucim_like.kernels`` in a wheel), else the checkout's kernels/."""
    try:
        packaged = importlib.resources.files("cucim_like.kernels").joinpath(SOURCE_NAME)
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pass
    path = Path(__file__).resolve().parents[2] / "kernels" / SOURCE_NAME
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeviceUnavailableError(
            f"CUDA kernel source {SOURCE_NAME} not found (neither in package cucim_like.kernels nor at {path}); "
            "the installation is incomplete"
        ) from exc


# -- building ------------------------------------------------------------------------------------------------

_module_lock = threading.Lock()
_module: Any = None
_functions: dict[tuple[int, str], Any] = {}  # (device, name expression) -> kernel loaded on that device


def module() -> cupy.RawModule:
    """The CuPy RawModule of place.cu with every name expression, built once per process (CuPy also keeps the
    compiled binary in its on-disk cache). Compilation happens when the first kernel is fetched."""
    global _module
    with _module_lock:
        if _module is None:
            import cupy

            _module = cupy.RawModule(code=kernel_source(), options=OPTIONS, name_expressions=NAME_EXPRESSIONS)
        return _module


def _function(name: str) -> Any:
    """The kernel of one name expression on the current device (compiling the module on first use)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), name)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    from cupy.cuda.compiler import CompileException

    try:
        mod = module()
        with _module_lock:
            fn = _functions.get(key)
            if fn is None:
                fn = _functions[key] = mod.get_function(name)
    except CompileException as exc:
        raise KernelCompileError(f"NVRTC could not compile {SOURCE_NAME}: {exc}") from exc
    return fn


@functools.cache
def cuda_include_dir() -> str:
    """A CUDA include directory holding cuda_fp16.h (NVRTC has no built-in copy): the toolkit CuPy uses, then
    CUDA_PATH / CUDA_HOME, the nvidia-* wheels, /usr/local/cuda. Raises DeviceUnavailableError if none has it."""
    candidates: list[Path] = []
    try:
        from cupy import _environment

        cuda_path = _environment.get_cuda_path()
        if cuda_path:
            candidates.append(Path(cuda_path) / "include")
    except Exception:  # cupy absent or unable to locate CUDA: try the other places
        pass
    candidates += [Path(os.environ[var]) / "include" for var in ("CUDA_PATH", "CUDA_HOME") if os.environ.get(var)]
    try:
        import nvidia

        for root in map(Path, nvidia.__path__):
            candidates += sorted(root.glob("cu[0-9]*/include"), reverse=True)
            candidates += [root / "cuda_runtime" / "include"]
    except ImportError:
        pass
    candidates.append(Path("/usr/local/cuda/include"))
    for directory in candidates:
        if (directory / "cuda_fp16.h").is_file():
            return str(directory)
    raise DeviceUnavailableError(
        "cuda_fp16.h not found (looked in " + ", ".join(map(str, candidates)) + "); set CUDA_PATH or install "
        "the CUDA headers (nvidia-cuda-runtime wheel or a CUDA toolkit)"
    )


def compile_nvrtc(arch: str = "compute_90") -> tuple[str, dict[str, str]]:
    """Compile place.cu with NVRTC directly (no GPU needed): the PTX text and the lowered (mangled) name of each
    name expression. Raises KernelCompileError with NVRTC's log when the source does not compile."""
    from cupy_backends.cuda.libs import nvrtc

    options = [*OPTIONS, f"-I{cuda_include_dir()}", f"-arch={arch}"]
    prog = nvrtc.createProgram(kernel_source(), SOURCE_NAME, [], [])
    try:
        for name in NAME_EXPRESSIONS:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise KernelCompileError(f"NVRTC could not compile {SOURCE_NAME} ({exc}):\n{log}") from exc
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in NAME_EXPRESSIONS}
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    text = ptx.decode("utf-8") if isinstance(ptx, bytes) else str(ptx)
    return text.rstrip("\x00"), lowered


def compile_ptx(arch: str = "compute_90") -> str:
    """PTX of place.cu compiled with NVRTC for ``arch`` (no GPU needed); KernelCompileError with the log on
    failure."""
    return compile_nvrtc(arch)[0]


# -- launching -----------------------------------------------------------------------------------------------


def _table(table: np.ndarray, columns: int, what: str) -> np.ndarray:
    arr = np.ascontiguousarray(table, dtype=np.int32)
    if arr.ndim != 2 or arr.shape[1] != columns:
        raise InvalidArgumentError(f"{what} table must be (n, {columns}) int32, got shape {np.shape(table)}")
    return arr


def _check_boxes(starts: np.ndarray, sizes: np.ndarray, extents: np.ndarray, zdiv: int, what: str) -> None:
    """Every box (starts, sizes: (n, 4) int64 over z, y, x, c) lies inside ``extents`` ((4,) or (n, 4)) and,
    when ``zdiv`` > 0, inside one region of ``zdiv`` rows along z."""
    bad = np.any((starts < 0) | (sizes < 0) | (starts + sizes > extents), axis=1)
    if zdiv > 0:
        bad |= starts[:, 0] % zdiv + sizes[:, 0] > zdiv
    if np.any(bad):
        i = int(np.argmax(bad))
        raise InvalidArgumentError(
            f"{what} row {i} (start {starts[i].tolist()}, size {sizes[i].tolist()}) leaves its array"
            + (f" or crosses a region boundary (depth {zdiv})" if zdiv > 0 else "")
        )


def _grid_x(pixels: np.ndarray) -> int:
    """Blocks per job for jobs of ``pixels`` pixels each."""
    most = int(pixels.max()) if pixels.size else 0
    return max(1, min(-(-most // THREADS), MAX_GRID_X))


def output_layout(out_shape: tuple[int, ...], transform: ResolvedTransform, zdiv: int = 0,
                  ) -> tuple[tuple[int, int, int, int], int]:
    """The plan's (D, h, w, c) and the region depth for an output of ``out_shape`` in the transform's layout:
    channels last (D, h, w, c), or channels first (D / zdiv, c, zdiv, h, w). ``zdiv`` 0 means one region."""
    if transform.channels_first:
        if len(out_shape) != 5:
            raise InvalidArgumentError(f"a channels-first output is (regions, c, d, h, w), got shape {out_shape}")
        q, c, r, h, w = out_shape
        if zdiv not in (0, r):
            raise InvalidArgumentError(f"region depth {zdiv} does not match the output shape {out_shape}")
        return (q * r, h, w, c), r
    if len(out_shape) != 4:
        raise InvalidArgumentError(f"a channels-last output is (d, h, w, c), got shape {out_shape}")
    d, h, w, c = out_shape
    zdiv = zdiv or d
    if zdiv <= 0 or d % zdiv:
        raise InvalidArgumentError(f"region depth {zdiv} does not divide the output depth {d}")
    return (d, h, w, c), zdiv


def place(slot_arrays: Sequence[cupy.ndarray], jobs: np.ndarray, fills: np.ndarray, out: cupy.ndarray,
          fill: float, transform: ResolvedTransform, ycbcr: bool, zdiv: int = 0) -> None:
    """Enqueue ``place_tiles`` then ``fill_boxes`` on the current CuPy stream (no synchronisation).

    ``slot_arrays``: device arrays (tz, ty, tx, cs) of one dtype (any strides); ``jobs``: int32 (n, 13);
    ``fills``: int32 (m, 8); ``out``: C-contiguous device array of ``transform.out_shape(plan_shape, zdiv)`` and
    ``transform.dtype`` (``zdiv``: region depth of a batch, 0 for one region). Tables are checked against the
    shapes first, so a bad row raises InvalidArgumentError instead of writing out of bounds.
    """
    import cupy

    jobs = _table(jobs, JOB_COLUMNS, "jobs")
    fills = _table(fills, FILL_COLUMNS, "fills")
    out_dtype = np.dtype(out.dtype).name
    if out_dtype not in KERNEL_OUT_DTYPES:
        raise InvalidArgumentError(f"output dtype {out_dtype} is not one of {KERNEL_OUT_DTYPES}")
    if np.dtype(transform.dtype) != np.dtype(out.dtype):
        raise InvalidArgumentError(f"output dtype {out_dtype} differs from the transform's {transform.dtype}")
    if not isinstance(out, cupy.ndarray) or not out.flags.c_contiguous:
        raise InvalidArgumentError("output must be a C-contiguous cupy.ndarray")
    dims, zdiv = output_layout(tuple(out.shape), transform, int(zdiv))
    extents = np.array(dims, np.int64)
    mul = np.ascontiguousarray(transform.mul, np.float32)
    add = np.ascontiguousarray(transform.add, np.float32)
    if mul.shape != (dims[3],) or add.shape != (dims[3],):
        raise InvalidArgumentError(f"transform has {mul.size} channels, the output {dims[3]}")
    layout_args = (*(np.int64(s) for s in transform.out_strides(dims, zdiv)), np.int32(zdiv))

    if len(jobs):
        _launch_jobs(cupy, list(slot_arrays), jobs, out, out_dtype, extents, zdiv, layout_args, mul, add,
                     transform, ycbcr)
    if len(fills):
        _check_boxes(fills[:, :4].astype(np.int64), fills[:, 4:].astype(np.int64), extents, zdiv, "fills")
        value = np.float32(fill)
        values = np.full(dims[3], value, np.float32) if transform.identity else value * mul + add
        fn = _function(fill_name(out_dtype))
        fills_d = cupy.asarray(fills)
        values_d = cupy.asarray(values.astype(np.float32))
        grid_x = _grid_x(np.prod(fills[:, 4:7].astype(np.int64), axis=1))
        for base in range(0, len(fills), MAX_GRID_Y):
            count = min(MAX_GRID_Y, len(fills) - base)
            fn((grid_x, count), (THREADS,),
               (fills_d, np.int32(len(fills)), out, *layout_args, values_d, np.int32(base)))


def _launch_jobs(cupy: Any, slots: list[cupy.ndarray], jobs: np.ndarray, out: cupy.ndarray, out_dtype: str,
                 extents: np.ndarray, zdiv: int, layout_args: tuple[np.generic, ...], mul: np.ndarray,
                 add: np.ndarray, transform: ResolvedTransform, ycbcr: bool) -> None:
    if not slots:
        raise InvalidArgumentError("jobs given without slot arrays")
    in_dtype = np.dtype(slots[0].dtype)
    if in_dtype.name not in KERNEL_IN_DTYPES:
        raise InvalidArgumentError(f"slot dtype {in_dtype} is not one of {KERNEL_IN_DTYPES}")
    for i, arr in enumerate(slots):
        if not isinstance(arr, cupy.ndarray) or arr.ndim != 4 or arr.dtype != in_dtype:
            raise InvalidArgumentError(f"slot {i} must be a 4-D cupy.ndarray of {in_dtype}")
        if any(s % in_dtype.itemsize for s in arr.strides):
            raise InvalidArgumentError(f"slot {i} strides {arr.strides} are not multiples of its item size")
    shapes = np.array([arr.shape for arr in slots], np.int64)
    wide = jobs.astype(np.int64)
    slot_ids = wide[:, 0]
    if np.any(slot_ids < 0) or np.any(slot_ids >= len(slots)):
        raise InvalidArgumentError(f"jobs name slots outside 0..{len(slots) - 1}")
    _check_boxes(wide[:, 1:5], wide[:, 9:13], shapes[slot_ids], 0, "jobs (source)")
    _check_boxes(wide[:, 5:9], wide[:, 9:13], extents, zdiv, "jobs (destination)")

    ptrs = np.array([arr.data.ptr for arr in slots], np.uint64)
    strides = np.array([arr.strides for arr in slots], np.int64) // in_dtype.itemsize
    fn = _function(place_name(in_dtype.name, out_dtype))
    ptrs_d, strides_d, jobs_d = cupy.asarray(ptrs), cupy.asarray(strides), cupy.asarray(jobs)
    mul_d, add_d = cupy.asarray(mul), cupy.asarray(add)
    pixels = np.prod(wide[:, 9:12], axis=1)
    for base in range(0, len(jobs), MAX_GRID_Y):
        count = min(MAX_GRID_Y, len(jobs) - base)
        grid_x = _grid_x(pixels[base : base + count])
        fn((grid_x, count), (THREADS,),
           (ptrs_d, strides_d, jobs_d, np.int32(len(jobs)), out, *layout_args, np.int32(bool(ycbcr)), mul_d, add_d,
            np.int32(transform.identity), np.int32(base)))
