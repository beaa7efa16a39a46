"""Helpers of the CUDA tests: ``requires_gpu`` skips a test unless CuPy imports and sees a CUDA device."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def gpu_problem() -> str | None:
    """None when CuPy imports and sees at least one CUDA device, else why not."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, CUDARuntimeError without a driver, missing CUDA libraries, ...
        return f"no usable GPU: {type(exc).__name__}: {exc}"
    return None if count > 0 else "no usable GPU: CuPy sees no CUDA device"


def requires_gpu() -> None:
    """Skip the calling test unless a GPU is usable through CuPy."""
    problem = gpu_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture
def gpu() -> None:
    """Fixture form of ``requires_gpu`` (``@pytest.mark.usefixtures("gpu")``)."""
    requires_gpu()
