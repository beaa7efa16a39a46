"""Shared test fixtures: where the real test files are, and a cache reset between tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cucim_like

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CUCIM_LIKE_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Path of a real test file under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real test file {relative} not available (../shared/data absent)")
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test starts with the default per-process cache, empty."""
    cucim_like.CuImage.cache("per_process", memory_capacity=64)
    yield
    cucim_like.CuImage.cache("per_process", memory_capacity=64)


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory):
    """A 2-level tiled deflate RGB TIFF (level 0: 500 x 700, 64² tiles) and its pixels per level."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)
    half = base[::2, ::2].copy()
    path = tmp_path_factory.mktemp("slide") / "small.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(64, 64), compression="deflate", photometric="rgb")
        tw.write(half, tile=(64, 64), compression="deflate", photometric="rgb")
    return path, [base, half]
