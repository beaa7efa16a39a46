"""Benchmark cucim_like against tifffile, cuCIM, OpenSlide and tiffslide on a large SVS slide.

Sections (all in one process, contenders alternated round-robin over the repeats; medians are reported):

* a: the whole of level 0 with 2 workers, plus the decode floor (pre-loaded tiles, 2 decode threads);
* b: 2000 random 224x224 regions of level 0, each library with its default settings;
* c: 200 random 512x512 regions of level 1 (locations in level-0 coordinates);
* rss: peak RSS of (a) for cucim_like (and the others, for context), each in a fresh subprocess;
* import: ``import cucim_like`` in fresh subprocesses;
* open: ``CuImage(path)`` of the large slide (first open in a fresh process, then warm opens).

Usage: ``python benchmarks/run.py [--only a,b,c,rss,import,open] [--repeats N] [--quick] [--slide PATH]``
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import make_slide  # noqa: E402  (sibling modules; the path above makes them importable)
from harness import (  # noqa: E402
    DATA,
    PROC_STATUS_CODE,
    Contender,
    environment_lines,
    median,
    parse_sections,
    round_robin,
    run_child,
    run_record,
    save_results,
)

DEFAULT_SLIDE = DATA / "large.svs"
SECTIONS = ("a", "b", "c", "rss", "import", "open")
SEED = 20261121


# -- small helpers ---------------------------------------------------------------------------------------------
def fingerprint(arr: np.ndarray) -> int:
    """A cheap checksum of every 997th row, to check that contenders returned the same pixels."""
    rows = np.ascontiguousarray(arr[::997, :, :3])
    return int(np.frombuffer(rows.tobytes(), np.uint8).astype(np.uint64).dot(
        np.arange(1, rows.size + 1, dtype=np.uint64) % np.uint64(65521)))


def show_repeat(elapsed: float, cpu: float) -> str:
    """The timing part of a progress line."""
    return f"{elapsed:8.3f} s  (CPU {cpu:.3f} s)"


def section_result(contenders: list[Contender], calls: int, ref: str = "cucim_like") -> dict[str, Any]:
    """Medians, per-call latency and each contender's time divided by cucim_like's (> 1: cucim_like faster).

    CPU time (all threads of this process) is reported too: it is less disturbed by other load on a shared
    machine than wall time, though it does not show parallelism.
    """
    out: dict[str, Any] = {"calls": calls, "contenders": {}}
    base = median(next(c for c in contenders if c.name == ref).times)
    for c in contenders:
        med = median(c.times)
        out["contenders"][c.name] = {
            "times_s": [round(t, 4) for t in c.times], "median_s": round(med, 4), "min_s": round(min(c.times), 4),
            "per_call_ms": round(1000 * med / calls, 4) if calls > 1 else None,
            "time_vs_cucim_like": round(med / base, 3), "cpu_s": [round(t, 4) for t in c.cpu],
            "cpu_median_s": round(median(c.cpu), 4), "note": c.note, **c.extra,
        }
    return out


# -- environment -----------------------------------------------------------------------------------------------
LIBRARIES = [("cucim_like", "cucim_like"), ("numpy", "numpy"), ("tifffile", "tifffile"), ("imagecodecs", "imagecodecs"),
             ("cucim", "cucim"), ("openslide-python", "openslide"), ("tiffslide", "tiffslide"), ("psutil", "psutil")]
C_LIBRARIES = ("libjpeg", "openslide (C library)")


def slide_info(path: Path) -> dict[str, Any]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        levels = tf.series[0].levels
        p = tf.pages.first
        counts = np.asarray(p.databytecounts)
        return {
            "path": str(path), "file_mib": round(path.stat().st_size / 2**20, 1),
            "levels_wh": [[int(lv.shape[-2]), int(lv.shape[-3])] for lv in levels],
            "tile": [int(p.tilewidth), int(p.tilelength)], "level0_tiles": int(counts.size),
            "compression": p.compression.name, "photometric": p.photometric.name,
            "subsampling": list(p.subsampling) if p.subsampling else None,
            "tile_kib_median": round(float(np.median(counts)) / 1024, 1),
            "vendor_detected_by_tifffile": "aperio" if tf.is_svs else "other",
        }


# -- section a: whole level 0 ------------------------------------------------------------------------------------
def jpeg_colorspace(page, tiles: list[bytes]) -> dict[str, Any]:
    """jpeg8_decode colour arguments that reproduce tifffile's pixels on the largest (most detailed) tile."""
    import imagecodecs

    i = int(np.argmax([len(t) for t in tiles]))
    ref = page.decode(tiles[i], i, jpegtables=page.jpegtables)[0].reshape(page.tilelength, page.tilewidth, -1)
    for cs in (None, "RGB", "YCbCr"):
        got = imagecodecs.jpeg8_decode(tiles[i], tables=page.jpegtables, colorspace=cs, outcolorspace="RGB")
        if got.shape == ref.shape and np.array_equal(got, ref):
            return {"colorspace": cs, "outcolorspace": "RGB"}
    raise RuntimeError("no jpeg8_decode colour arguments reproduce tifffile's pixels")


def load_tiles(path: Path) -> tuple[list[bytes], dict[str, Any], bytes | None]:
    """Every level-0 tile's compressed bytes (read untimed), the decode arguments and the JPEG tables."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        with open(path, "rb") as fh:
            fd = fh.fileno()
            tiles = [os.pread(fd, int(n), int(o)) for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
        return tiles, jpeg_colorspace(page, tiles), page.jpegtables


def decode_floor(tiles: list[bytes], kwargs: dict[str, Any], tables: bytes | None, workers: int = 2) -> int:
    """Decode all tiles with ``workers`` threads into per-thread scratch buffers (no placement); returns count."""
    import imagecodecs

    decode = imagecodecs.jpeg8_decode
    local = threading.local()
    shape = decode(tiles[0], tables=tables, **kwargs).shape

    def run(chunk: list[bytes]) -> int:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty(shape, np.uint8)
        for t in chunk:
            decode(t, tables=tables, out=buf, **kwargs)
        return len(chunk)

    step = 32
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(run, [tiles[i : i + step] for i in range(0, len(tiles), step)]))


def fill_output(shape: tuple[int, ...]) -> np.ndarray:
    """A fresh output array touched once in order: what first-touching the pages alone costs right now."""
    out = np.empty(shape, np.uint8)
    out.fill(255)
    return out


def section_a(path: Path, repeats: int) -> dict[str, Any]:
    import tifffile
    from cucim import CuImage as CucimImage

    from cucim_like import CuImage

    tiles, kwargs, tables = load_tiles(path)
    img = CuImage(path)
    w, h = img.size("XY")
    nbytes = w * h * 3
    touched = fill_output((h, w, 3))
    prints: dict[str, int] = {}

    def check(c: Contender, result: Any) -> None:
        if isinstance(result, np.ndarray) and c.name not in prints and c.name != "alloc+fill output":
            if result.shape != (h, w, 3):
                raise RuntimeError(f"{c.name} returned shape {result.shape}")
            prints[c.name] = fingerprint(result)

    contenders = [
        Contender("cucim_like", lambda: lambda: img.read_region(level=0, num_workers=2),
                  note="CuImage opened before timing"),
        Contender("tifffile", lambda: lambda: tifffile.imread(path, key=0, maxworkers=2),
                  note="includes opening the file"),
        Contender("cuCIM", lambda: (lambda c: lambda: np.asarray(c.read_region((0, 0), (w, h), 0, num_workers=2)))(
            CucimImage(str(path))), note="CuImage opened before timing; np.asarray of the result"),
        Contender("cucim_like buf=", lambda: lambda: img.read_region(level=0, num_workers=2, buf=touched),
                  note="for context: cucim_like into a pre-allocated output whose pages were already touched"),
        Contender("decode floor", lambda: lambda: decode_floor(tiles, kwargs, tables, 2),
                  note=f"{len(tiles)} pre-loaded tiles, 2 threads, jpeg8_decode({kwargs}), no placement"),
    ]
    # Measured after the round robin, not inside it: freeing a 1.5 GiB array of transparent huge pages slows
    # the page faults of whichever contender runs next (seen here: 3.5-6.5 s instead of 2.3-2.4 s).
    context = [Contender("alloc+fill output", lambda: lambda: fill_output((h, w, 3)),
                         note="for context, timed after the others: np.empty of the output (NumPy asks for huge "
                              "pages) and a sequential first touch (fill), 1 thread")]
    print(f"(a) whole level 0 ({w}x{h}, {nbytes / 2**20:.0f} MiB), {len(tiles)} tiles, decode args {kwargs}")
    round_robin(contenders, repeats, "a", check, show=show_repeat)
    round_robin(context, repeats, "a", show=show_repeat)
    contenders += context
    res = section_result(contenders, 1)
    res.update(output_nbytes=nbytes, level0_wh=[w, h], decode_kwargs=kwargs,
               pixels_agree=len(set(prints.values())) == 1, fingerprints=prints, readers_compared=sorted(prints),
               skipped={"OpenSlide": "too slow for a whole level of this size (not run)"})
    return res


# -- sections b and c: random regions -----------------------------------------------------------------------------
def random_locations(n: int, w0: int, h0: int, size: int, downsample: int, seed: int) -> list[tuple[int, int]]:
    """``n`` level-0 (x, y) locations whose size x size region at the level lies fully inside it.

    Locations are multiples of the downsample, so they fall on whole pixels of the level: OpenSlide interpolates
    (and its pixels differ) at fractional positions, where the other readers round down.
    """
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, (w0 - size * downsample) // downsample + 1, n) * downsample
    ys = rng.integers(0, (h0 - size * downsample) // downsample + 1, n) * downsample
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


Reader = Callable[[tuple[int, int]], Any]


def region_readers(path: Path, size: int, level: int) -> dict[str, tuple[Callable[[], Reader], str]]:
    """Per library: a factory opening a fresh handle (untimed) that returns ``read(location)``, and a note."""
    from cucim import CuImage as CucimImage

    from cucim_like import CuImage

    def cucim_like_open() -> Reader:
        CuImage.cache().clear()
        img = CuImage(path)
        return lambda loc: img.read_region(location=loc, size=(size, size), level=level)

    def cucim_open() -> Reader:
        img = CucimImage(str(path))
        return lambda loc: np.asarray(img.read_region(loc, (size, size), level))

    def openslide_open() -> Reader:
        import openslide

        slide = openslide.OpenSlide(str(path))
        return lambda loc: np.asarray(slide.read_region(loc, level, (size, size)))

    def tiffslide_open() -> Reader:
        import tiffslide

        slide = tiffslide.TiffSlide(str(path))
        return lambda loc: slide.read_region(loc, level, (size, size), as_array=True)

    def cucim_like_serial_open() -> Reader:
        CuImage.cache().clear()
        img = CuImage(path)
        return lambda loc: img.read_region(location=loc, size=(size, size), level=level, num_workers=1)

    out = {
        "cucim_like": (cucim_like_open, "default num_workers (one thread per CPU); tile cache cleared before each "
                       "repeat (cold)"),
        "cucim_like serial": (cucim_like_serial_open, "for context: num_workers=1, cache cleared as above"),
        "cuCIM": (cucim_open, f"defaults (num_workers=0, cache {CucimImage.cache().type.name}); np.asarray"),
        "OpenSlide": (openslide_open, "defaults; np.asarray of the RGBA PIL image"),
    }
    try:
        import tiffslide  # noqa: F401

        out["tiffslide"] = (tiffslide_open, "defaults, as_array=True")
    except ImportError:
        pass
    return out


def check_regions(readers: dict[str, tuple[Callable[[], Reader], str]], locs: list[tuple[int, int]]) -> dict[str, int]:
    """Largest absolute pixel difference to cucim_like per library over the given regions (RGB only)."""
    got = {name: [np.asarray(read(loc))[..., :3] for loc in locs]
           for name, read in ((n, f()) for n, (f, _) in readers.items())}
    base = got.pop("cucim_like")
    return {name: int(max(np.abs(a.astype(np.int16) - b).max() for a, b in zip(base, arrs, strict=True)))
            for name, arrs in got.items()}


def section_regions(path: Path, repeats: int, n: int, size: int, level: int, label: str) -> dict[str, Any]:
    from cucim_like import CuImage

    img = CuImage(path)
    w0, h0 = img.size("XY")
    ds = round(img.resolutions["level_downsamples"][level])
    img.close()
    locs = random_locations(n, w0, h0, size, ds, SEED + level)
    print(f"({label}) {n} random {size}x{size} regions at level {level} (downsample {ds})")
    readers = region_readers(path, size, level)
    diffs = check_regions(readers, locs[:20])

    def timed(factory: Callable[[], Reader]) -> Callable[[], Any]:
        read = factory()
        return lambda: [read(loc) for loc in locs][-1]

    contenders = [Contender(name, lambda f=factory: timed(f), note=note + "; fresh handle per repeat (untimed)")
                  for name, (factory, note) in readers.items()]

    def after(c: Contender, _result: Any) -> None:
        if c.name.startswith("cucim_like"):
            cache = CuImage.cache()
            c.extra.setdefault("cache_hits_misses", []).append([cache.hit_count, cache.miss_count])

    round_robin(contenders, repeats, label, after, show=show_repeat)
    res = section_result(contenders, n)
    res.update(size=size, level=level, seed=SEED + level, max_abs_diff_vs_cucim_like=diffs)
    return res


# -- subprocess measurements ---------------------------------------------------------------------------------------
RSS_CODE = """
import json, sys, time
import numpy as np
which, path = {which!r}, {path!r}

""" + PROC_STATUS_CODE + """
if which == "cucim_like":
    from cucim_like import CuImage
    img = CuImage(path)
    read = lambda: img.read_region(level=0, num_workers=2)
elif which == "tifffile":
    import tifffile
    tifffile.TiffFile(path).close()
    read = lambda: tifffile.imread(path, key=0, maxworkers=2)
else:
    from cucim import CuImage
    img = CuImage(path)
    w, h = img.size("XY")
    read = lambda: np.asarray(img.read_region((0, 0), (w, h), 0, num_workers=2))
base_rss = proc_status("VmRSS")
base_peak = proc_status("VmHWM")
t0 = time.perf_counter()
arr = read()
elapsed = time.perf_counter() - t0
print(json.dumps(dict(baseline_rss=base_rss, baseline_peak=base_peak, peak_rss=proc_status("VmHWM"),
                      nbytes=int(arr.nbytes), after_rss=proc_status("VmRSS"), seconds=elapsed)))
"""


def section_rss(path: Path, runs: int) -> dict[str, Any]:
    """Peak RSS of a whole-level-0 read (2 workers) in fresh subprocesses, as a ratio to the output's bytes."""
    out: dict[str, Any] = {}
    for which in ("cucim_like", "tifffile", "cuCIM"):
        samples = [run_child(RSS_CODE.format(which=which, path=str(path))) for _ in range(runs)]
        nbytes = samples[0]["nbytes"]
        peak = median([s["peak_rss"] for s in samples])
        base = median([s["baseline_rss"] for s in samples])
        out[which] = {
            "runs": samples, "nbytes": nbytes, "peak_rss_mib": round(peak / 2**20, 1),
            "baseline_rss_mib": round(base / 2**20, 1), "peak_over_nbytes": round(peak / nbytes, 3),
            "increment_over_nbytes": round((peak - base) / nbytes, 3),
        }
        print(f"(rss) {which:<12} peak {peak / 2**20:8.1f} MiB = {peak / nbytes:.3f} x output "
              f"(baseline {base / 2**20:.1f} MiB)", flush=True)
    return out


IMPORT_CODE = """
import json, sys, time
mode = {mode!r}
if mode == "numpy_preimported":
    import numpy
t0 = time.perf_counter()
if mode == "numpy_alone":
    import numpy
else:
    import cucim_like
t1 = time.perf_counter()
heavy = sorted(m for m in ("tifffile", "imagecodecs", "cupy", "PIL", "dask") if m in sys.modules)
print(json.dumps(dict(seconds=t1 - t0, heavy_modules_loaded=heavy)))
"""
IMPORT_MODES = {"cold": "import cucim_like, numpy included", "numpy_preimported": "import cucim_like after numpy",
                "numpy_alone": "import numpy (for context)"}


def section_import(runs: int) -> dict[str, Any]:
    """Import wall times in fresh interpreters, the three modes interleaved: ``import cucim_like`` cold (numpy
    included), ``import cucim_like`` with numpy already imported, and ``import numpy`` alone for context."""
    secs: dict[str, list[float]] = {m: [] for m in IMPORT_MODES}
    heavy: dict[str, list[str]] = {}
    for _ in range(runs):
        for mode in IMPORT_MODES:
            r = run_child(IMPORT_CODE.format(mode=mode))
            secs[mode].append(r["seconds"])
            heavy[mode] = r["heavy_modules_loaded"]
    out: dict[str, Any] = {}
    for mode, what in IMPORT_MODES.items():
        v = secs[mode]
        out[mode] = {"what": what, "median_ms": round(1000 * median(v), 2), "min_ms": round(1000 * min(v), 2),
                     "samples_ms": [round(1000 * x, 2) for x in v], "heavy_modules_loaded": heavy[mode]}
        print(f"(import) {what:<36} median {1000 * median(v):7.1f} ms over {runs} fresh processes", flush=True)
    return out


OPEN_CODE = """
import json, time
from cucim_like import CuImage
path, n = {path!r}, {n}
t0 = time.perf_counter()
img = CuImage(path)
first = time.perf_counter() - t0
img.close()
warm = []
for _ in range(n):
    t0 = time.perf_counter()
    img = CuImage(path)
    warm.append(time.perf_counter() - t0)
    img.close()
print(json.dumps(dict(first=first, warm=warm)))
"""


def section_open(path: Path, processes: int, opens: int) -> dict[str, Any]:
    """``CuImage(path)``: first open of a fresh process (imports tifffile) and warm opens after it."""
    samples = [run_child(OPEN_CODE.format(path=str(path), n=opens)) for _ in range(processes)]
    firsts = [s["first"] for s in samples]
    warm = [t for s in samples for t in s["warm"]]
    res = {
        "first_open_median_ms": round(1000 * median(firsts), 2), "first_open_samples_ms": [round(1000 * f, 2)
                                                                                           for f in firsts],
        "warm_open_median_ms": round(1000 * median(warm), 3), "warm_open_min_ms": round(1000 * min(warm), 3),
        "warm_open_p90_ms": round(1000 * float(np.percentile(warm, 90)), 3), "warm_opens": len(warm),
        "processes": processes,
    }
    print(f"(open) first {res['first_open_median_ms']:.1f} ms, warm median {res['warm_open_median_ms']:.2f} ms "
          f"over {len(warm)} opens", flush=True)
    return res


# -- targets and report ----------------------------------------------------------------------------------------------
def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as pass/fail lines (only for sections that ran)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, higher_is_better: bool, unit: str = "x") -> None:
        ok = value >= limit if higher_is_better else value <= limit
        out.append({"target": name, "value": round(value, 3), "limit": limit, "unit": unit,
                    "rule": ">=" if higher_is_better else "<=", "pass": bool(ok)})

    secs = results["sections"]
    if "a" in secs:
        c = secs["a"]["contenders"]
        cl = c["cucim_like"]["median_s"]
        add("(a) cucim_like time / decode floor", cl / c["decode floor"]["median_s"], 1.25, False)
        add("(a) speed-up vs tifffile", c["tifffile"]["median_s"] / cl, 1.5, True)
        add("(a) speed-up vs cuCIM", c["cuCIM"]["median_s"] / cl, 1.5, True)
    if "b" in secs:
        c = secs["b"]["contenders"]
        cl = c["cucim_like"]["median_s"]
        add("(b) speed-up vs cuCIM", c["cuCIM"]["median_s"] / cl, 1.5, True)
        add("(b) speed-up vs OpenSlide", c["OpenSlide"]["median_s"] / cl, 3.5, True)
    if "rss" in secs:
        add("(a) peak RSS / output nbytes (cucim_like)", secs["rss"]["cucim_like"]["peak_over_nbytes"], 1.1, False)
    if "import" in secs:
        add("import cucim_like, cold incl. numpy (ms)", secs["import"]["cold"]["median_ms"], 150, False, "ms")
        add("import cucim_like, numpy already imported (ms)", secs["import"]["numpy_preimported"]["median_ms"],
            150, False, "ms")
    if "open" in secs:
        add("open the slide with CuImage (warm, ms)", secs["open"]["warm_open_median_ms"], 5, False, "ms")
    return out


def fmt_s(v: float) -> str:
    return f"{v:.3f} s" if v >= 0.1 else f"{1000 * v:.1f} ms"


def markdown(results: dict[str, Any]) -> str:
    """A RESULTS.md section: environment, one table per section, the targets."""
    s = results["slide"]
    lines = [
        f"## Run of {results['date']}",
        "",
        *environment_lines(results),
        f"- Slide: `{Path(s['path']).name}`, {s['file_mib']} MiB, levels (w, h) {s['levels_wh']}, "
        f"{s['tile'][0]}x{s['tile'][1]} {s['compression']} tiles ({s['photometric']}, subsampling "
        f"{s['subsampling']}), {s['level0_tiles']} tiles at level 0, median tile {s['tile_kib_median']} KiB",
        f"- Repeats: {results['repeats']} per contender, round-robin in one process; medians shown. "
        "The file is in the OS page cache (warm) for every contender.",
        "",
    ]
    titles = {"a": "(a) Whole level 0, 2 workers", "b": "(b) Random 224x224 regions at level 0, defaults",
              "c": "(c) Random 512x512 regions at level 1, defaults"}
    for key in ("a", "b", "c"):
        sec = results["sections"].get(key)
        if sec is None:
            continue
        lines += [f"### {titles[key]} ({sec['calls']} call{'s' if sec['calls'] > 1 else ''})", "",
                  "| contender | median | min | per call | time / cucim_like | CPU median | notes |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name, c in sec["contenders"].items():
            per = f"{c['per_call_ms']:.3f} ms" if c["per_call_ms"] is not None else ""
            lines.append(f"| {name} | {fmt_s(c['median_s'])} | {fmt_s(c['min_s'])} | {per} | "
                         f"{c['time_vs_cucim_like']:.2f} | {fmt_s(c['cpu_median_s'])} | {c['note']} |")
        if key == "a":
            lines += ["", f"OpenSlide: {sec['skipped']['OpenSlide']}. Pixels of {', '.join(sec['readers_compared'])} "
                      f"agree: {sec['pixels_agree']} (checksum of every 997th row)."]
        else:
            lines += ["", f"Max |pixel difference| vs cucim_like on 20 regions: {sec['max_abs_diff_vs_cucim_like']}."]
            for name, c in sec["contenders"].items():
                if c.get("cache_hits_misses"):
                    lines.append(f"{name} tile-cache hits/misses per repeat: {c['cache_hits_misses']}.")
        lines.append("")
    secs = results["sections"]
    if "rss" in secs:
        lines += ["### Peak RSS of (a), fresh subprocess each", "",
                  "| reader | peak RSS | baseline RSS before the read | peak / output nbytes | "
                  "(peak - baseline) / nbytes |", "|---|---:|---:|---:|---:|"]
        for name, r in secs["rss"].items():
            lines.append(f"| {name} | {r['peak_rss_mib']} MiB | {r['baseline_rss_mib']} MiB | "
                         f"{r['peak_over_nbytes']:.3f} | {r['increment_over_nbytes']:.3f} |")
        lines.append("")
    if "import" in secs:
        im = secs["import"]
        lines += ["### Import and open", "",
                  f"- `import cucim_like`, median of {len(im['cold']['samples_ms'])} fresh processes: "
                  f"{im['cold']['median_ms']} ms cold (numpy included), {im['numpy_preimported']['median_ms']} ms "
                  f"with numpy already imported; `import numpy` alone: {im['numpy_alone']['median_ms']} ms. "
                  f"Heavy modules loaded by the import: {im['cold']['heavy_modules_loaded'] or 'none'}"]
    if "open" in secs:
        op = secs["open"]
        if "import" not in secs:
            lines += ["### Open", ""]
        lines.append(f"- `CuImage({Path(s['path']).name})`: first open in a fresh process (imports tifffile) median "
                     f"{op['first_open_median_ms']} ms over {op['processes']} processes; warm opens median "
                     f"{op['warm_open_median_ms']} ms (min {op['warm_open_min_ms']}, p90 {op['warm_open_p90_ms']}) "
                     f"over {op['warm_opens']} opens")
    if "import" in secs or "open" in secs:
        lines.append("")
    if results["targets"]:
        lines += ["### Targets", "", "| target | measured | rule | result |", "|---|---:|---|---|"]
        for t in results["targets"]:
            unit = " ms" if t["unit"] == "ms" else ""
            rule = f"{t['rule']} {t['limit']}{unit}"
            lines.append(f"| {t['target']} | {t['value']}{unit} | {rule} | {'PASS' if t['pass'] else 'FAIL'} |")
        lines.append("")
    return "\n".join(lines)


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'section':<8} {'contender':<18} {'median':>11} {'min':>11} {'per call':>12} {'t / cucim_like':>15} "
          f"{'CPU median':>11}")
    for key in ("a", "b", "c"):
        sec = results["sections"].get(key)
        if sec is None:
            continue
        for name, c in sec["contenders"].items():
            per = f"{c['per_call_ms']:.3f} ms" if c["per_call_ms"] is not None else ""
            print(f"{key:<8} {name:<18} {fmt_s(c['median_s']):>11} {fmt_s(c['min_s']):>11} {per:>12} "
                  f"{c['time_vs_cucim_like']:>15.2f} {fmt_s(c['cpu_median_s']):>11}")
    print()
    for t in results["targets"]:
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']} (need {t['rule']} {t['limit']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections of " + ",".join(SECTIONS))
    p.add_argument("--repeats", type=int, default=3, help="repeats per contender (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer calls and runs, for a smoke test")
    p.add_argument("--slide", type=Path, default=DEFAULT_SLIDE, help="slide to read (generated when missing)")
    p.add_argument("--json", type=Path, default=None,
                   help="where to write the results (default: data/results.json, data/results-quick.json with --quick)")
    a = p.parse_args(argv)
    only = parse_sections(p, a.only, SECTIONS)
    repeats = 1 if a.quick and a.repeats == 3 else a.repeats
    if a.json is None:
        a.json = DATA / ("results-quick.json" if a.quick else "results.json")
    if not a.slide.is_file():
        if a.slide != DEFAULT_SLIDE:
            p.error(f"{a.slide} does not exist")
        print(f"generating {a.slide} ...", flush=True)
        make_slide.ensure_slide(a.slide)
    path = a.slide

    results: dict[str, Any] = {
        **run_record(LIBRARIES, C_LIBRARIES, cpu_count=True),
        "slide": slide_info(path), "repeats": repeats, "quick": a.quick, "sections": {},
    }
    t0 = time.perf_counter()
    if "a" in only:
        results["sections"]["a"] = section_a(path, repeats)
    if "b" in only:
        results["sections"]["b"] = section_regions(path, repeats, 200 if a.quick else 2000, 224, 0, "b")
    if "c" in only:
        results["sections"]["c"] = section_regions(path, repeats, 20 if a.quick else 200, 512, 1, "c")
    if "rss" in only:
        results["sections"]["rss"] = section_rss(path, 1 if a.quick else 3)
    if "import" in only:
        results["sections"]["import"] = section_import(3 if a.quick else 10)
    if "open" in only:
        results["sections"]["open"] = section_open(path, 2 if a.quick else 5, 20 if a.quick else 100)
    results["targets"] = targets(results)
    md = save_results(a.json, results, t0, markdown)
    print_table(results)
    print(f"\nwrote {a.json} and {a.json.with_suffix('.md')}\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
