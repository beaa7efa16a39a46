"""``import cucim_like`` stays light: parsers, codecs, thread pools and GPU packages load on first use."""

from __future__ import annotations

import subprocess
import sys


def test_import_loads_nothing_heavy():
    heavy = ("tifffile", "imagecodecs", "simplejpeg", "concurrent.futures", "dask", "cupy", "kvikio", "nvidia",
             "pydicom", "fpzip", "compressed_segmentation", "mmh3", "cucim_like.formats.precomputed",
             "cucim_like.codecs.isolation", "torch", "cucim_like.torch_data")
    code = f"import sys, cucim_like; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} " \
           f"or m in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gpu_modules_import_without_gpu_packages():
    """Every module of cucim_like.cuda imports with cupy, kvikio and nvImageCodec made unimportable, and
    device="cuda" then names what is missing."""
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('cupy', 'cupy_backends', 'kvikio', 'nvidia'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] in ('cupy', 'kvikio', 'nvidia') else real(n, *a)
for m in ('backends', 'cache', 'executor', 'io', 'kernels', 'nvdecode', 'placement'):
    importlib.import_module('cucim_like.cuda.' + m)
import numpy as np, tifffile, cucim_like
tifffile.imwrite(sys.argv[1], np.zeros((64, 64, 3), np.uint8), tile=(16, 16))
try:
    cucim_like.CuImage(sys.argv[1]).read_region(device='cuda')
except cucim_like.DeviceUnavailableError as exc:
    print(exc)
"""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code, str(Path(tmp) / "a.tif")], capture_output=True, text=True,
                             check=True).stdout
    assert "CuPy (pip install" in out and "nvImageCodec (pip install" in out and "kvikio (pip install" in out
