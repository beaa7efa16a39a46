"""Generate a large Aperio-SVS-like pyramidal slide for the benchmarks.

Level 0 is a mosaic of random crops, rotations and flips of the real Aperio sample
(CMU-1-Small-Region.svs) when it is present, of a synthetic H&E-like texture otherwise, with white
background areas around irregular tissue blobs. Levels at downsample 4 and 16 are block means of level 0.
Tiles are 256x256 JPEG at quality 90, written by tifffile as a BigTIFF whose ImageDescription makes
tifffile, OpenSlide, cuCIM and cucim_like detect it as an Aperio SVS.

Usage: ``python benchmarks/make_slide.py [--out PATH] [--width W --height H] [--force]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "large.svs"
REAL_SLIDE = Path("/work/shared/data/tiff/CMU-1-Small-Region.svs")
TILE = 256
QUALITY = 90
BLOCK = 1024  # side of one mosaic piece at level 0
MASK_CELL = 16  # level-0 pixels per cell of the tissue mask
BACKGROUND = np.array([238, 236, 240], dtype=np.int16)  # near-white glass, as scanned


def load_texture(source: Path | None, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The texture the mosaic is cut from: the real slide's level 0, or a synthetic one when it is missing."""
    if source is not None and source.is_file():
        import tifffile

        arr = tifffile.imread(source, key=0)
        if arr.ndim == 3 and arr.shape[2] >= 3 and min(arr.shape[:2]) >= BLOCK:
            return np.ascontiguousarray(arr[..., :3]), str(source)
    return synthetic_texture(rng), "synthetic"


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (size, size): coarse random values, upsampled and box-blurred."""
    coarse = rng.random((size // cell + 2, size // cell + 2), dtype=np.float32)
    fine = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)
    for axis in (0, 1):
        c = np.cumsum(fine, axis=axis, dtype=np.float32)
        fine = (np.take(c, range(cell, c.shape[axis]), axis=axis)
                - np.take(c, range(c.shape[axis] - cell), axis=axis)) / cell
    out = fine[:size, :size]
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def synthetic_texture(rng: np.random.Generator, size: int = 2048) -> np.ndarray:
    """An H&E-like RGB texture: pink stroma of varying density, purple nuclei, fine grain."""
    density = _smooth_noise(rng, size, 64)[..., None]
    detail = _smooth_noise(rng, size, 8)[..., None]
    stroma = np.array([236, 170, 205], np.float32) * (1 - density) + np.array([200, 110, 170], np.float32) * density
    img = stroma * (0.85 + 0.15 * detail)
    yy, xx = np.mgrid[-7:8, -7:8]
    for _ in range(size * size // 700):
        r = int(rng.integers(3, 7))
        cy, cx = (int(v) for v in rng.integers(8, size - 8, 2))
        disk = (yy**2 + xx**2) <= r * r
        patch = img[cy - 7 : cy + 8, cx - 7 : cx + 8]
        patch[disk] = patch[disk] * 0.3 + np.array([80, 50, 130], np.float32) * 0.7
    img += rng.normal(0.0, 6.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def tissue_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A boolean mask at MASK_CELL resolution: a few irregular tissue blobs, the rest glass (about 40%)."""
    mh, mw = -(-height // MASK_CELL), -(-width // MASK_CELL)
    yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
    field = np.zeros((mh, mw), np.float32)
    for _ in range(7):
        cy, cx = rng.uniform(0.15, 0.85) * mh, rng.uniform(0.15, 0.85) * mw
        ry, rx = rng.uniform(0.15, 0.35) * mh, rng.uniform(0.15, 0.35) * mw
        field = np.maximum(field, 1.0 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2)
    side = max(mh, mw)
    wobble = _smooth_noise(rng, side + 64, 32)[:mh, :mw]
    return (field + 0.6 * (wobble - 0.5)) > 0.05


def _orientations(texture: np.ndarray) -> list[np.ndarray]:
    """The texture's 8 rotations/flips, each C-contiguous so mosaic pieces are copied row by row."""
    out = []
    for k in range(4):
        rot = np.rot90(texture, k)
        out += [np.ascontiguousarray(rot), np.ascontiguousarray(rot[:, ::-1])]
    return out


def build_level0(texture: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Level 0 (height, width, 3) uint8: mosaic pieces of the texture where the mask says tissue, glass elsewhere."""
    out = np.empty((height, width, 3), np.uint8)
    variants = _orientations(texture)
    mask = tissue_mask(rng, height, width)
    glass = np.clip(BACKGROUND + rng.normal(0.0, 1.2, (BLOCK, BLOCK, 3)), 0, 255).astype(np.uint8)
    cells = BLOCK // MASK_CELL
    for y in range(0, height, BLOCK):
        for x in range(0, width, BLOCK):
            h, w = min(BLOCK, height - y), min(BLOCK, width - x)
            dst = out[y : y + h, x : x + w]
            cell = mask[y // MASK_CELL : y // MASK_CELL + cells, x // MASK_CELL : x // MASK_CELL + cells]
            if not cell.any():
                dst[...] = glass[:h, :w]
                continue
            tex = variants[int(rng.integers(0, len(variants)))]
            oy, ox = int(rng.integers(0, tex.shape[0] - h + 1)), int(rng.integers(0, tex.shape[1] - w + 1))
            dst[...] = tex[oy : oy + h, ox : ox + w]
            if not cell.all():
                glass_px = np.repeat(np.repeat(~cell, MASK_CELL, axis=0)[:h], 3 * MASK_CELL, axis=1)[:, : 3 * w]
                np.copyto(dst.reshape(h, 3 * w), glass[:h, :w].reshape(h, 3 * w), where=glass_px)
    return out


def downsample(arr: np.ndarray, factor: int, band_rows: int = 32) -> np.ndarray:
    """Block mean by ``factor`` (edges cropped to whole blocks), computed in bands of output rows."""
    oh, ow, c = arr.shape[0] // factor, arr.shape[1] // factor, arr.shape[2]
    out = np.empty((oh, ow, c), np.uint8)
    for r in range(0, oh, band_rows):
        n = min(band_rows, oh - r)
        rows = arr[r * factor : (r + n) * factor, : ow * factor].reshape(n, factor, ow * factor * c)
        acc = rows[:, 0].astype(np.uint16)
        for i in range(1, factor):
            acc += rows[:, i]
        acc = acc.reshape(n, ow, factor, c)
        s = acc[:, :, 0].copy()
        for i in range(1, factor):
            s += acc[:, :, i]
        s += factor * factor // 2
        s //= factor * factor
        out[r : r + n] = s
    return out


def aperio_description(width: int, height: int, extra: str) -> str:
    """An Aperio-style ImageDescription: header line, then ``key = value`` pairs joined by ``|``."""
    return (
        f"Aperio Image Library v12.0.16 \r\n{width}x{height} {extra}|MPP = 0.499|AppMag = 20|StripeWidth = 2040"
        f"|ScanScope ID = SYNTHETIC|Filename = large|Date = 11/21/26|Time = 00:00:00"
        f"|Generator = cucim_like benchmarks/make_slide.py"
    )


def write_slide(out: Path, width: int, height: int, seed: int = 0, source: Path | None = REAL_SLIDE,
                workers: int | None = None, jpeg_rgb: bool = False) -> dict:
    """Generate and write the slide; returns a summary (sizes, timings, texture source).

    By default tifffile stores the JPEG tiles as YCbCr 4:2:0 (JFIF, photometric YCbCr); ``jpeg_rgb`` stores RGB
    components without subsampling or colour transform (photometric RGB), as Aperio scanners do.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    texture, texture_name = load_texture(source, rng)
    level0 = build_level0(texture, height, width, rng)
    level1 = downsample(level0, 4)
    level2 = downsample(level1, 4)
    thumb = downsample(level2, 2)
    macro = downsample(level2, 2)
    label = np.full((463, 387, 3), 250, np.uint8)
    label[60:120, 40:340] = 20  # a dark bar where the barcode would be
    t_build = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    jpeg = {"compression": "jpeg", "compressionargs": {"level": QUALITY}, "photometric": "rgb",
            "maxworkers": workers, "metadata": None}
    if jpeg_rgb:
        jpeg.update(compressionargs={"level": QUALITY, "outcolorspace": "RGB"}, subsampling=(1, 1))
    t1 = time.perf_counter()
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(level0, tile=(TILE, TILE), description=aperio_description(
            width, height, f"[0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q={QUALITY}"), **jpeg)
        tw.write(thumb, rowsperstrip=16, description=aperio_description(
            width, height, f"-> {thumb.shape[1]}x{thumb.shape[0]} - "), **jpeg)
        for lvl in (level1, level2):
            tw.write(lvl, tile=(TILE, TILE), description=aperio_description(
                width, height, f"({TILE}x{TILE}) -> {lvl.shape[1]}x{lvl.shape[0]} JPEG/RGB Q={QUALITY}"), **jpeg)
        tw.write(label, rowsperstrip=64, compression="lzw", photometric="rgb", subfiletype=1, metadata=None,
                 description=f"Aperio Image Library v12.0.16 \r\nlabel {label.shape[1]}x{label.shape[0]}")
        tw.write(macro, rowsperstrip=16, subfiletype=9, description=(
            f"Aperio Image Library v12.0.16 \r\nmacro {macro.shape[1]}x{macro.shape[0]}"), **jpeg)
    os.replace(tmp, out)
    t_write = time.perf_counter() - t1
    return {
        "path": str(out), "texture": texture_name, "level0": [width, height],
        "levels": [[a.shape[1], a.shape[0]] for a in (level0, level1, level2)],
        "tissue_fraction": round(float(1.0 - np.mean(np.all(level2 > 225, axis=2))), 3),
        "jpeg": "RGB 4:4:4 (Aperio-like)" if jpeg_rgb else "YCbCr 4:2:0 (tifffile default)",
        "file_bytes": out.stat().st_size, "build_s": round(t_build, 2), "write_s": round(t_write, 2),
    }


def ensure_slide(out: Path = DEFAULT_OUT, width: int = 20480, height: int = 26112, force: bool = False) -> Path:
    """Write the slide unless a file is already there (or ``force``); returns its path."""
    if out.is_file() and not force:
        return out
    write_slide(out, width, height)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path (default: %(default)s)")
    p.add_argument("--width", type=int, default=20480, help="level-0 width (default: %(default)s)")
    p.add_argument("--height", type=int, default=26112, help="level-0 height (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--source", type=Path, default=REAL_SLIDE, help="real slide to take texture from")
    p.add_argument("--force", action="store_true", help="regenerate even when the file exists")
    p.add_argument("--jpeg-rgb", action="store_true",
                   help="RGB JPEG tiles without subsampling, as Aperio writes them (default: YCbCr 4:2:0)")
    a = p.parse_args(argv)
    if min(a.width, a.height) < 16 * TILE:
        p.error(f"width and height must be at least {16 * TILE}")
    if a.out.is_file() and not a.force:
        print(f"{a.out} exists; not regenerating (use --force)")
        return 0
    t0 = time.perf_counter()
    info = write_slide(a.out, a.width, a.height, a.seed, a.source, jpeg_rgb=a.jpeg_rgb)
    info["total_s"] = round(time.perf_counter() - t0, 2)
    for k, v in info.items():
        print(f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
