"""The native tile pool (executors.native): reads through it equal imagecodecs decoding each tile whole, from
any number of threads, after fork, with damaged tiles raising the Python path's typed errors.

The fixture is a JPEG TIFF of 64 x 96 tiles (4:2:0, complete streams) whose reference is every tile decoded
whole by imagecodecs, independently of cucim_like.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import CuImage
from cucim_like.executors import native
from tests.formats import tiff_fixtures as tfx

pytestmark = pytest.mark.skipif(native.tile_pool() is None, reason="the native tile pool is not built here")

H, W, TILE = 400, 520, (64, 96)


def _write(path: Path, streams: list[bytes]) -> None:
    tifffile.imwrite(path, iter(streams), shape=(H, W, 3), dtype=np.uint8, tile=TILE, compression=7,
                     photometric="rgb")


def _streams(seed: int = 3) -> list[bytes]:
    arr = tfx.make_image(H, W, 3, "uint8", seed=seed)
    return [bytes(imagecodecs.jpeg8_encode(t, level=88, subsampling=(2, 2))) for t in tfx.iter_tiles(arr, *TILE)]


def _reference(streams: list[bytes]) -> np.ndarray:
    cols = -(-W // TILE[1])
    ref = np.zeros((-(-H // TILE[0]) * TILE[0], cols * TILE[1], 3), np.uint8)
    for i, s in enumerate(streams):
        ty, tx = divmod(i, cols)
        ref[ty * TILE[0] : (ty + 1) * TILE[0], tx * TILE[1] : (tx + 1) * TILE[1]] = imagecodecs.jpeg8_decode(s)
    return ref[:H, :W]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    streams = _streams()
    path = tmp_path_factory.mktemp("native") / "t.tif"
    _write(path, streams)
    return path, _reference(streams)


class _Count:
    """Jobs the native pool finished (status 0), over every call."""

    def __init__(self, monkeypatch) -> None:
        self.done = 0
        run = native.TilePool.run

        def counting(pool, jobs, workers):
            left = run(pool, jobs, workers)
            self.done += int((jobs["status"] == 0).sum())
            return left

        monkeypatch.setattr(native.TilePool, "run", counting)


def _regions(n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w, h = rng.randrange(1, 300), rng.randrange(1, 200)
        out.append((rng.randrange(-30, W - 10), rng.randrange(-30, H - 10), w, h))
    return out


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("cache", ["no_cache", "per_process"])
def test_regions_equal_whole_tile_decodes(slide, monkeypatch, workers, cache):
    path, ref = slide
    count = _Count(monkeypatch)
    CuImage.cache(cache, memory_capacity=1) if cache != "no_cache" else CuImage.cache(cache)
    try:
        img = CuImage(path)
        for x, y, w, h in _regions(30, workers):
            got = img.read_region((x, y), (w, h), num_workers=workers)
            tfx.assert_close(got, tfx.expected_region(ref, x, y, w, h, 0), 0, f"{(x, y, w, h)} x{workers}")
    finally:
        CuImage.cache("no_cache")
    assert count.done > 30, "the reads did not go through the native pool"


def test_reads_from_many_threads_equal_serial_reads(slide):
    """Concurrent callers: one owns the helpers, the others decode their tiles alone; pixels are the same."""
    path, ref = slide
    CuImage.cache("no_cache")
    img = CuImage(path)
    regions = _regions(40, 99)
    errors: list[BaseException] = []

    def reader(k: int) -> None:
        try:
            for i in range(k, len(regions) * 3, 6):
                x, y, w, h = regions[i % len(regions)]
                got = img.read_region((x, y), (w, h), num_workers=2)
                np.testing.assert_array_equal(got, tfx.expected_region(ref, x, y, w, h, 0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert not errors, errors[0]


def _child_read(path: str, region: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = region
    return CuImage(path).read_region((x, y), (w, h), num_workers=2)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_pool_works_in_a_forked_child(slide):
    """Helper threads of the parent do not exist in a fork: the child starts its own and reads correctly."""
    path, ref = slide
    CuImage.cache("no_cache")
    img = CuImage(path)
    region = (50, 30, 300, 200)
    img.read_region(region[:2], region[2:], num_workers=2)  # helpers running in the parent
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_child_read, [(str(path), region), (str(path), (0, 0, W, H))], chunksize=1)
    np.testing.assert_array_equal(results[0], tfx.expected_region(ref, *region, 0))
    np.testing.assert_array_equal(results[1], ref)


def _outcome(img: CuImage, workers: int) -> tuple[str, object]:
    try:
        return "pixels", img.read_region((150, 70), (120, 60), num_workers=workers)  # tiles (1, 1), (1, 2)
    except cucim_like.DecodeError as exc:
        return "error", (exc.tile, exc.path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no-tables"])
def test_a_damaged_tile_gets_the_python_paths_outcome(tmp_path, monkeypatch, damage):
    """A stream the native pool fails on is decoded again by the Python path: the typed error naming the tile,
    or, where libjpeg recovers a stream (a truncated one), the Python path's pixels."""
    streams = _streams(seed=5)
    bad = 1 * (-(-W // TILE[1])) + 2  # tile (1, 2)
    if damage == "truncated":
        streams[bad] = streams[bad][: len(streams[bad]) // 3]
    elif damage == "garbage":
        streams[bad] = streams[bad][:2] + bytes(random.Random(1).randrange(256) for _ in range(600))
    else:
        streams[bad] = tfx.split_jpeg(streams[bad])[1]
    _write(tmp_path / "bad.tif", streams)
    CuImage.cache("no_cache")
    img = CuImage(tmp_path / "bad.tif")
    for workers in (1, 2):
        got = _outcome(img, workers)
        with monkeypatch.context() as m:
            m.setattr(native, "_state", [None])
            want = _outcome(CuImage(tmp_path / "bad.tif"), workers)
        assert got[0] == want[0]
        if got[0] == "error":
            assert got[1] == ((1, 2), str(tmp_path / "bad.tif"))
            assert want[1] == got[1]
        else:
            np.testing.assert_array_equal(got[1], want[1])
        if damage != "truncated":
            assert got[0] == "error"


def test_turned_off_by_environment():
    code = "from cucim_like.executors import native; print(native.tile_pool() is None)"
    env = {**os.environ, "CUCIM_LIKE_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


def test_crop_rule_is_the_python_paths(slide, monkeypatch):
    """The pool decodes a part costing about a whole decode whole, and a corner cropped, by the cost numbers
    it is given from codecs/jpeg.py (the Python path's rule, checked in tests/codecs/test_jpeg_crop.py)."""
    path, ref = slide
    seen: list[tuple[int, int]] = []
    run = native.TilePool.run

    def recording(pool, jobs, workers):
        left = run(pool, jobs, workers)
        seen.extend(zip(jobs["status"].tolist(), jobs["cropped"].tolist(), strict=True))
        return left

    monkeypatch.setattr(native.TilePool, "run", recording)
    CuImage.cache("no_cache")
    img = CuImage(path)
    for (x, y, w, h), cropped in (((0, 0, 96, 63), 0), ((50, 40, 10, 24), 1)):  # all rows but one; a corner
        seen.clear()
        np.testing.assert_array_equal(img.read_region((x, y), (w, h)), ref[y : y + h, x : x + w])
        assert seen == [(0, cropped)]
