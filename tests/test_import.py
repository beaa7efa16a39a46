"""``import cucim_like`` stays light: parsers, codecs, thread pools and GPU packages load on first use."""

from __future__ import annotations

import subprocess
import sys


def test_import_loads_nothing_heavy():
    heavy = ("tifffile", "imagecodecs", "simplejpeg", "concurrent.futures", "dask", "cupy", "kvikio", "nvidia",
             "pydicom", "fpzip", "compressed_segmentation", "mmh3", "cucim_like.formats.precomputed",
             "cucim_like.codecs.isolation")
    code = f"import sys, cucim_like; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} " \
           f"or m in {heavy!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
