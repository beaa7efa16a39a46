"""The ``cucim-like`` command line: info and read on a slide and on a DICOM volume, typed errors as exit 1, the
progress bar, and the demo."""

from __future__ import annotations

import io
import json
import re
import sys
import threading

import imagecodecs
import numpy as np
import pytest
import tifffile

from cucim_like import CuImage, cli
from tests.formats import dicom_fixtures as dfx
from tests.formats import tiff_fixtures as tfx


def test_info_and_read_a_dicom_volume(tmp_path, capsys):
    fx = dfx.write_volume_series(tmp_path / "ct", shape=(4, 20, 16))
    assert cli.main(["info", str(tmp_path / "ct")]) == 0
    text = capsys.readouterr().out
    assert "dicom (dicom-volume)" in text and "[4, 20, 16] ZYX" in text
    assert cli.main(["info", "--json", str(tmp_path / "ct")]) == 0
    assert json.loads(capsys.readouterr().out)["cucim"]["dims"] == "ZYX"
    out = tmp_path / "part.npy"
    assert cli.main(["read", str(tmp_path / "ct"), "--location", "3", "2", "1", "--size", "5", "6", "2",
                     "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), fx.volume[1:3, 2:8, 3:8])
    whole = tmp_path / "whole.npy"
    assert cli.main(["read", str(tmp_path / "ct"), "-o", str(whole)]) == 0
    np.testing.assert_array_equal(np.load(whole), fx.volume)


def test_read_errors_are_reported_not_raised(tmp_path, capsys):
    dfx.write_volume_series(tmp_path / "ct", shape=(3, 8, 8))
    code = cli.main(["read", str(tmp_path / "ct"), "--location", "0", "0", "--size", "4", "4",
                     "-o", str(tmp_path / "x.npy")])
    assert code == 1
    assert "InvalidArgumentError" in capsys.readouterr().err
    assert cli.main(["read", str(tmp_path / "ct"), "--location", "0", "0", "0", "-o", str(tmp_path / "x.npy")]) == 2


# -- an SVS-like slide: info, read to PNG, the progress bar -------------------------------------------------------
SVS_TILE = (32, 64)  # (rows, columns): non-square, so swapped axes show in the tile and grid lines


@pytest.fixture(scope="module")
def svs_slide(tmp_path_factory):
    """An Aperio-layout JPEG TIFF written by tests/formats/tiff_fixtures.py: level 0 300 x 200, level 1 150 x 100,
    64 x 32 tiles, MPP 0.25, thumbnail, label and macro; with tifffile's decode of each level."""
    if not tfx.codec_available("JPEG8") or not tfx.codec_available("LZW"):
        pytest.skip("imagecodecs was built without JPEG8 or LZW")
    base = tfx.make_image(200, 300, 3, np.uint8, seed=11)
    path = tmp_path_factory.mktemp("svs") / "slide.svs"
    tfx.write_svs(path, tfx.pyramid(base, (1, 2)), SVS_TILE, thumbnail=tfx.make_image(40, 60, 3, np.uint8, seed=12),
                  label=tfx.make_image(30, 40, 3, np.uint8, seed=13),
                  macro=tfx.make_image(30, 90, 3, np.uint8, seed=14), mpp=0.25)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_svs and tf.pages[0].compression == 7 and tf.pages[0].photometric == 2  # JPEG, RGB
    return path, tfx.tifffile_levels(path)


def test_info_prints_tile_grid_codec_vendor_spacing_and_associated_images(svs_slide, capsys):
    path, _ = svs_slide
    assert cli.main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "format:      tiff (aperio)" in lines
    assert "shape:       [200, 300, 3] YXC uint8" in lines
    assert "spacing:     0.25 micrometer, 0.25 micrometer, 1 color" in lines
    assert "channels:    R, G, B" in lines
    # grids: ceil(300 / 64) x ceil(200 / 32) = 5 x 7 and ceil(150 / 64) x ceil(100 / 32) = 3 x 4; the tiles hold
    # RGB samples (no YCbCr transform), as Aperio writes them
    assert "  0: 300 x 200  downsample 1  tiles 64x32 grid 5x7  codec jpeg (RGB)" in lines
    assert "  1: 150 x 100  downsample 2  tiles 64x32 grid 3x4  codec jpeg (RGB)" in lines
    assert "associated:  label, macro, thumbnail" in lines
    assert cli.main(["info", "--json", str(path)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["cucim"]["vendor"] == "aperio" and meta["aperio"]["MPP"] == "0.25"
    assert meta["cucim"]["spacing"] == [0.25, 0.25, 1.0]
    assert meta["cucim"]["resolutions"]["level_tile_sizes"] == [[64, 32], [64, 32]]


@pytest.mark.parametrize("location,size,level", [((37, 21), (90, 70), 0), ((40, 20), (50, 30), 1),
                                                 ((250, 150), (80, 60), 0)])
def test_read_to_png_equals_read_region(svs_slide, tmp_path, capsys, location, size, level):
    path, refs = svs_slide
    out = tmp_path / "region.png"
    assert cli.main(["read", str(path), "--location", *map(str, location), "--size", *map(str, size),
                     "--level", str(level), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{size[1]} x {size[0]} x 3 uint8 in ")
    png = imagecodecs.png_decode(out.read_bytes())
    want = CuImage(path).read_region(location, size, level=level)
    assert png.dtype == np.uint8 and png.shape == (size[1], size[0], 3)
    np.testing.assert_array_equal(png, want)
    # and close to tifffile's decode of the same pixels (the region at (250, 150) runs past the slide: white)
    x, y = location[0] >> level, location[1] >> level
    tfx.assert_close(png, tfx.expected_region(refs[level], x, y, size[0], size[1], 255), 1, "png")


def test_read_whole_level_to_png(svs_slide, tmp_path):
    path, refs = svs_slide
    out = tmp_path / "level1.png"
    assert cli.main(["read", str(path), "--level", "1", "-o", str(out)]) == 0
    png = imagecodecs.png_decode(out.read_bytes())
    np.testing.assert_array_equal(png, CuImage(path).read_region(level=1))
    tfx.assert_close(png, refs[1], 1, "png of level 1")


def test_read_one_volume_slice_to_png(tmp_path):
    fx = dfx.write_volume_series(tmp_path / "ct", shape=(4, 20, 16), dtype="uint16")
    out = tmp_path / "slice.png"
    assert cli.main(["read", str(tmp_path / "ct"), "--location", "0", "0", "2", "--size", "16", "20", "1",
                     "-o", str(out)]) == 0
    png = imagecodecs.png_decode(out.read_bytes())
    np.testing.assert_array_equal(png, fx.volume[2])
    with pytest.raises(SystemExit, match="one slice"):  # several slices do not fit a PNG
        cli.main(["read", str(tmp_path / "ct"), "--location", "0", "0", "0", "--size", "16", "20", "3",
                  "-o", str(tmp_path / "three.png")])


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal (the progress bar only draws on one)."""

    def isatty(self) -> bool:
        return True


def test_whole_level_read_draws_a_progress_bar_on_a_terminal(svs_slide, tmp_path, monkeypatch):
    path, _ = svs_slide
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    out = tmp_path / "whole.npy"
    assert cli.main(["read", str(path), "--level", "1", "--workers", "2", "-o", str(out)]) == 0
    text = term.getvalue()
    # redrawn in place (carriage returns), ended by a newline; the last state is the full bar at 3 x 4 tiles
    assert text.startswith("\rlevel 1 [") and text.endswith("\n")
    frames = text[1:-1].split("\r")
    assert re.fullmatch(r"level 1 \[#{30}\] 12/12 tiles +\d+\.\ds", frames[-1])
    counts = [int(re.search(r"\] (\d+)/12 tiles", f).group(1)) for f in frames]
    assert counts == sorted(counts) and 1 <= counts[0] <= 12
    np.testing.assert_array_equal(np.load(out), CuImage(path).read_region(level=1))


def test_progress_bar_is_silent_off_a_terminal_and_for_regions(svs_slide, tmp_path, capsys, monkeypatch):
    path, _ = svs_slide
    assert cli.main(["read", str(path), "-o", str(tmp_path / "a.npy")]) == 0  # capsys: not a terminal
    assert "tiles" not in capsys.readouterr().err
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert cli.main(["read", str(path), "--location", "0", "0", "--size", "100", "100",
                     "-o", str(tmp_path / "b.npy")]) == 0
    assert term.getvalue() == ""  # a region read has no bar


def test_progress_bar_counts_from_threads_and_throttles_redraws(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = cli.ProgressBar(4000, "x", enabled=True, width=10)
    threads = [threading.Thread(target=lambda: [bar(1) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.done == 4000
    frames = term.getvalue()[1:-1].split("\r")
    assert frames[-1].startswith("x [##########] 4000/4000 tiles")
    assert len(frames) < 100  # at most one redraw per 0.1 s, plus the final one; not one per call


# -- demo ---------------------------------------------------------------------------------------------------------
def test_demo_on_a_small_sample_in_a_given_cache_folder(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CUCIM_LIKE_CACHE", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    argv = ["demo", "--width", "512", "--height", "384", "--patches", "3", "--patch", "64", "--workers", "2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    sample = cache / "sample-512x384-0.svs"
    assert sample.is_file() and not (tmp_path / "xdg").exists()
    assert f"sample slide: {sample} (" in out
    assert "aperio [384, 512, 3] levels ((512, 384), (128, 96), (32, 24)) MPP 0.499 µm, associated " \
           "['label', 'macro', 'thumbnail']" in out
    assert re.search(r"whole level 0: 512 x 384 in \d+\.\d\d s", out)
    assert re.search(r"3 random 64² patches: \d+\.\d\d s", out)
    # the file is an Aperio SVS of the synthetic tissue, as tifffile reads it
    with tifffile.TiffFile(sample) as tf:
        assert tf.is_svs and [s.name for s in tf.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        level0 = tf.series[0].levels[0].asarray()
        assert tf.pages[0].tilewidth == 256 and tf.pages[0].compression == 7
    from cucim_like.sample import tissue

    # JPEG quality 90 of noisy tissue: about 3.8 on average (another seed: about 37)
    assert np.abs(level0.astype(np.int16) - tissue(512, 384, seed=0)).mean() < 8
    # a second run takes the cached sample instead of writing it again
    stamp = sample.stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert sample.stat().st_mtime_ns == stamp and f"sample slide: {sample}" in capsys.readouterr().out
