"""Benchmark cucim_like on neuroglancer precomputed float32 volumes (raw and fpzip) against NumPy.

The volume: 512^3 voxels x 3 channels of float32 (1.5 GiB decoded) in 64^3 chunks, written once to
benchmarks/data/precomputed/{raw,fpzip} (a smooth field plus noise, so fpzip has something to compress).

Sections (contenders alternated round-robin in one process, order rotated every repeat; medians reported):

* whole: the whole scale, cucim_like with 2 workers against a NumPy reference that reads the same chunk files
  one after another (raw: np.frombuffer; fpzip: the fpzip package's decompress, in this process, unsafe);
  for fpzip also cucim_like with its safety measures replaced by an in-process, unchecked fpzip call (ctypes,
  GIL released), which gives the overhead of the safety measures;
* random: 200 random 128^3 regions (seeded), same contenders, the tile cache off (the reference has none);
* chunk: one 64^3 x 3 fpzip chunk decoded 50 times on one thread: isolated (header check + child process +
  shared memory copies) against ctypes and the fpzip package in this process.

Usage: ``python benchmarks/run_precomputed.py [--sections whole,random,chunk] [--repeats N] [--quick]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import DATA, Contender, fmt_time, median, round_robin  # noqa: E402

from cucim_like.codecs import Decoder, register_codec  # noqa: E402  (harness puts this tree on sys.path)

ROOT = DATA / "precomputed"
SECTIONS = ("whole", "random", "chunk")


# -- the volume ------------------------------------------------------------------------------------------------
def field(x0, x1, y0, y1, z0, z1, c: int, seed: int) -> np.ndarray:
    """The test field over a box as (x, y, z, c) float32, Fortran order (how precomputed stores chunks)."""
    x = np.arange(x0, x1, dtype=np.float32)[:, None, None]
    y = np.arange(y0, y1, dtype=np.float32)[None, :, None]
    z = np.arange(z0, z1, dtype=np.float32)[None, None, :]
    rng = np.random.default_rng(seed)
    out = np.empty((x1 - x0, y1 - y0, z1 - z0, c), np.float32, order="F")
    for ch in range(c):
        smooth = np.sin(x / (17.0 + ch)) * np.cos(y / 23.0) + z / 512.0
        out[..., ch] = smooth + 0.01 * rng.standard_normal(smooth.shape, dtype=np.float32)
    return out


def _write_chunk(args) -> None:
    enc, key_dir, box, c, seed = args
    import fpzip

    (x0, x1), (y0, y1), (z0, z1) = box
    data = field(x0, x1, y0, y1, z0, z1, c, seed)
    name = f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
    stream = data.tobytes(order="F") if enc == "raw" else fpzip.compress(data, order="F")
    (Path(key_dir) / name).write_bytes(stream)


def make_volume(size: int, chunk: int, channels: int) -> dict[str, Path]:
    """Write the raw and fpzip volumes (once; kept under benchmarks/data)."""
    from multiprocessing import Pool

    roots = {}
    for enc in ("raw", "fpzip"):
        root = ROOT / f"{enc}-{size}-{chunk}-{channels}"
        roots[enc] = root
        if (root / "info").exists():
            continue
        key = "8_8_8"
        (root / key).mkdir(parents=True, exist_ok=True)
        boxes = []
        for gz in range(size // chunk):
            for gy in range(size // chunk):
                for gx in range(size // chunk):
                    boxes.append(tuple((g * chunk, g * chunk + chunk) for g in (gx, gy, gz)))
        t0 = time.perf_counter()
        with Pool(2) as pool:
            pool.map(_write_chunk, [(enc, str(root / key), b, channels, i) for i, b in enumerate(boxes)],
                     chunksize=4)
        info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "float32",
                "num_channels": channels, "scales": [{"key": key, "size": [size] * 3, "voxel_offset": [0, 0, 0],
                                                      "resolution": [8, 8, 8], "chunk_sizes": [[chunk] * 3],
                                                      "encoding": enc}]}
        (root / "info").write_text(json.dumps(info))
        print(f"wrote {root} in {time.perf_counter() - t0:.1f} s", flush=True)
    return roots


# -- the NumPy reference: the same chunk files, read and decoded one after another -------------------------------
def numpy_read(root: Path, enc: str, start, extent, size: int, chunk: int, channels: int) -> np.ndarray:
    """Region (x, y, z) start/extent as (z, y, x, c) float32, chunk files read serially."""
    import fpzip

    (sx, sy, sz), (ex, ey, ez) = start, extent
    out = np.empty((ez, ey, ex, channels), np.float32)
    key = root / "8_8_8"
    for gz in range(sz // chunk, (sz + ez - 1) // chunk + 1):
        for gy in range(sy // chunk, (sy + ey - 1) // chunk + 1):
            for gx in range(sx // chunk, (sx + ex - 1) // chunk + 1):
                x0, y0, z0 = gx * chunk, gy * chunk, gz * chunk
                stream = (key / f"{x0}-{x0 + chunk}_{y0}-{y0 + chunk}_{z0}-{z0 + chunk}").read_bytes()
                if enc == "raw":
                    values = np.frombuffer(stream, "<f4").reshape(channels, chunk, chunk, chunk)
                else:
                    values = fpzip.decompress(stream, order="C").reshape(channels, chunk, chunk, chunk)
                a = [max(s, g * chunk) for s, g in zip((sx, sy, sz), (gx, gy, gz), strict=True)]
                b = [min(s + e, g * chunk + chunk) for s, e, g in zip((sx, sy, sz), (ex, ey, ez), (gx, gy, gz),
                                                                       strict=True)]
                src = values[:, a[2] - z0 : b[2] - z0, a[1] - y0 : b[1] - y0, a[0] - x0 : b[0] - x0]
                out[a[2] - sz : b[2] - sz, a[1] - sy : b[1] - sy, a[0] - sx : b[0] - sx] = src.transpose(1, 2, 3, 0)
    return out


# -- an unchecked in-process fpzip decoder: what the safety measures cost is measured against it -----------------
class _Fpz(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("type", "prec", "nx", "ny", "nz", "nf")]


def _fpzip_lib():
    import importlib.util

    lib = ctypes.CDLL(importlib.util.find_spec("fpzip").origin)
    lib.fpzip_read_from_buffer.restype = ctypes.POINTER(_Fpz)
    lib.fpzip_read_from_buffer.argtypes = [ctypes.c_void_p]
    lib.fpzip_read_header.argtypes = [ctypes.POINTER(_Fpz)]
    lib.fpzip_read.restype = ctypes.c_size_t
    lib.fpzip_read.argtypes = [ctypes.POINTER(_Fpz), ctypes.c_void_p]
    lib.fpzip_read_close.argtypes = [ctypes.POINTER(_Fpz)]
    return lib


_LIB = None


def unsafe_fpzip(data: bytes, out_cxyz: np.ndarray) -> None:
    """fpzip decode in this process, no checks: the header is trusted and sizes nothing here (the caller's
    buffer is the chunk's), but a damaged stream would crash the process."""
    global _LIB
    if _LIB is None:
        _LIB = _fpzip_lib()
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    fpz = _LIB.fpzip_read_from_buffer(buf)
    _LIB.fpzip_read_header(fpz)
    _LIB.fpzip_read(fpz, out_cxyz.ctypes.data)
    _LIB.fpzip_read_close(fpz)


class UnsafeFpzipDecoder(Decoder):
    """cucim_like's pipeline with the in-process, unchecked fpzip call (registered as "fpzip-unsafe")."""

    def decode(self, data, out):
        tz, ty, tx, c = out.shape
        values = np.empty((c, tz, ty, tx), np.float32)
        unsafe_fpzip(data, values)
        out[...] = values.transpose(1, 2, 3, 0)
        return out


WORKERS = 2


def warm(root: Path, enc: str) -> None:
    """One read through each cucim_like path first, untimed (imports, thread pool, decoder processes)."""
    for unsafe in (False, True) if enc == "fpzip" else (False,):
        open_image(root, unsafe).read_region((0, 0, 0), (96, 96, 96), num_workers=WORKERS)


def open_image(root: Path, unsafe: bool = False):
    import dataclasses

    import cucim_like

    img = cucim_like.CuImage(str(root))
    read = img.read_region
    img.read_region = lambda *a, **k: read(*a, **{"num_workers": WORKERS, **k})
    if unsafe:
        register_codec("fpzip-unsafe", f"{__name__}:UnsafeFpzipDecoder")
        lvl = img._source.levels[0]
        img._source.levels[0] = dataclasses.replace(lvl, codec=dataclasses.replace(lvl.codec, name="fpzip-unsafe"),
                                                    _decoder=[], _table=[])
    return img


# -- sections ----------------------------------------------------------------------------------------------------
def run(sections, repeats: int, size: int, chunk: int, channels: int, reads: int, region: int) -> dict:
    import cucim_like

    roots = make_volume(size, chunk, channels)
    cucim_like.CuImage.cache("no_cache")
    rng = np.random.default_rng(0)
    starts = rng.integers(0, size - region + 1, (reads, 3))
    results: dict = {"size": size, "chunk": chunk, "channels": channels, "reads": reads, "region": region,
                     "repeats": repeats, "sections": {}}
    if "whole" in sections:
        for enc in ("raw", "fpzip"):
            root = roots[enc]
            contenders = [
                Contender("cucim_like (2 workers)", lambda r=root: open_image(r).read_region),
                Contender("NumPy serial", lambda r=root, e=enc: (lambda: numpy_read(
                    r, e, (0, 0, 0), (size,) * 3, size, chunk, channels))),
            ]
            if enc == "fpzip":
                contenders.insert(1, Contender("cucim_like unsafe in-process fpzip (2 workers)",
                                               lambda r=root: open_image(r, True).read_region))
            warm(root, enc)
            check = {}

            def keep(c, result, check=check):
                check[c.name] = float(np.asarray(result[::97, ::89, ::83]).sum(dtype=np.float64))

            round_robin(contenders, repeats, f"whole {enc}", keep)
            results["sections"][f"whole-{enc}"] = {
                c.name: {"median_s": median(c.times), "times": c.times, "cpu_s": median(c.cpu)} for c in contenders}
            results["sections"][f"whole-{enc}"]["same-values"] = len(set(check.values())) == 1
    if "random" in sections:
        for enc in ("raw", "fpzip"):
            root = roots[enc]
            locs = [tuple(int(v) for v in s) for s in starts]

            def ours(r=root, locs=locs):
                img = open_image(r)
                return lambda: [img.read_region(s, (region,) * 3, num_workers=WORKERS) for s in locs][-1]

            def ref(r=root, e=enc, locs=locs):
                return lambda: [numpy_read(r, e, s, (region,) * 3, size, chunk, channels) for s in locs][-1]

            contenders = [Contender("cucim_like (2 workers)", ours), Contender("NumPy serial", ref)]
            warm(root, enc)
            reps = repeats if enc == "raw" else max(1, repeats // 3)
            round_robin(contenders, reps, f"random {enc}")
            results["sections"][f"random-{enc}"] = {
                c.name: {"median_s": median(c.times), "times": c.times, "cpu_s": median(c.cpu)} for c in contenders}
            results["sections"][f"random-{enc}"]["repeats"] = reps
    if "chunk" in sections:
        import fpzip

        from cucim_like.codecs.fpzip import FpzipDecoder
        from cucim_like.formats.base import CodecSpec

        stream = (roots["fpzip"] / "8_8_8" / f"0-{chunk}_0-{chunk}_0-{chunk}").read_bytes()
        dec = FpzipDecoder(CodecSpec("fpzip"), (chunk, chunk, chunk, channels), np.dtype(np.float32))
        out = np.empty((chunk, chunk, chunk, channels), np.float32)
        values = np.empty((channels, chunk, chunk, chunk), np.float32)
        dec.decode(stream, out)  # start the decoder process
        calls = 50
        contenders = [
            Contender("isolated (cucim_like)", lambda: (lambda: dec.decode(stream, out)), per_call=True,
                      calls=calls),
            Contender("ctypes in-process, unchecked", lambda: (lambda: unsafe_fpzip(stream, values)), per_call=True,
                      calls=calls),
            Contender("fpzip.decompress in-process", lambda: (lambda: fpzip.decompress(stream)), per_call=True,
                      calls=calls),
        ]
        round_robin(contenders, repeats, "chunk", width=32)
        results["sections"]["chunk"] = {c.name: {"median_s": median(c.times)} for c in contenders}
        results["sections"]["chunk"]["stream_bytes"] = len(stream)
    return results


def markdown(results: dict) -> str:
    s = results["sections"]
    n, ch, c = results["size"], results["chunk"], results["channels"]
    lines = [f"### Precomputed float32 volume {n}^3 x {c} channels, {ch}^3 chunks ({results['date']})", "",
             *harness.environment_lines(results, wall=True), ""]
    for name, title in (("whole", "Whole scale"), ("random", f"{results['reads']} random {results['region']}^3 "
                                                              "reads, tile cache off")):
        for enc in ("raw", "fpzip"):
            sec = s.get(f"{name}-{enc}")
            if not sec:
                continue
            ref = sec["NumPy serial"]["median_s"]
            reps = sec.get("repeats", results["repeats"])
            lines += [f"{title}, {enc} ({reps} repeats):", "", "| contender | median | CPU | vs NumPy serial |",
                      "|---|---|---|---|"]
            for cname, v in sec.items():
                if isinstance(v, dict):
                    lines.append(f"| {cname} | {fmt_time(v['median_s'])} | {fmt_time(v['cpu_s'])} | "
                                 f"{ref / v['median_s']:.2f}x |")
            if "same-values" in sec:
                lines.append(f"\nSame values from every contender (sampled checksum): {sec['same-values']}")
            lines.append("")
    if "chunk" in s:
        sec = s["chunk"]
        iso = sec["isolated (cucim_like)"]["median_s"]
        lines += [f"One {ch}^3 x {c} fpzip chunk ({sec['stream_bytes']} bytes), one thread, median per decode:", "",
                  "| decoder | median | isolated / this |", "|---|---|---|"]
        for cname, v in sec.items():
            if isinstance(v, dict):
                lines.append(f"| {cname} | {fmt_time(v['median_s'])} | {iso / v['median_s']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a 128^3 volume and 20 reads (a smoke run)")
    args = parser.parse_args()
    sections = harness.parse_sections(parser, args.sections, SECTIONS)
    size, reads = (128, 20) if args.quick else (512, 200)
    t0 = time.perf_counter()
    results = harness.run_record([("cucim_like", "cucim_like"), ("numpy", "numpy"), ("fpzip", "fpzip")])
    results.update(run(sections, args.repeats, size, 64, 3, reads, 128 if not args.quick else 64))
    md = harness.save_results(DATA / ("precomputed-results-quick.json" if args.quick else
                                      "precomputed-results.json"), results, t0, markdown)
    print(md)


if __name__ == "__main__":
    main()
