"""A realistic synthetic slide for demos and tests: H&E-like tissue on glass, Aperio SVS layout.

Level 0 has 256² JPEG tiles (quality 90), with 4x and 16x levels, a thumbnail, a label and a macro image, and
Aperio metadata (MPP, AppMag). Generated from a seed, so every machine gets the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_SIZE = (8192, 6144)  # (width, height)
_TILE = 256


def cache_dir() -> Path:
    """Where generated samples live: $CUCIM_LIKE_CACHE, else $XDG_CACHE_HOME/cucim_like, else ~/.cache/..."""
    env = os.environ.get("CUCIM_LIKE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cucim_like"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Float32 noise in [0, 1] of ``shape`` that varies over about ``cell`` pixels (bilinear upsampling)."""
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(shape[0], dtype=np.float32) / cell
    xs = np.arange(shape[1], dtype=np.float32) / cell
    y0, x0 = ys.astype(np.int32), xs.astype(np.int32)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # separable: along x on the coarse rows, then y
    out = rows[y0]
    out *= 1 - fy
    out += rows[y0 + 1] * fy
    return out


def tissue(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 array (height, width, 3): pink stroma, purple nuclei, white glass around tissue islands."""
    rng = np.random.default_rng(seed)
    out = np.empty((height, width, 3), np.uint8)
    mask_field = _smooth_noise(rng, (height, width), max(64, min(width, height) // 6))
    # Colours come from a lookup table indexed by (tissue amount, nucleus?, texture): one gather per pixel.
    glass = np.array([242, 240, 244], np.float32)
    stroma = np.array([226, 150, 190], np.float32)
    nucleus = np.array([90, 60, 150], np.float32)
    amount = (np.arange(16, dtype=np.float32) / 15)[:, None, None, None]
    texture = (np.arange(32, dtype=np.float32) / 31 - 0.5)[None, None, :, None]
    colour = np.stack(
        [np.broadcast_to(stroma + texture[0, 0] * np.array([30, 60, 40], np.float32), (32, 3)),
         np.broadcast_to(nucleus, (32, 3))]
    )[None]
    lut = np.clip(glass * (1 - amount) + colour * amount, 14, 241).astype(np.uint8).reshape(-1, 3)
    band = 512  # rows at a time keeps memory near the output's size
    for y in range(0, height, band):
        h = min(band, height - y)
        tq = (_smooth_noise(rng, (h, width), 24) * 31.99).astype(np.uint16)
        nuclei = (_smooth_noise(rng, (h, width), 5) > 0.82).astype(np.uint16)
        iq = (np.clip((mask_field[y : y + h] - 0.45) * 8, 0, 1) * 15.99).astype(np.uint16)
        pixel = lut[(iq * 2 + nuclei) * 32 + tq].astype(np.int16)
        pixel += rng.integers(-12, 13, (h, width, 1), dtype=np.int16)
        out[y : y + h] = pixel
    return out


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    view = image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return view.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8)


def write_sample_slide(path: str | os.PathLike, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                       seed: int = 0, workers: int | None = None) -> Path:
    """Write the synthetic slide to ``path`` (Aperio SVS layout) and return the path."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    level0 = tissue(width, height, seed)
    levels = [level0, _downsample(level0, 4), _downsample(level0, 16)]
    thumb = _downsample(levels[2], max(1, levels[2].shape[1] // 768))
    rng = np.random.default_rng(seed + 1)
    label = np.full((463, 387, 3), 250, np.uint8)
    label[40:120, 30:357] = (rng.random((80, 327, 1)) > 0.5) * 255  # a barcode-like patch
    macro = np.full((431, 1280, 3), 230, np.uint8)
    macro[:, 300:1280] = _downsample(level0, max(1, width // 980))[:431, :980] if width >= 980 else 200
    mpp, mag = 0.499, 20
    header = (f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({_TILE}x{_TILE}) "
              "JPEG/RGB Q=90")
    fields = f"|AppMag = {mag}|MPP = {mpp}|ScanScope ID = SYNTHETIC|Filename = sample|Title = cucim_like sample"
    tmp = path.with_suffix(path.suffix + ".part")
    jpeg = {"compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb"}
    with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        tw.write(levels[0], tile=(_TILE, _TILE), description=header + fields, maxworkers=workers, metadata=None,
                 **jpeg)
        tw.write(thumb, description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> "
                 f"{thumb.shape[1]}x{thumb.shape[0]} - " + fields, rowsperstrip=16, metadata=None, **jpeg)
        for lvl in levels[1:]:
            tw.write(lvl, tile=(_TILE, _TILE), description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} "
                     f"-> {lvl.shape[1]}x{lvl.shape[0]} - " + fields, maxworkers=workers, metadata=None, **jpeg)
        tw.write(label, description="Aperio Image Library v12.0.15 \r\nlabel 387x463", subfiletype=1,
                 compression="lzw", photometric="rgb", rowsperstrip=64, metadata=None)
        tw.write(macro, description="Aperio Image Library v12.0.15 \r\nmacro 1280x431", subfiletype=9,
                 rowsperstrip=32, metadata=None, **jpeg)
    os.replace(tmp, path)
    return path


def sample_slide(width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1], seed: int = 0) -> Path:
    """Path of the cached sample slide, generated on first use."""
    path = cache_dir() / f"sample-{width}x{height}-{seed}.svs"
    if not path.exists():
        write_sample_slide(path, width, height, seed)
    return path
