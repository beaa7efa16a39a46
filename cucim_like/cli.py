"""``cucim-like``: info, read and demo commands."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .cuimage import CuImage
from .errors import CucimLikeError


class ProgressBar:
    """A thread-safe text progress bar on stderr, fed with tile counts; silent when stderr is not a terminal
    unless forced."""

    def __init__(self, total: int, label: str, enabled: bool | None = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.label = label
        self.width = width
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._last = 0.0
        self._start = time.perf_counter()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
                self._last = now
                frac = min(1.0, self.done / self.total)
                bar = "#" * int(frac * self.width)
                sys.stderr.write(f"\r{self.label} [{bar:<{self.width}}] {self.done}/{self.total} tiles "
                                 f"{now - self._start:5.1f}s")
                sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _level_tiles(img: CuImage, level: int) -> int:
    lv = img.levels[level]
    return int(np.prod(lv.grid))


def cmd_info(ns: argparse.Namespace) -> int:
    with CuImage(ns.path) as img:
        if ns.json:
            print(json.dumps(img.metadata, indent=2, default=str))
            return 0
        print(f"path:        {img.path}")
        print(f"format:      {img.metadata['cucim']['format']} ({img.vendor})")
        print(f"shape:       {img.shape} {img.dims} {img.dtype}")
        spacing = img.spacing()
        units = img.spacing_units()
        print("spacing:     " + ", ".join(f"{s:g} {u}".strip() for s, u in zip(spacing, units, strict=True)))
        print(f"channels:    {', '.join(img.channel_names)}")
        print("levels:")
        for lv in img.levels:
            planes, _gz, gy, gx = lv.grid
            codec = lv.codec.name + (f" ({lv.codec.colorspace})" if lv.codec.colorspace else "")
            if lv.codec.predictor != 1:
                codec += f" predictor {lv.codec.predictor}"
            print(f"  {lv.index}: {lv.width} x {lv.height}  downsample {lv.downsample:g}  "
                  f"tiles {lv.tile_shape[2]}x{lv.tile_shape[1]} grid {gx}x{gy}"
                  + (f"x{planes} planes" if planes > 1 else "") + f"  codec {codec}")
        assoc = sorted(img.associated_images)
        print(f"associated:  {', '.join(assoc) if assoc else 'none'}")
    return 0


def cmd_read(ns: argparse.Namespace) -> int:
    with CuImage(ns.path) as img:
        whole = ns.location is None and ns.size is None
        bar = ProgressBar(_level_tiles(img, ns.level), f"level {ns.level}", enabled=None) if whole else None
        start = time.perf_counter()
        out = img.read_region(ns.location, ns.size, level=ns.level, num_workers=ns.workers, progress=bar)
        elapsed = time.perf_counter() - start
        if bar is not None:
            bar.close()
        volume = img.is_volume
    dest = Path(ns.output)
    if dest.suffix.lower() == ".npy":
        np.save(dest, out)
    elif dest.suffix.lower() == ".png":
        import imagecodecs

        dest.write_bytes(imagecodecs.png_encode(_png_image(out, volume)))
    else:
        raise SystemExit(f"cucim-like read: output must end in .png or .npy, got {dest.name!r}")
    print(f"{' x '.join(str(n) for n in out.shape)} {out.dtype} in {elapsed * 1000:.1f} ms -> {dest}")
    return 0


def _png_image(out: np.ndarray, volume: bool) -> np.ndarray:
    """The (h, w) or (h, w, 3|4) image a PNG holds, from a read of a 2-D image (h, w[, c]) or of one slice of a
    volume (1, h, w[, c]); SystemExit with the reason for anything else."""
    if volume:
        if out.shape[0] != 1:
            raise SystemExit(f"cucim-like read: a PNG holds one slice; this region has {out.shape[0]} (give a "
                             "depth of 1 in --size, or write .npy)")
        out = out[0]
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[..., 0]
    if out.ndim == 3 and out.shape[2] not in (3, 4):
        raise SystemExit(f"cucim-like read: a PNG holds 1, 3 or 4 channels, not {out.shape[2]} (write .npy)")
    return np.ascontiguousarray(out)


def cmd_demo(ns: argparse.Namespace) -> int:
    from .sample import sample_slide

    start = time.perf_counter()
    path = sample_slide(ns.width, ns.height)
    print(f"sample slide: {path} ({path.stat().st_size / 2**20:.1f} MiB, ready in "
          f"{time.perf_counter() - start:.1f} s)")
    CuImage.cache("no_cache")
    with CuImage(path) as img:
        print(f"  {img.vendor} {img.shape} levels {img.resolutions['level_dimensions']} "
              f"MPP {img.spacing()[0]:g} µm, associated {sorted(img.associated_images)}")
        bar = ProgressBar(_level_tiles(img, 0), "whole level 0", enabled=None)
        t0 = time.perf_counter()
        level0 = img.read_region(num_workers=ns.workers, progress=bar)
        dt = time.perf_counter() - t0
        bar.close()
        mpix = level0.shape[0] * level0.shape[1] / 1e6
        print(f"  whole level 0: {level0.shape[1]} x {level0.shape[0]} in {dt:.2f} s "
              f"= {mpix / dt:.0f} Mpixel/s ({level0.nbytes / dt / 2**20:.0f} MiB/s)")
        del level0
        rng = np.random.default_rng(0)
        w, h = img.size("XY")
        xs = rng.integers(0, w - ns.patch, ns.patches)
        ys = rng.integers(0, h - ns.patch, ns.patches)
        t0 = time.perf_counter()
        for x, y in zip(xs, ys, strict=True):
            img.read_region((x, y), (ns.patch, ns.patch), num_workers=ns.workers)
        dt = time.perf_counter() - t0
        print(f"  {ns.patches} random {ns.patch}² patches: {dt:.2f} s = {ns.patches / dt:.0f} patches/s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cucim-like", description="Fast whole-slide image and volume reading.")
    parser.add_argument("--version", action="version", version=f"cucim_like {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="format, levels, tile grid, codec, vendor, spacing, associated images")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the whole metadata as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("read", help="read a region (or a whole level) to a .png or .npy file")
    p.add_argument("path")
    p.add_argument("--location", nargs="+", type=int, metavar="X Y [Z]",
                   help="level-0 pixel coordinates (x y; volumes x y z)")
    p.add_argument("--size", nargs="+", type=int, metavar="W H [D]", help="w h; volumes w h d")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="decode threads (0: one per CPU)")
    p.add_argument("-o", "--output", required=True, help="out.png or out.npy")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("demo", help="write a sample slide, read a whole level and random patches, print speed")
    p.add_argument("--width", type=int, default=8192)
    p.add_argument("--height", type=int, default=6144)
    p.add_argument("--patches", type=int, default=1000)
    p.add_argument("--patch", type=int, default=224)
    p.add_argument("--workers", type=int, default=0, help="decode threads (0: one per CPU)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "read" and (ns.location is None) != (ns.size is None):
        print("cucim-like read: give both --location and --size, or neither for the whole level", file=sys.stderr)
        return 2
    try:
        return ns.func(ns)
    except CucimLikeError as exc:
        print(f"cucim-like {ns.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
