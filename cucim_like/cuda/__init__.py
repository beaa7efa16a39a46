"""The CUDA path's entry point. It checks what ``device="cuda"`` needs only when asked, and imports no GPU
package before then: ``import cucim_like`` and ``device="cpu"`` never touch cupy, nvImageCodec or kvikio."""

from __future__ import annotations

import importlib.util

from ..errors import DeviceUnavailableError

# (what, module to look for, what to install)
REQUIREMENTS: tuple[tuple[str, str, str], ...] = (
    ("CuPy", "cupy", "cupy-cuda13x or cupy-cuda12x"),
    ("nvImageCodec", "nvidia.nvimgcodec", "nvidia-nvimgcodec-cu13 or -cu12"),
    ("kvikio", "kvikio", "kvikio-cu13 or -cu12"),
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing or broken
        return False


def _gpu_problem() -> str | None:
    """None when CuPy sees at least one CUDA device, else what it reports."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver, ImportError of its CUDA libraries, ...
        return f"CuPy cannot reach a CUDA device: {exc}"
    return None if count > 0 else "CuPy sees no CUDA device"


def missing_requirements() -> list[str]:
    """What ``device="cuda"`` lacks on this machine: packages (with what to install), then a usable GPU."""
    missing = [f"{what} (pip install {pip})" for what, module, pip in REQUIREMENTS if not _installed(module)]
    if _installed("cupy"):
        problem = _gpu_problem()
        if problem:
            missing.append(problem)
    return missing


def require_cuda(path: str | None = None) -> None:
    """Raise DeviceUnavailableError naming what is missing for ``device="cuda"``; return when nothing is."""
    missing = missing_requirements()
    if missing:
        raise DeviceUnavailableError('device="cuda" is unavailable; missing: ' + "; ".join(missing), path=path)


# user settings of the CUDA path (see configure)
OPTIONS: dict[str, object] = {"io_threads": None, "wave_tiles": 512, "decoder": "gpu"}


def configure(*, io_threads: int | None = None, wave_tiles: int | None = None, decoder: str | None = None) -> dict:
    """Set how ``device="cuda"`` reads: ``io_threads`` kvikio's read threads (default: one per CPU, at most
    16); ``wave_tiles`` the tiles decoded per batch (bounds device memory; default 512); ``decoder`` "gpu"
    (nvImageCodec chooses: the hardware JPEG engine where there is one, else hybrid/CUDA) or "hw" (hardware
    engine only). Returns the settings now in force."""
    from ..errors import InvalidArgumentError

    if io_threads is not None:
        if int(io_threads) < 1:
            raise InvalidArgumentError("io_threads must be at least 1")
        OPTIONS["io_threads"] = int(io_threads)
    if wave_tiles is not None:
        if int(wave_tiles) < 1:
            raise InvalidArgumentError("wave_tiles must be at least 1")
        OPTIONS["wave_tiles"] = int(wave_tiles)
    if decoder is not None:
        if decoder not in ("gpu", "hw"):
            raise InvalidArgumentError(f"decoder must be 'gpu' or 'hw', got {decoder!r}")
        OPTIONS["decoder"] = decoder
    return dict(OPTIONS)


def backend_for_device(device: str, path: str | None = None):
    """The CUDA executor's backend for ``device`` ("cuda" or "cuda:N"), after checking its requirements."""
    require_cuda(path)
    from .backends import backend_for

    return backend_for(device)
