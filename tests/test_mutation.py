"""Mutation tests: a few hundred deterministic damaged variants of real and generated TIFFs, each opened and
read in a child process. The only allowed outcomes are success or a ``cucim_like.CucimLikeError`` subclass;
a crash, an abort, a hang, any other exception or a change to the file on disk fails the test.

Mutants: truncations, single and multiple byte flips in the header structures (IFD tables and out-of-line
tag values) and in tile data, edits of IFD entry counts, tag counts, tag types, inline tag values, tile
offsets/byte counts, the next-IFD link, and zeroed spans. Every mutant is derived from a seed, so a failure
names a reproducible file (kept under the test's tmp_path; passing mutants are deleted).
"""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cucim_like

from ._mutation_worker import file_state, review, run_jobs
from .conftest import SHARED_DATA, shared_file

# (file under ../shared/data, number of mutants)
REAL_FILES = [
    ("tiff/CMU-1-Small-Region.svs", 45),
    ("openslide-python/boxes.tiff", 60),
    ("openslide-python/small.svs", 50),
    ("tiff/multi-channel-z-series.ome.tif", 30),
]
GENERATED_MUTANTS = {"pyramid": 100, "strips": 50, "j2k": 50}
# CUCIM_LIKE_MUTATION_SCALE=10 runs ten times as many mutants (the same ones first): a longer fuzzing session.
SCALE = float(os.environ.get("CUCIM_LIKE_MUTATION_SCALE", "1"))

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_OFFSET_TAGS = (273, 324)  # StripOffsets, TileOffsets
_COUNT_TAGS = (279, 325)  # StripByteCounts, TileByteCounts
# Tags whose value steers parsing and reading: their inline values are mutated on purpose.
_KEY_TAGS = (254, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 330, 339, 347,
             32997, 32998)
_INTERESTING = (0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 4095, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)


# -- a minimal, independent TIFF structure walker (for the pristine files only) -------------------------------
@dataclass
class Entry:
    pos: int  # file offset of the 12/20-byte entry
    code: int
    type: int
    count: int
    value_pos: int  # where the value lies (inline: inside the entry)
    value_size: int


@dataclass
class Ifd:
    offset: int
    count_size: int  # bytes of the entry count field
    entry_count: int
    entries: list[Entry]
    next_pos: int  # where the next-IFD offset is stored


@dataclass
class Structure:
    byteorder: str
    big: bool
    ifds: list[Ifd] = field(default_factory=list)
    header_ranges: list[tuple[int, int]] = field(default_factory=list)
    data_ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def offset_fmt(self) -> str:
        return "Q" if self.big else "I"


def parse_structure(data: bytes) -> Structure:
    bo = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(bo + "H", data, 2)[0] == 43
    st = Structure(bo, big)
    first = struct.unpack_from(bo + ("Q" if big else "I"), data, 8 if big else 4)[0]
    todo, seen = [first], set()
    while todo and len(seen) < 200:
        off = todo.pop(0)
        if not off or off in seen or off >= len(data):
            continue
        seen.add(off)
        ifd = _parse_ifd(data, st, off)
        st.ifds.append(ifd)
        todo.append(struct.unpack_from(bo + st.offset_fmt, data, ifd.next_pos)[0])
        for e in ifd.entries:
            if e.code == 330:  # SubIFDs
                todo.extend(_values(data, st, e))
    for ifd in st.ifds:
        by_code = {e.code: e for e in ifd.entries}
        for oc, cc in zip(_OFFSET_TAGS, _COUNT_TAGS, strict=True):
            if oc in by_code and cc in by_code:
                offs = _values(data, st, by_code[oc])
                counts = _values(data, st, by_code[cc])
                st.data_ranges.extend((o, o + c) for o, c in zip(offs, counts, strict=False) if c > 0)
    return st


def _parse_ifd(data: bytes, st: Structure, off: int) -> Ifd:
    bo = st.byteorder
    count_size, entry_size, inline = (8, 20, 8) if st.big else (2, 12, 4)
    n = struct.unpack_from(bo + ("Q" if st.big else "H"), data, off)[0]
    entries = []
    for i in range(n):
        pos = off + count_size + entry_size * i
        if st.big:
            code, typ, count = struct.unpack_from(bo + "HHQ", data, pos)
            field_pos = pos + 12
        else:
            code, typ, count = struct.unpack_from(bo + "HHI", data, pos)
            field_pos = pos + 8
        size = _TYPE_SIZES.get(typ, 1) * count
        value_pos = field_pos if size <= inline else struct.unpack_from(bo + st.offset_fmt, data, field_pos)[0]
        entries.append(Entry(pos, code, typ, count, value_pos, size))
        if size > inline:
            st.header_ranges.append((value_pos, value_pos + min(size, 4096)))
    end = off + count_size + entry_size * n
    st.header_ranges.append((off, end + (8 if st.big else 4)))
    return Ifd(off, count_size, n, entries, end)


def _values(data: bytes, st: Structure, e: Entry) -> list[int]:
    fmt = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}.get(e.type)
    if fmt is None:
        return []
    return list(struct.unpack_from(f"{st.byteorder}{e.count}{fmt}", data, e.value_pos))


# -- mutations --------------------------------------------------------------------------------------------------
def _put(data: bytearray, st: Structure, fmt: str, pos: int, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= pos and pos + size <= len(data):
        struct.pack_into(st.byteorder + fmt, data, pos, value & ((1 << (8 * size)) - 1))


def _flip(data: bytearray, rng: random.Random, ranges: list[tuple[int, int]], n: int) -> str:
    spots = []
    for _ in range(n):
        a, b = rng.choice(ranges)
        pos = rng.randrange(a, min(b, len(data)))
        data[pos] ^= rng.randrange(1, 256)
        spots.append(pos)
    return ",".join(map(str, spots))


def mutate(original: bytes, st: Structure, rng: random.Random) -> tuple[bytes, str]:
    """One mutant of ``original`` and a short description of what was done."""
    data = bytearray(original)
    kind = rng.choices(
        ["truncate", "flip-header", "flips-header", "flip-data", "ifd-count", "tag-count", "tag-value",
         "tag-type", "tile-entry", "next-ifd", "zero-span"],
        weights=[12, 14, 10, 10, 8, 8, 16, 5, 10, 4, 3],
    )[0]
    ifd = rng.choice(st.ifds)
    entry = rng.choice(ifd.entries)
    if kind == "truncate":
        header_end = max(b for _, b in st.header_ranges)
        cut = rng.randrange(0, min(len(data), header_end + 64)) if rng.random() < 0.5 else rng.randrange(len(data))
        return bytes(data[:cut]), f"truncate at {cut}"
    if kind in ("flip-header", "flips-header"):
        spots = _flip(data, rng, st.header_ranges, 1 if kind == "flip-header" else rng.randrange(2, 9))
        return bytes(data), f"flip header bytes {spots}"
    if kind == "flip-data":
        spots = _flip(data, rng, st.data_ranges or st.header_ranges, rng.randrange(1, 17))
        return bytes(data), f"flip data bytes {spots}"
    if kind == "ifd-count":
        n = ifd.entry_count
        value = rng.choice([0, 1, n - 1, n + 1, n + rng.randrange(2, 60), 0xFFFF, 2**32 - 1 if st.big else 0x8000])
        _put(data, st, "Q" if st.big else "H", ifd.offset, value)
        return bytes(data), f"IFD@{ifd.offset} entry count {n}->{value}"
    if kind == "tag-count":
        value = rng.choice([0, 1, entry.count - 1, entry.count + 1, entry.count * 2, 2**31 - 1, 2**32 - 1,
                            rng.randrange(2**16)])
        _put(data, st, "Q" if st.big else "I", entry.pos + 4, value)
        return bytes(data), f"tag {entry.code}@{entry.pos} count {entry.count}->{value}"
    if kind == "tag-value":
        keyed = [e for e in ifd.entries if e.code in _KEY_TAGS] or ifd.entries
        entry = rng.choice(keyed)
        value = rng.choice([*_INTERESTING, rng.randrange(2**32)])
        fmt = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}.get(entry.type, "B")
        _put(data, st, fmt, entry.value_pos, value)
        return bytes(data), f"tag {entry.code} value -> {value} ({fmt})"
    if kind == "tag-type":
        value = rng.randrange(0, 20)
        _put(data, st, "H", entry.pos + 2, value)
        return bytes(data), f"tag {entry.code}@{entry.pos} type {entry.type}->{value}"
    if kind == "tile-entry":
        by_code = {e.code: e for e in ifd.entries}
        code = rng.choice([c for c in (*_OFFSET_TAGS, *_COUNT_TAGS) if c in by_code] or [entry.code])
        e = by_code.get(code, entry)
        item = _TYPE_SIZES.get(e.type, 1)
        index = rng.randrange(max(1, e.count))
        value = rng.choice([0, 1, len(original) - 1, len(original) + rng.randrange(1, 1 << 20), 2**31 - 1,
                            2**32 - 1, 2**40, rng.randrange(len(original))])
        fmt = {2: "H", 4: "I", 8: "Q"}.get(item, "B")
        _put(data, st, fmt, e.value_pos + index * item, value)
        return bytes(data), f"tag {code}[{index}] -> {value}"
    if kind == "next-ifd":
        value = rng.choice([ifd.offset, st.ifds[0].offset, len(original) + 8, 1, rng.randrange(len(original))])
        _put(data, st, st.offset_fmt, ifd.next_pos, value)
        return bytes(data), f"next IFD of {ifd.offset} -> {value}"
    start = rng.randrange(len(data))
    length = rng.randrange(16, 4097)
    data[start : start + length] = bytes(len(data[start : start + length]))
    return bytes(data), f"zero {length} bytes at {start}"


# -- the files --------------------------------------------------------------------------------------------------
def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus a little noise: compresses like a slide, survives JPEG."""
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(0, 16, (h, w, 3))
    img = np.stack([(xx * 255) // max(w, 1), (yy * 255) // max(h, 1), ((xx + yy) * 127) // max(h + w, 1)], -1)
    return (img + noise).clip(0, 255).astype(np.uint8)


def generated_files(root: Path) -> dict[str, Path]:
    """Three files written here, so the test runs on a fresh clone: a tiled pyramid whose levels use JPEG,
    deflate (predictor), LZW, zstd and no compression; a big-endian BigTIFF of planar 16-bit strips; a
    pyramid of JPEG 2000, WebP, LZMA and PackBits tiles."""
    root.mkdir(parents=True, exist_ok=True)
    pyramid = root / "gen-pyramid.tif"
    base = _image(192, 256, 1)
    with tifffile.TiffWriter(pyramid) as tw:
        tw.write(base, tile=(64, 64), compression="jpeg", photometric="rgb")
        tw.write(base[::2, ::2], tile=(32, 32), compression="zlib", predictor=2, photometric="rgb")
        tw.write(base[::4, ::4], tile=(32, 32), compression="lzw", photometric="rgb")
        tw.write(base[::8, ::8], tile=(16, 16), compression="zstd", photometric="rgb")
        tw.write(base[::16, ::16], tile=(16, 16), compression=None, photometric="rgb")
    strips = root / "gen-strips.tif"
    img16 = np.ascontiguousarray((_image(100, 70, 2).astype(np.uint16) * 257).transpose(2, 0, 1))  # planar
    with tifffile.TiffWriter(strips, bigtiff=True, byteorder=">") as tw:
        tw.write(img16, rowsperstrip=16, compression="zlib", predictor=2, photometric="rgb", planarconfig="separate")
        tw.write(img16[:, ::2, ::2], rowsperstrip=8, compression="packbits", photometric="rgb",
                 planarconfig="separate")
    j2k = root / "gen-j2k.tif"
    small = _image(128, 128, 3)
    with tifffile.TiffWriter(j2k) as tw:
        tw.write(small, tile=(64, 64), compression="jpeg2000", photometric="rgb")
        tw.write(small[::2, ::2], tile=(32, 32), compression="webp", photometric="rgb")
        tw.write(small[::4, ::4], tile=(16, 16), compression="lzma", photometric="rgb")
        tw.write(small[::8, ::8], tile=(16, 16), compression="packbits", photometric="rgb")
    return {"pyramid": pyramid, "strips": strips, "j2k": j2k}


def _seed(name: str, k: int) -> int:
    return zlib.crc32(f"{name}#{k}".encode())


def _make_mutants(name: str, source: Path, count: int, out: Path) -> list[dict]:
    original = source.read_bytes()
    st = parse_structure(original)
    mutants = []
    for k in range(max(1, round(count * SCALE))):
        rng = random.Random(_seed(name, k))
        data, what = mutate(original, st, rng)
        path = out / f"{name}-{k:03d}{source.suffix}"
        path.write_bytes(data)
        mutants.append({"path": str(path), "source": name, "what": what, "identity": file_state(path)})
    return mutants


def _available_real_files() -> list[tuple[str, Path, int]]:
    found = []
    for rel, count in REAL_FILES:
        path = SHARED_DATA / rel
        if path.exists():
            found.append((Path(rel).stem, path, count))
    return found


# -- the test ---------------------------------------------------------------------------------------------------
def test_mutants_fail_only_with_typed_errors(tmp_path):
    t0 = time.monotonic()
    out = tmp_path / "mutants"
    out.mkdir()
    mutants: list[dict] = []
    for name, path in generated_files(tmp_path / "pristine").items():
        mutants += _make_mutants(f"gen-{name}", path, GENERATED_MUTANTS[name], out)
    for name, path, count in _available_real_files():
        mutants += _make_mutants(name, path, count, out)

    results = run_jobs([{"path": m["path"], "ops": None} for m in mutants], tmp_path / "work")
    problems, outcomes, by_source, without_path = review(mutants, results)
    elapsed = time.monotonic() - t0
    print(f"\n{len(mutants)} mutants in {elapsed:.1f} s: {dict(outcomes.most_common())}")
    for source, counter in by_source.items():
        print(f"  {source}: {dict(counter.most_common())}")
    if without_path:
        print(f"  typed errors not naming the mutant's path: {dict(without_path)}")
    assert not problems, f"{len(problems)} mutants misbehaved:\n" + "\n".join(problems[:40])
    for m in mutants:  # keep failures only (above, the assertion kept them all)
        os.unlink(m["path"])
    assert len(mutants) >= 150 * min(SCALE, 1)


def test_harness_sees_crashes_hangs_and_untyped_errors(tmp_path):
    """The child-process harness names the culprit of an abort and of a hang, and goes on with the next job."""
    good = generated_files(tmp_path / "files")["pyramid"]
    jobs = [
        {"path": str(good), "ops": [["region", 0, 0, 16, 16, 0, 1]]},
        {"path": str(good), "ops": [["selftest-abort"]]},
        {"path": str(good), "ops": [["selftest-raise"]]},
        {"path": str(good), "ops": [["selftest-sleep", 30]]},
        {"path": str(tmp_path / "missing.tif"), "ops": []},
    ]
    results = run_jobs(jobs, tmp_path / "work", job_timeout=4)
    assert [r["status"] for r in results] == ["done", "crash", "done", "hang", "done"]
    assert results[0]["outcomes"][1] == {"op": ["region", 0, 0, 16, 16, 0, 1], "ok": True}
    assert results[1]["returncode"] != 0
    raised = results[2]["outcomes"][1]
    assert raised["exc"] == "IndexError" and not raised["typed"]
    missing = results[4]["outcomes"][0]
    assert missing["exc"] == "ImageFileNotFoundError" and missing["typed"]
    assert missing["path"] == str(tmp_path / "missing.tif")


def test_structure_walker_sees_the_generated_files(tmp_path):
    """The mutator's own view of the files is right (otherwise header mutations would land in random places)."""
    files = generated_files(tmp_path)
    for name, path in files.items():
        data = path.read_bytes()
        st = parse_structure(data)
        with tifffile.TiffFile(path) as tf:
            assert len(st.ifds) == len(tf.pages), name
            expected = sum(int(c > 0) for p in tf.pages for c in p.databytecounts)
        assert len(st.data_ranges) == expected
        assert all(0 < a < b <= len(data) for a, b in st.data_ranges)
        assert all(0 <= a < b <= len(data) for a, b in st.header_ranges)


def test_mutations_are_deterministic(tmp_path):
    path = generated_files(tmp_path)["pyramid"]
    original = path.read_bytes()
    st = parse_structure(original)
    first = [mutate(original, st, random.Random(_seed("x", k))) for k in range(20)]
    again = [mutate(original, st, random.Random(_seed("x", k))) for k in range(20)]
    assert first == again
    assert sum(d != original for d, _ in first) >= 15


@pytest.mark.parametrize("rel", [rel for rel, _ in REAL_FILES])
def test_real_files_read_cleanly_before_mutation(rel):
    """The pristine real files open and read: otherwise their mutants would measure nothing."""
    path = shared_file(rel)
    with cucim_like.CuImage(path) as img:
        last = len(img.levels) - 1
        arr = img.read_region(level=last)
        assert arr.shape[-3:-1] == (img.levels[last].height, img.levels[last].width)
