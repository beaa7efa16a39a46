"""The same calls on cuCIM and on cucim_like give the same answers (runs where cuCIM is installed, e.g. cucim-cu13,
whose CPU path needs no GPU; skipped elsewhere).

cuCIM runs in a child process: it is a C++ extension, and a crash there must fail this test, not end the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from cucim_like import CuImage

pytestmark = pytest.mark.skipif(find_spec("cucim") is None, reason="cuCIM is not installed")

# (location, size, level) as a cuCIM user writes them; some reach past the edges (fill)
REGIONS = [((0, 0), (256, 256), 0), ((123, 457), (300, 200), 0), ((-40, -30), (100, 80), 0),
           ((900, 700), (200, 200), 0), ((256, 128), (200, 150), 1), ((0, 0), (64, 48), 2), ((5000, 5000), (8, 8), 0)]
BATCH = [(0, 0), (256, 256), (512, 0), (-10, 700)]

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from cucim import CuImage
    path, out = sys.argv[1], sys.argv[2]
    regions, batch = json.loads(sys.argv[3]), json.loads(sys.argv[4])
    img = CuImage(path)
    desc = {k: getattr(img, k) for k in ("shape", "dims", "ndim", "typestr", "channel_names")}
    desc["resolutions"] = {k: [list(map(float, v)) if isinstance(v, (list, tuple)) else float(v)
                               for v in vals] if isinstance(vals, (list, tuple)) else vals
                           for k, vals in img.resolutions.items()}
    desc["associated_images"] = sorted(img.associated_images)
    desc["size_xy"] = img.size("XY")
    arrays = {f"r{i}": np.asarray(img.read_region(tuple(loc), tuple(size), level))
              for i, (loc, size, level) in enumerate(regions)}
    arrays["positional"] = np.asarray(img.read_region((10, 20), (30, 40), 0, 2))
    for j, b in enumerate(img.read_region([tuple(p) for p in batch], (96, 64), 0, 2, 3)):
        arrays[f"b{j}"] = np.asarray(b).copy()  # cuCIM reuses the batch buffer
    np.savez(out, **arrays)
    print(json.dumps(desc))
""")


def _cucim(path: Path, tmp_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    out = tmp_path / "cucim.npz"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out), json.dumps(REGIONS), json.dumps(BATCH)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as arrays:
        return json.loads(proc.stdout.strip().splitlines()[-1]), dict(arrays)


@pytest.fixture(scope="module")
def jpeg_pyramid(tmp_path_factory) -> Path:
    """A 1200 x 1000 RGB pyramid of 3 levels (128² JPEG tiles, reduced-resolution IFDs), as scanners write."""
    import tifffile

    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (75, 63, 3), dtype=np.uint8)
    base = np.kron(small, np.ones((16, 16, 1), np.uint8))[:1000, :1000]  # blocky, so JPEG keeps it
    base = np.concatenate([base, base[:, :200]], axis=1)
    path = tmp_path_factory.mktemp("parity") / "pyramid.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(128, 128), compression="jpeg", photometric="rgb")
        for k in (2, 4):
            tw.write(np.ascontiguousarray(base[::k, ::k]), tile=(128, 128), compression="jpeg", photometric="rgb",
                     subfiletype=1)
    return path


def test_same_description_and_pixels_as_cucim(jpeg_pyramid, tmp_path):
    desc, theirs = _cucim(jpeg_pyramid, tmp_path)
    img = CuImage(jpeg_pyramid)
    for key in ("shape", "dims", "ndim", "typestr", "channel_names"):
        assert getattr(img, key) == desc[key], key
    ours_res = {k: [list(map(float, v)) if isinstance(v, (list, tuple)) else float(v) for v in vals]
                if isinstance(vals, (list, tuple)) else vals for k, vals in img.resolutions.items()}
    assert ours_res == desc["resolutions"]
    assert sorted(img.associated_images) == desc["associated_images"]
    assert img.size("XY") == desc["size_xy"]
    for i, (loc, size, level) in enumerate(REGIONS):
        np.testing.assert_array_equal(img.read_region(loc, size, level), theirs[f"r{i}"], err_msg=str(REGIONS[i]))
    np.testing.assert_array_equal(img.read_region((10, 20), (30, 40), 0, 2), theirs["positional"])
    batches = list(img.read_region(BATCH, (96, 64), 0, 2, 3))
    assert len(batches) == sum(k.startswith("b") for k in theirs)
    for j, b in enumerate(batches):
        np.testing.assert_array_equal(b, theirs[f"b{j}"])
