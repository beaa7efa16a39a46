"""Without a GPU or its packages, device="cuda" is a typed error naming what is missing; the CPU path and
``import cucim_like`` never import a GPU package."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cucim_like
from cucim_like import CuImage
from cucim_like import cuda as cuda_path


def test_import_and_cpu_reads_load_no_gpu_package(small_slide):
    code = (
        "import sys, cucim_like\n"
        f"cucim_like.CuImage({str(small_slide[0])!r}).read_region((0, 0), (64, 64))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'kvikio', 'nvidia')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cuda_names_every_missing_package(small_slide, monkeypatch):
    monkeypatch.setattr(cuda_path, "_installed", lambda module: False)
    with pytest.raises(cucim_like.DeviceUnavailableError) as info:
        CuImage(small_slide[0]).read_region((0, 0), (8, 8), device="cuda")
    message = str(info.value)
    for what in ("CuPy", "nvImageCodec", "kvikio", "pip install"):
        assert what in message
    assert info.value.path == str(small_slide[0])


def test_cuda_names_a_missing_gpu(small_slide, monkeypatch):
    monkeypatch.setattr(cuda_path, "_installed", lambda module: True)
    monkeypatch.setattr(cuda_path, "_gpu_problem", lambda: "CuPy sees no CUDA device")
    with pytest.raises(cucim_like.DeviceUnavailableError, match="no CUDA device"):
        CuImage(small_slide[0]).read_region(device="cuda")


def test_cuda_with_everything_present_reaches_the_backend(small_slide, monkeypatch):
    monkeypatch.setattr(cuda_path, "_installed", lambda module: True)
    monkeypatch.setattr(cuda_path, "_gpu_problem", lambda: None)
    asked = []

    def fake_backend(device):
        asked.append(device)
        raise cucim_like.DeviceUnavailableError("stop here")

    monkeypatch.setattr("cucim_like.cuda.backends.backend_for", fake_backend)
    with pytest.raises(cucim_like.DeviceUnavailableError, match="stop here"):
        CuImage(small_slide[0]).read_region((0, 0), (8, 8), device="cuda:0")
    assert asked == ["cuda:0"]


def test_this_machine_reports_truthfully(small_slide):
    missing = cuda_path.missing_requirements()
    if not missing:
        pytest.skip("this machine has everything device='cuda' needs")
    with pytest.raises(cucim_like.DeviceUnavailableError) as info:
        CuImage(small_slide[0]).read_region((0, 0), (8, 8), device="cuda")
    for item in missing:
        assert item in str(info.value)


def test_unknown_device(small_slide):
    with pytest.raises(cucim_like.DeviceUnavailableError, match="unknown device"):
        CuImage(small_slide[0]).read_region((0, 0), (8, 8), device="tpu")
