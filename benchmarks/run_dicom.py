"""Benchmark cucim_like's DICOM reading against wsidicom, OpenSlide, pydicom and imagecodecs.

Sections (contenders alternated round-robin in one process, order rotated every repeat; medians reported):

* wsi: for each of the three WSI directories of make_dicom.py (filled Basic Offset Table, empty one, Extended
  Offset Table): opening (a new object per call, imports done before), opening plus the first 512x512 read
  (OpenSlide and wsidicom index frames lazily), 200 random 512x512 reads at level 0 on a fresh handle per
  repeat, and the first open of a fresh process (subprocesses, imports excluded);
* import: ``import cucim_like`` in fresh subprocesses, and whether it imported pydicom;
* native: frame 500 of the 1000-frame uncompressed file, per call (fresh object per call, and one warm object)
  against pydicom's path API and ``dcmread(path).pixel_array[500]``, plus peak RSS in fresh subprocesses;
* jpegls: 100 random frames of the 1000-frame JPEG-LS file without Basic Offset Table, one call per frame,
  against imagecodecs.jpegls_decode of frames already in memory and pydicom's path API.

A contender that raises is reported with its exception in the tables; the others carry on.

Usage: ``python benchmarks/run_dicom.py [--sections wsi,import,native,jpegls] [--repeats N] [--quick]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402  (sibling modules; the path above makes them importable)
import make_dicom  # noqa: E402  (file names and the generator)
from harness import (  # noqa: E402
    DATA,
    PROC_STATUS_CODE,
    Contender,
    describe,
    environment_lines,
    fmt_time,
    median,
    parse_sections,
    run_record,
    save_results,
)

SECTIONS = ("wsi", "import", "native", "jpegls")
SEED = 20261121
WSI_READS, WSI_SIZE = 200, 512
NATIVE_FRAME = 500
JPEGLS_READS = 100


# -- helpers --------------------------------------------------------------------------------------------------------
run_child = partial(harness.run_child, timeout=300, brief_error=True)
# a contender that raises is dropped (its exception kept for the report) and the others go on
round_robin = partial(harness.round_robin, keep_going=True, width=34)


def clear_cucim_like_cache() -> None:
    """Empty cucim_like's tile cache (so each repeat starts cold), when the API is there."""
    from cucim_like import CuImage

    cache = getattr(CuImage, "cache", None)
    if cache is not None:
        cache().clear()


def timing_table(title: str, contenders: list[Contender], calls: int, ref: str = "cucim_like") -> dict[str, Any]:
    """Medians per contender and each one's time divided by the reference's (> 1: the reference is faster).

    ``calls``: calls in one timed unit (per-call contenders report per call)."""
    base_c = next((c for c in contenders if c.name == ref and c.error is None and c.times), None)
    base = median(base_c.times) if base_c else None
    rows: dict[str, Any] = {}
    for c in contenders:
        if c.error is not None or not c.times:
            rows[c.name] = {"error": c.error or "not run", "note": c.note}
            continue
        med = median(c.times)
        unit_calls = 1 if c.per_call else calls
        rows[c.name] = {
            "median_s": med, "min_s": min(c.times), "samples": len(c.times), "per_call_s": med / unit_calls,
            "cpu_median_s": median(c.cpu), "time_vs_ref": med / base if base else None, "note": c.note,
            "per_call_unit": c.per_call,
        }
    return {"title": title, "calls": calls, "ref": ref, "ref_ok": base is not None, "rows": rows}


# -- environment ------------------------------------------------------------------------------------------------
LIBRARIES = [("numpy", "numpy"), ("pydicom", "pydicom"), ("wsidicom", "wsidicom"), ("openslide-python", "openslide"),
             ("imagecodecs", "imagecodecs"), ("pyjpegls", "jpeg_ls"), ("pylibjpeg", "pylibjpeg"), ("pillow", "PIL")]
C_LIBRARIES = ("openslide (C library)", "libjpeg", "charls")


def files_info(root: Path) -> dict[str, float]:
    out = {}
    for path in sorted(root.rglob("*.dcm")):
        out[str(path.relative_to(root))] = round(path.stat().st_size / 2**20, 1)
    return out


# -- wsi ---------------------------------------------------------------------------------------------------------
Reader = Callable[[tuple[int, int]], np.ndarray]


def wsi_openers(d: Path) -> dict[str, tuple[Callable[[], Any], Callable[[Any], Reader], Callable[[Any], None], str]]:
    """Per library: open (returns a handle), make a level-0 ``read(location)`` for a handle, close, and a note."""
    level0 = d / make_dicom.LEVEL_FILES[0]

    def cl_open() -> Any:
        from cucim_like import CuImage

        return CuImage(d)

    def cl_read(img: Any) -> Reader:
        return lambda loc: np.asarray(img.read_region(location=loc, size=(WSI_SIZE, WSI_SIZE), level=0))

    def wd_open() -> Any:
        from wsidicom import WsiDicom

        return WsiDicom.open(d)

    def wd_read(wsi: Any) -> Reader:
        return lambda loc: np.asarray(wsi.read_region(loc, 0, (WSI_SIZE, WSI_SIZE)))

    def os_open() -> Any:
        import openslide

        return openslide.OpenSlide(str(level0))

    def os_read(slide: Any) -> Reader:
        return lambda loc: np.asarray(slide.read_region(loc, 0, (WSI_SIZE, WSI_SIZE)))

    def close(h: Any) -> None:
        getattr(h, "close", lambda: None)()

    return {
        "cucim_like": (cl_open, cl_read, close, "CuImage(dir), default num_workers; tile cache cleared before each "
                       "repeat"),
        "wsidicom": (wd_open, wd_read, close, "WsiDicom.open(dir), read_region defaults (PIL RGB), np.asarray"),
        "OpenSlide": (os_open, os_read, close, "OpenSlide(level0.dcm), defaults; np.asarray of the RGBA PIL image"),
    }


def wsi_locations(n: int, width: int, height: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, width - WSI_SIZE + 1, n)
    ys = rng.integers(0, height - WSI_SIZE + 1, n)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def compare_wsi(openers: dict[str, Any], locs: list[tuple[int, int]]) -> dict[str, Any]:
    """Max and mean |difference| of each library's RGB pixels against cucim_like's (wsidicom's when cucim_like
    fails) over a few regions; exceptions are reported per library."""
    got: dict[str, Any] = {}
    for name, (opener, reader, close, _note) in openers.items():
        try:
            h = opener()
            read = reader(h)
            got[name] = [read(loc)[..., :3].astype(np.int16) for loc in locs]
            close(h)
        except Exception as exc:
            got[name] = describe(exc)
    ref = next((n for n in ("cucim_like", "wsidicom") if isinstance(got.get(n), list)), None)
    out: dict[str, Any] = {"reference": ref}
    for name, arrs in got.items():
        if name == ref:
            continue
        if not isinstance(arrs, list) or ref is None:
            out[name] = arrs if isinstance(arrs, str) else "no reference"
            continue
        try:
            diffs = [np.abs(a - b) for a, b in zip(got[ref], arrs, strict=True)]
            out[name] = {"max": int(max(d.max() for d in diffs)), "mean": round(float(np.mean([d.mean()
                                                                                          for d in diffs])), 4)}
        except Exception as exc:  # e.g. a shape mismatch
            out[name] = describe(exc)
    return out


FIRST_OPEN_CODE = """
import json, time
which, d, level0 = {which!r}, {d!r}, {level0!r}
if which == "cucim_like":
    from cucim_like import CuImage
    opener = lambda: CuImage(d)
    read = lambda h: h.read_region(location=(5000, 5000), size=(512, 512), level=0)
elif which == "wsidicom":
    from wsidicom import WsiDicom
    opener = lambda: WsiDicom.open(d)
    read = lambda h: h.read_region((5000, 5000), 0, (512, 512))
else:
    import openslide
    opener = lambda: openslide.OpenSlide(level0)
    read = lambda h: h.read_region((5000, 5000), 0, (512, 512))
t0 = time.perf_counter()
h = opener()
t1 = time.perf_counter()
read(h)
t2 = time.perf_counter()
print(json.dumps(dict(open=t1 - t0, open_and_read=t2 - t0)))
"""


def first_open(d: Path, names: list[str], runs: int) -> dict[str, Any]:
    """Open and open + first read in fresh processes (the library imported before timing), median of ``runs``."""
    out: dict[str, Any] = {}
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    errors: dict[str, str] = {}
    for _ in range(runs):
        for name in names:
            if name in errors:
                continue
            try:
                samples[name].append(run_child(FIRST_OPEN_CODE.format(
                    which=name, d=str(d), level0=str(d / make_dicom.LEVEL_FILES[0]))))
            except Exception as exc:
                errors[name] = describe(exc)
    for name in names:
        if name in errors:
            out[name] = {"error": errors[name]}
        else:
            s = samples[name]
            out[name] = {"open_s": median([x["open"] for x in s]),
                         "open_and_read_s": median([x["open_and_read"] for x in s]), "runs": len(s)}
    return out


def section_wsi(root: Path, repeats: int, reads: int, opens: int, first_runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant, what in make_dicom.VARIANTS.items():
        d = root / variant
        print(f"(wsi) {variant}: {what}", flush=True)
        openers = wsi_openers(d)
        import openslide

        with openslide.OpenSlide(str(d / make_dicom.LEVEL_FILES[0])) as slide:
            width, height = slide.dimensions
        locs = wsi_locations(reads, width, height, SEED)
        diffs = compare_wsi(openers, locs[:5])

        def read_prep(name: str, opener: Any, reader: Any, locs: list[tuple[int, int]] = locs
                      ) -> Callable[[], Callable[[], Any]]:
            def prepare() -> Callable[[], Any]:
                if name == "cucim_like":
                    clear_cucim_like_cache()
                read = reader(opener())
                return lambda: [read(loc) for loc in locs][-1]
            return prepare

        def first_read(opener: Any, reader: Any, loc: tuple[int, int] = locs[0]) -> Callable[[], Any]:
            def call() -> Any:
                h = opener()
                return h, reader(h)(loc)
            return call

        def before_first(name: str) -> Callable[[], None] | None:
            return clear_cucim_like_cache if name == "cucim_like" else None

        reads_c = [Contender(n, read_prep(n, o, r), note=note + "; fresh handle per repeat (untimed)")
                   for n, (o, r, _c, note) in openers.items()]
        open_c = [Contender(n, lambda o=o: o, note="new object per call; closed untimed", per_call=True,
                            calls=opens, after=c) for n, (o, _r, c, _note) in openers.items()]
        open_read_c = [Contender(n, lambda o=o, r=r: first_read(o, r), note="new object, then one 512x512 read",
                                 per_call=True, calls=opens, before=before_first(n),
                                 after=lambda res, c=c: c(res[0])) for n, (o, r, c, _note) in openers.items()]
        round_robin(open_c, repeats, f"{variant} open")
        round_robin(open_read_c, repeats, f"{variant} open+read")
        round_robin(reads_c, repeats, f"{variant} reads")
        res = {
            "what": what, "level0_wh": [width, height],
            "open": timing_table(f"{variant}: open ({what})", open_c, 1),
            "open_read": timing_table(f"{variant}: open + first 512x512 read at level 0", open_read_c, 1),
            "reads": timing_table(f"{variant}: {reads} random 512x512 reads at level 0 ({what})", reads_c, reads),
            "diff_vs_reference": diffs,
        }
        if first_runs:
            res["first_open"] = first_open(d, list(openers), first_runs)
            print(f"  [{variant} first open] {res['first_open']}", flush=True)
        out[variant] = res
    return out


# -- import ------------------------------------------------------------------------------------------------------
IMPORT_CODE = """
import json, sys, time
mode = {mode!r}
if mode == "numpy_preimported":
    import numpy
t0 = time.perf_counter()
import cucim_like
t1 = time.perf_counter()
loaded = sorted(m for m in ("pydicom", "wsidicom", "highdicom", "tifffile", "imagecodecs", "PIL", "simplejpeg")
                if m in sys.modules)
dicom_modules = sorted(m for m in sys.modules if "dicom" in m.lower())
print(json.dumps(dict(seconds=t1 - t0, loaded=loaded, pydicom="pydicom" in sys.modules, dicom_modules=dicom_modules)))
"""


def section_import(runs: int) -> dict[str, Any]:
    modes = {"cold": "import cucim_like (numpy included)", "numpy_preimported": "import cucim_like after numpy"}
    secs: dict[str, list[float]] = {m: [] for m in modes}
    last: dict[str, Any] = {}
    try:
        for _ in range(runs):
            for mode in modes:
                r = run_child(IMPORT_CODE.format(mode=mode))
                secs[mode].append(r["seconds"])
                last[mode] = r
    except Exception as exc:
        return {"error": describe(exc)}
    out: dict[str, Any] = {}
    for mode, what in modes.items():
        out[mode] = {"what": what, "median_ms": 1000 * median(secs[mode]), "min_ms": 1000 * min(secs[mode]),
                     "runs": runs, "pydicom_imported": last[mode]["pydicom"], "loaded": last[mode]["loaded"],
                     "dicom_modules": last[mode]["dicom_modules"]}
        print(f"(import) {what:<36} median {out[mode]['median_ms']:7.1f} ms; pydicom imported: "
              f"{last[mode]['pydicom']}", flush=True)
    return out


# -- native ------------------------------------------------------------------------------------------------------
def volume_reader_cucim_like(path: Path) -> Any:
    from cucim_like import CuImage

    return CuImage(path)


def read_frame_cucim_like(img: Any, index: int, side: int = make_dicom.VOLUME_SIDE) -> np.ndarray:
    return np.asarray(img.read_region(location=(0, 0, index), size=(side, side, 1)))


RSS_CODE = """
import json
which, path, index = {which!r}, {path!r}, {index}

""" + PROC_STATUS_CODE + """
import numpy as np
if which == "cucim_like":
    from cucim_like import CuImage
    def read():
        img = CuImage(path)
        arr = np.asarray(img.read_region(location=(0, 0, index), size=(256, 256, 1)))
        img.close()
        return arr
elif which == "pydicom.pixels.pixel_array":
    import pydicom, pydicom.pixels
    read = lambda: pydicom.pixels.pixel_array(path, index=index)
else:
    import pydicom, pydicom.pixels
    read = lambda: pydicom.dcmread(path).pixel_array[index]
base_rss, base_peak = proc_status("VmRSS"), proc_status("VmHWM")
arr = read()
print(json.dumps(dict(baseline_rss=base_rss, baseline_peak=base_peak, peak=proc_status("VmHWM"), shape=list(arr.shape),
                      first_pixel=int(np.asarray(arr).reshape(-1)[0]))))
"""


def native_rss(path: Path, runs: int) -> dict[str, Any]:
    """Peak RSS (VmHWM) of reading one frame in fresh subprocesses: after the imports, and its increment."""
    out: dict[str, Any] = {}
    for which in ("cucim_like", "pydicom.pixels.pixel_array", "pydicom.dcmread().pixel_array"):
        try:
            s = [run_child(RSS_CODE.format(which=which, path=str(path), index=NATIVE_FRAME)) for _ in range(runs)]
        except Exception as exc:
            out[which] = {"error": describe(exc)}
            print(f"(native rss) {which}: FAILED {out[which]['error']}", flush=True)
            continue
        peak = median([x["peak"] for x in s])
        base = median([x["baseline_peak"] for x in s])
        out[which] = {"peak_mib": peak / 2**20, "baseline_peak_mib": base / 2**20,
                      "baseline_rss_mib": median([x["baseline_rss"] for x in s]) / 2**20,
                      "delta_mib": (peak - base) / 2**20, "runs": runs, "shape": s[0]["shape"],
                      "first_pixel": s[0]["first_pixel"]}
        print(f"(native rss) {which:<32} peak {out[which]['peak_mib']:7.1f} MiB, after imports "
              f"{out[which]['baseline_peak_mib']:6.1f} MiB, delta {out[which]['delta_mib']:6.1f} MiB", flush=True)
    return out


def section_native(path: Path, repeats: int, calls: int, rss_runs: int) -> dict[str, Any]:
    import pydicom
    import pydicom.pixels

    print(f"(native) frame {NATIVE_FRAME} of {path.name} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    expected = pydicom.pixels.pixel_array(path, index=NATIVE_FRAME)
    check: dict[str, Any] = {}
    try:
        img = volume_reader_cucim_like(path)
        got = read_frame_cucim_like(img, NATIVE_FRAME)
        img.close()
        check["cucim_like"] = {"shape": list(got.shape), "dtype": str(got.dtype),
                               "equal_to_pydicom": bool(np.array_equal(np.squeeze(got), expected))}
    except Exception as exc:
        check["cucim_like"] = describe(exc)

    warm: dict[str, Any] = {}

    def warm_prepare() -> Callable[[], Any]:
        clear_cucim_like_cache()
        if "img" in warm:
            warm.pop("img").close()
        img = warm["img"] = volume_reader_cucim_like(path)
        read_frame_cucim_like(img, NATIVE_FRAME)  # untimed first read: the object is warm
        return lambda: read_frame_cucim_like(img, NATIVE_FRAME)

    def fresh_call() -> np.ndarray:
        img = volume_reader_cucim_like(path)
        arr = read_frame_cucim_like(img, NATIVE_FRAME)
        img.close()
        return arr

    contenders = [
        Contender("cucim_like", lambda: fresh_call, per_call=True, calls=calls, before=clear_cucim_like_cache,
                  note="fresh object per call: CuImage(path), read_region((0, 0, 500), (256, 256, 1)), close; "
                       "tile cache cleared before each call (untimed)"),
        Contender("cucim_like warm", warm_prepare, per_call=True, calls=calls,
                  note="one object opened and read once before timing; defaults (its tile cache may hold the frame)"),
        Contender("pydicom.pixels.pixel_array", lambda: lambda: pydicom.pixels.pixel_array(path, index=NATIVE_FRAME),
                  per_call=True, calls=calls, note="path API: pixel_array(path, index=500)"),
        Contender("pydicom dcmread().pixel_array", lambda: lambda: pydicom.dcmread(path).pixel_array[NATIVE_FRAME],
                  per_call=True, calls=max(1, calls // 100), note="dcmread(path).pixel_array[500] (all frames)"),
    ]
    round_robin(contenders, repeats, "native")
    if "img" in warm:
        warm.pop("img").close()
    res = {"calls_per_repeat": calls, "check": check,
           "time": timing_table(f"native: frame {NATIVE_FRAME} of 1000 uncompressed 256x256 uint16 frames, per call",
                                contenders, 1)}
    if rss_runs:
        res["rss"] = native_rss(path, rss_runs)
    return res


# -- jpeg-ls -----------------------------------------------------------------------------------------------------
def section_jpegls(path: Path, repeats: int, reads: int) -> dict[str, Any]:
    import imagecodecs
    import pydicom
    import pydicom.pixels
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    del ds
    rng = np.random.default_rng(SEED)
    indices = [int(i) for i in rng.choice(n, size=reads, replace=False)]
    print(f"(jpegls) {reads} random frames of {path.name} ({n} frames, {path.stat().st_size / 1e6:.1f} MB)",
          flush=True)

    check: dict[str, Any] = {}
    ref = {i: imagecodecs.jpegls_decode(frames[i]) for i in indices[:5]}
    try:
        img = volume_reader_cucim_like(path)
        got = {i: np.squeeze(read_frame_cucim_like(img, i)) for i in indices[:5]}
        img.close()
        check["cucim_like_equal_to_imagecodecs"] = all(np.array_equal(got[i], ref[i]) for i in ref)
    except Exception as exc:
        check["cucim_like_equal_to_imagecodecs"] = describe(exc)
    check["pydicom_equal_to_imagecodecs"] = all(
        np.array_equal(pydicom.pixels.pixel_array(path, index=i), ref[i]) for i in ref)

    held: dict[str, Any] = {}

    def cl_prepare() -> Callable[[], Any]:
        clear_cucim_like_cache()
        if "img" in held:
            held.pop("img").close()
        img = held["img"] = volume_reader_cucim_like(path)
        return lambda: [read_frame_cucim_like(img, i) for i in indices][-1]

    decode = imagecodecs.jpegls_decode
    contenders = [
        Contender("cucim_like", cl_prepare, note="one CuImage opened per repeat (untimed), read_region((0, 0, i), "
                  "(256, 256, 1)) per frame; tile cache cleared per repeat"),
        Contender("imagecodecs", lambda: lambda: [decode(frames[i]) for i in indices][-1],
                  note="jpegls_decode of frames already in memory (extracted with generate_frames, untimed)"),
        Contender("pydicom.pixels.pixel_array", lambda: lambda: [pydicom.pixels.pixel_array(path, index=i)
                                                                 for i in indices][-1],
                  note="path API: pixel_array(path, index=i) per frame (pyjpegls decoder)"),
    ]
    round_robin(contenders, repeats, "jpegls")
    if "img" in held:
        held.pop("img").close()
    return {"indices_head": indices[:10], "frame_kib_median": float(np.median([len(f) for f in frames])) / 1024,
            "check": check,
            "time": timing_table(f"jpegls: {reads} random frames of 1000 (JPEG-LS lossless, no BOT), one call each",
                                 contenders, reads)}


# -- targets and report --------------------------------------------------------------------------------------------
def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, rule: str, limit: float, unit: str = "x", why: str = "") -> None:
        ok = None if value is None else (value >= limit if rule == ">=" else value <= limit)
        out.append({"target": name, "value": None if value is None else round(value, 3), "rule": rule,
                    "limit": limit, "unit": unit, "pass": ok, "why": why})

    def row(table: dict[str, Any], name: str) -> dict[str, Any] | None:
        r = table["rows"].get(name)
        return r if r and "error" not in r else None

    def speedup(table: dict[str, Any], other: str) -> tuple[float | None, str]:
        cl, ot = row(table, "cucim_like"), row(table, other)
        if cl is None:
            return None, "cucim_like failed"
        if ot is None:
            return None, f"{other} failed"
        return ot["median_s"] / cl["median_s"], ""

    secs = results["sections"]
    for variant, w in secs.get("wsi", {}).items():
        for other, limit in (("wsidicom", 2.0), ("OpenSlide", 4.0)):
            v, why = speedup(w["reads"], other)
            add(f"{variant}: {w['reads']['calls']} reads, speed-up vs {other}", v, ">=", limit, why=why)
        cl = row(w["open"], "cucim_like")
        add(f"{variant}: open (new object, ms)", cl and 1000 * cl["median_s"], "<=", 20, "ms",
            "" if cl else "cucim_like failed")
    if "import" in secs and "error" not in secs["import"]:
        im = secs["import"]["cold"]
        add("import cucim_like does not import pydicom (1 = not imported)", float(not im["pydicom_imported"]),
            ">=", 1, "")
    if "native" in secs:
        t = secs["native"]["time"]
        for name in ("cucim_like", "cucim_like warm"):
            r = row(t, name)
            add(f"native frame 500, {name} (ms per call)", r and 1000 * r["median_s"], "<=", 1, "ms",
                "" if r else "cucim_like failed")
        rss = secs["native"].get("rss", {}).get("cucim_like")
        ok = rss is not None and "error" not in rss
        add("native frame 500, peak RSS of a fresh process (MiB)", rss["peak_mib"] if ok else None, "<=", 60,
            "MiB", "" if ok else "cucim_like failed")
    if "jpegls" in secs:
        t = secs["jpegls"]["time"]
        cl, ic = row(t, "cucim_like"), row(t, "imagecodecs")
        ratio = cl["median_s"] / ic["median_s"] if cl and ic else None
        add(f"jpegls {t['calls']} frames, time / imagecodecs", ratio, "<=", 1.1,
            why="" if cl else ("cucim_like failed" if ic else "imagecodecs failed"))
        v, why = speedup(t, "pydicom.pixels.pixel_array")
        add(f"jpegls {t['calls']} frames, speed-up vs pydicom", v, ">=", 1.8, why=why)
    return out


def table_lines(table: dict[str, Any]) -> list[str]:
    ratio_head = f"time / {table['ref']}"
    lines = [f"#### {table['title']}", "", f"| contender | median | min | per call | {ratio_head} | CPU median | "
             "samples | notes |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in table["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed | | | | | | `{r['error']}` ({r['note']}) |")
            continue
        ratio = f"{r['time_vs_ref']:.2f}" if r["time_vs_ref"] is not None else "n/a"
        lines.append(f"| {name} | {fmt_time(r['median_s'])} | {fmt_time(r['min_s'])} | {fmt_time(r['per_call_s'])} "
                     f"| {ratio} | {fmt_time(r['cpu_median_s'])} | {r['samples']} | {r['note']} |")
    if not table["ref_ok"]:
        lines += ["", f"{table['ref']} failed, so no ratios."]
    return [*lines, ""]


def wsi_lines(wsi: dict[str, Any]) -> list[str]:
    """One table for the three WSI variants: reads, open, open + first read and first open per contender."""
    first = next(iter(wsi.values()))
    reads = first["reads"]["calls"]
    w, h = first["level0_wh"]
    lines = [f"### WSI: {reads} random 512x512 reads at level 0 ({w}x{h}) and opening", "",
             f"| variant | contender | {reads} reads (median) | min | per read | time / cucim_like | CPU median | "
             "open | open / cucim_like | open + first read | first open, fresh process (+ first read) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes: dict[str, str] = {}
    for variant, res in wsi.items():
        for name, r in res["reads"]["rows"].items():
            notes.setdefault(name, r["note"])
            cells = [f"`{variant}`", name]
            if "error" in r:
                cells += ["failed", "", "", "", ""]
            else:
                ratio = "n/a" if r["time_vs_ref"] is None else f"{r['time_vs_ref']:.2f}"
                cells += [fmt_time(r["median_s"]), fmt_time(r["min_s"]), fmt_time(r["per_call_s"]), ratio,
                          fmt_time(r["cpu_median_s"])]
            for key in ("open", "open_read"):
                o = res[key]["rows"].get(name, {"error": "not run"})
                if "error" in o:
                    cells += ["failed"] + ([""] if key == "open" else [])
                    continue
                cells.append(fmt_time(o["median_s"]))
                if key == "open":
                    cells.append("n/a" if o["time_vs_ref"] is None else f"{o['time_vs_ref']:.2f}")
            f = res.get("first_open", {}).get(name)
            if f is None:
                cells.append("")
            elif "error" in f:
                cells.append("failed")
            else:
                cells.append(f"{fmt_time(f['open_s'])} (+ read: {fmt_time(f['open_and_read_s'])})")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Variants: " + "; ".join(f"`{v}` {res['what']}" for v, res in wsi.items()) + "."]
    lines += [f"- {name}: {note}." for name, note in notes.items()]
    opens = first["open"]["rows"]
    samples = next((r["samples"] for r in opens.values() if "samples" in r), 0)
    lines.append(f"- open: a new object per call, closed untimed, median of {samples} calls; open + first read: a "
                 "new object and one 512x512 read (cucim_like's cache cleared first), which shows lazy indexing.")
    runs = max((r.get("runs", 0) for res in wsi.values() for r in res.get("first_open", {}).values()), default=0)
    if runs:
        lines.append(f"- first open, fresh process: the library imported before timing, median of {runs} "
                     f"process{'es' if runs != 1 else ''}.")
    for variant, res in wsi.items():
        d = res["diff_vs_reference"]
        lines.append(f"- `{variant}` |pixel difference| vs {d['reference']} on 5 of the regions: "
                     + ", ".join(f"{k} {'failed' if isinstance(val, str) else val}" for k, val in d.items()
                                 if k != "reference") + ".")
    for variant, res in wsi.items():
        failed: dict[tuple[str, str], list[str]] = {}
        for key, what in (("reads", "reads"), ("open", "open"), ("open_read", "open + first read")):
            for name, r in res[key]["rows"].items():
                if "error" in r:
                    failed.setdefault((name, r["error"]), []).append(what)
        for name, f in res.get("first_open", {}).items():
            if "error" in f:
                failed.setdefault((name, f["error"]), []).append("first open")
        for (name, err), whats in failed.items():
            lines.append(f"- `{variant}`: {name} failed ({', '.join(whats)}): `{err}`")
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"## DICOM run of {results['date']}", "",
        *environment_lines(results, wall=True),
        "- Files (MiB): " + ", ".join(f"`{k}` {val}" for k, val in results["files_mib"].items()),
        f"- Repeats: {results['repeats']} per contender, round-robin in one process; medians shown; "
        "time / cucim_like > 1 means cucim_like is faster. Files are in the OS page cache (warm).", "",
    ]
    secs = results["sections"]
    if secs.get("wsi"):
        lines += wsi_lines(secs["wsi"])
    if "import" in secs:
        im = secs["import"]
        lines += ["### Import", ""]
        if "error" in im:
            lines.append(f"`import cucim_like` failed: `{im['error']}`")
        else:
            for r in im.values():
                lines.append(f"- {r['what']}: median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}) over {r['runs']} "
                             f"fresh processes; pydicom in sys.modules afterwards: {r['pydicom_imported']}; "
                             f"also loaded: {', '.join(r['loaded']) or 'none'}")
        lines.append("")
    if "native" in secs:
        n = secs["native"]
        lines += [f"### Native multi-frame (`{make_dicom.NATIVE_NAME}`)", ""]
        lines += table_lines(n["time"])
        lines.append(f"cucim_like check against pydicom's frame 500: {n['check'].get('cucim_like')}.")
        lines.append("")
        if "rss" in n:
            lines += ["Peak RSS of reading frame 500 once in a fresh process (VmHWM; baseline after the imports):", "",
                      "| reader | peak RSS | after imports | delta |", "|---|---:|---:|---:|"]
            for name, r in n["rss"].items():
                if "error" in r:
                    lines.append(f"| {name} | failed: `{r['error']}` | | |")
                else:
                    lines.append(f"| {name} | {r['peak_mib']:.1f} MiB | {r['baseline_peak_mib']:.1f} MiB | "
                                 f"{r['delta_mib']:.1f} MiB |")
            lines.append("")
    if "jpegls" in secs:
        j = secs["jpegls"]
        lines += [f"### JPEG-LS multi-frame without Basic Offset Table (`{make_dicom.JPEGLS_NAME}`), median frame "
                  f"{j['frame_kib_median']:.1f} KiB", ""]
        lines += table_lines(j["time"])
        lines += [f"Checks on 5 frames: {j['check']}.", ""]
    if results["targets"]:
        lines += ["### Targets", "", "| target | measured | rule | result |", "|---|---:|---|---|"]
        for t in results["targets"]:
            unit = f" {t['unit']}" if t["unit"] not in ("x", "") else ""
            value = "-" if t["value"] is None else f"{t['value']}{unit}"
            verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            if t["why"]:
                verdict += f" ({t['why']})"
            lines.append(f"| {t['target']} | {value} | {t['rule']} {t['limit']}{unit} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--repeats", type=int, default=5, help="repeats per contender (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer calls and repeats, for a smoke test")
    p.add_argument("--data", type=Path, default=make_dicom.DEFAULT_OUT, help="folder of make_dicom.py's files")
    p.add_argument("--json", type=Path, default=None,
                   help="results file (default: data/dicom-results.json, data/dicom-results-quick.json with --quick)")
    a = p.parse_args(argv)
    only = parse_sections(p, a.sections, SECTIONS)
    quick = a.quick
    repeats = 2 if quick and a.repeats == 5 else a.repeats
    if a.json is None:
        a.json = DATA / ("dicom-results-quick.json" if quick else "dicom-results.json")
    parts = [part for part, needed in (("wsi", "wsi"), ("native", "native"), ("jpegls", "jpegls")) if needed in only]
    if parts:
        make_dicom.main(["--out", str(a.data), "--only", ",".join(parts)])  # writes only what is missing

    results: dict[str, Any] = {**run_record(LIBRARIES, C_LIBRARIES), "files_mib": files_info(a.data),
                               "repeats": repeats, "quick": quick, "sections": {}}
    t0 = time.perf_counter()
    if "wsi" in only:
        results["sections"]["wsi"] = section_wsi(a.data, repeats, 40 if quick else WSI_READS, 3 if quick else 10,
                                                 1 if quick else 3)
    if "import" in only:
        results["sections"]["import"] = section_import(3 if quick else 10)
    if "native" in only:
        results["sections"]["native"] = section_native(a.data / make_dicom.NATIVE_NAME, repeats,
                                                       100 if quick else 200, 1 if quick else 3)
    if "jpegls" in only:
        results["sections"]["jpegls"] = section_jpegls(a.data / make_dicom.JPEGLS_NAME, repeats,
                                                       30 if quick else JPEGLS_READS)
    results["targets"] = targets(results)
    md = save_results(a.json, results, t0, markdown)
    print()
    print(md)
    print(f"wrote {a.json} and {a.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
