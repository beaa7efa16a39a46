"""Bad input, case by case: damaged files and wrong arguments get a typed cucim_like error that names the path
(and the level and tile when it is about one), never a crash, a hang, an oversized allocation or a change to
the file on disk.

The files are small tiled TIFFs written here with tifffile (uncompressed, JPEG, deflate, LZW, zstd), then
patched with ``struct``: absurd ImageWidth/ImageLength/tile sizes, absurd or zero TileByteCounts, TileOffsets
past the end, truncations at several points, zeroed or garbage tile payloads. Cases whose danger is an
allocation sized by a header run in a child process whose address space is capped (``RLIMIT_AS``), so such an
allocation fails loudly instead of succeeding on a large machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cucim_like
from cucim_like import (
    CorruptFileError,
    CucimLikeError,
    CuImage,
    DecodeError,
    ImageFileNotFoundError,
    InvalidArgumentError,
    LevelError,
    UnknownAssociatedImageError,
    UnsupportedFormatError,
)

from ._mutation_worker import run_jobs

H, W, T = 96, 128, 32  # 3 x 4 tiles of 32 x 32
GRID = (H // T, W // T)
CODECS = {"none": None, "jpeg": "jpeg", "deflate": "zlib", "lzw": "lzw", "zstd": "zstd"}
# Decoders that must reject a tile of zeros or of random bytes (PackBits and raw samples accept anything).
MORE_CODECS = {"jpeg2000": "jpeg2000", "webp": "webp", "lzma": "lzma", "packbits": "packbits"}
STRICT = {"jpeg", "deflate", "lzw", "zstd", "jpeg2000", "webp", "lzma"}
TILE = (1, 1)  # the tile the tests damage: second row, second column
TILE_INDEX = TILE[0] * GRID[1] + TILE[1]

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_FORMATS = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}


def _image(h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(7).integers(0, 24, (h, w, 3))
    img = np.stack([(xx * 2) % 256, (yy * 2) % 256, (xx + yy) % 256], -1) + noise
    return img.clip(0, 255).astype(np.uint8)


def write_tiff(path: Path, compression: str | None, *, bigtiff: bool = False, image: np.ndarray | None = None,
               tile: tuple[int, int] = (T, T)) -> Path:
    tifffile.imwrite(path, _image() if image is None else image, tile=tile, compression=compression,
                     photometric="rgb", bigtiff=bigtiff)
    return path


# -- byte patching of the first IFD with struct ------------------------------------------------------------------
class TiffPatch:
    """The bytes of a TIFF and the entries of one of its IFDs (the first by default), for patching tag values."""

    def __init__(self, data: bytes, page: int = 0) -> None:
        self.data = bytearray(data)
        self.bo = "<" if data[:2] == b"II" else ">"
        self.big = struct.unpack_from(self.bo + "H", data, 2)[0] == 43
        self.ofmt = "Q" if self.big else "I"
        self.ifd = struct.unpack_from(self.bo + self.ofmt, data, 8 if self.big else 4)[0]
        count_fmt, self.count_size, self.entry_size = ("Q", 8, 20) if self.big else ("H", 2, 12)
        for _ in range(page):  # follow the next-IFD links
            n = struct.unpack_from(self.bo + count_fmt, data, self.ifd)[0]
            link = self.ifd + self.count_size + self.entry_size * n
            self.ifd = struct.unpack_from(self.bo + self.ofmt, data, link)[0]
        self.entry_count = struct.unpack_from(self.bo + count_fmt, data, self.ifd)[0]
        self.entries: dict[int, int] = {}  # tag code -> position of its entry
        for i in range(self.entry_count):
            pos = self.ifd + self.count_size + self.entry_size * i
            self.entries[struct.unpack_from(self.bo + "H", data, pos)[0]] = pos

    @property
    def ifd_end(self) -> int:
        return self.ifd + self.count_size + self.entry_size * self.entry_count

    def _entry(self, code: int) -> tuple[int, int, int, int]:
        """(entry position, type, count, position of the value field)."""
        pos = self.entries[code]
        typ, count = struct.unpack_from(self.bo + ("HQ" if self.big else "HI"), self.data, pos + 2)
        return pos, typ, count, pos + (12 if self.big else 8)

    def values(self, code: int) -> list[int]:
        _, typ, count, field = self._entry(code)
        start = field
        if _TYPE_SIZES[typ] * count > (8 if self.big else 4):
            start = struct.unpack_from(self.bo + self.ofmt, self.data, field)[0]
        return list(struct.unpack_from(f"{self.bo}{count}{_FORMATS[typ]}", self.data, start))

    def set_values(self, code: int, values: list[int]) -> None:
        """Write ``values`` as the tag's value: in place when the type and count allow, else as an array of
        LONG (LONG8 in BigTIFF) appended at the end of the file, the entry changed to point at it."""
        pos, typ, count, field = self._entry(code)
        fits = all(0 <= v < 1 << (8 * _TYPE_SIZES[typ]) for v in values)
        if fits and len(values) == count:
            start = field
            if _TYPE_SIZES[typ] * count > (8 if self.big else 4):
                start = struct.unpack_from(self.bo + self.ofmt, self.data, field)[0]
            struct.pack_into(f"{self.bo}{count}{_FORMATS[typ]}", self.data, start, *values)
            return
        new_type, fmt = (16, "Q") if self.big else (4, "I")
        packed = struct.pack(f"{self.bo}{len(values)}{fmt}", *values)
        inline = 8 if self.big else 4
        count_fmt = "Q" if self.big else "I"
        struct.pack_into(self.bo + "H" + count_fmt, self.data, pos + 2, new_type, len(values))
        if len(packed) <= inline:
            self.data[field : field + inline] = packed.ljust(inline, b"\0")
        else:
            self.data += b"\0" * (len(self.data) % 2)
            struct.pack_into(self.bo + self.ofmt, self.data, field, len(self.data))
            self.data += packed

    def replace_entry(self, code: int, new_code: int, new_type: int, value: int) -> None:
        """Overwrite the entry of ``code`` with a one-value entry (the caller keeps the codes sorted)."""
        pos = self.entries.pop(code)
        fmt = "HHQQ" if self.big else "HHII"
        struct.pack_into(self.bo + fmt, self.data, pos, new_code, new_type, 1, 0)
        struct.pack_into(self.bo + _FORMATS[new_type], self.data, pos + (12 if self.big else 8), value)
        self.entries[new_code] = pos

    def set_value(self, code: int, value: int) -> None:
        self.set_values(code, [value])

    def set_item(self, code: int, index: int, value: int) -> None:
        vals = self.values(code)
        vals[index] = value
        self.set_values(code, vals)

    def save(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


def patched(src: Path, dst: Path, edit) -> Path:
    patch = TiffPatch(src.read_bytes())
    edit(patch)
    return patch.save(dst)


# -- checks ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def unchanged(*paths: Path):
    """The files' bytes, size and modification time are the same after the block."""
    def state(p: Path):
        if not p.exists() or p.is_dir():
            return None
        st = p.stat()
        return hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns

    before = [state(p) for p in paths]
    yield
    assert [state(p) for p in paths] == before, "a read modified the file on disk"


def check_error(err: BaseException, cls: type, path: Path, *, level: int | None = None,
                tile: tuple[int, ...] | None = None) -> None:
    """``err`` is a ``cls`` (a CucimLikeError) naming ``path`` and, when given, ``level`` and ``tile``."""
    assert isinstance(err, cls), f"{type(err).__name__}: {err}"
    assert isinstance(err, CucimLikeError)
    assert err.path == str(path), err
    assert str(path) in str(err)
    if level is not None:
        assert err.level == level, err
        assert f"level={level}" in str(err)
    if tile is not None:
        assert tuple(err.tile) == tile, err
        assert f"tile={tile}" in str(err)


def open_and_read(path: Path, **kwargs) -> np.ndarray:
    with CuImage(path) as img:
        return img.read_region(**kwargs)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    return {name: write_tiff(root / f"{name}.tif", comp) for name, comp in CODECS.items()}


@pytest.fixture(scope="module")
def reference(pristine) -> dict[str, np.ndarray]:
    return {name: open_and_read(path) for name, path in pristine.items()}


# -- not an image ----------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    for path in (tmp_path / "missing.tif", tmp_path / "no" / "such" / "dir.svs"):
        with pytest.raises(FileNotFoundError) as ei:
            CuImage(path)
        check_error(ei.value, ImageFileNotFoundError, path)


def test_directory(tmp_path):
    with unchanged(tmp_path), pytest.raises(ValueError) as ei:
        CuImage(tmp_path)
    check_error(ei.value, UnsupportedFormatError, tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with unchanged(path), pytest.raises(ValueError) as ei:
        CuImage(path)
    check_error(ei.value, UnsupportedFormatError, path)


@pytest.mark.parametrize(
    "content",
    [b"hello, world\n" * 40, b"\x89PNG\r\n\x1a\n" + bytes(200), b"\xff\xd8\xff\xe0" + bytes(100), bytes(4096),
     b"II", b"II*", b"MM\x00", b"%PDF-1.4\n"],
    ids=["text", "png", "jpeg", "zeros", "II", "II*", "MM", "pdf"],
)
def test_not_a_tiff(tmp_path, content):
    path = tmp_path / "not.tif"
    path.write_bytes(content)
    with unchanged(path), pytest.raises(ValueError) as ei:
        CuImage(path)
    check_error(ei.value, UnsupportedFormatError, path)


@pytest.mark.parametrize(
    "content",
    [b"II*\x00", b"II*\x00\x00\x00\x00\x00", b"II*\x00\x08\x00\x00\x00", b"MM\x00*\x00\x00\x00\x08\x00",
     b"II*\x00\xff\xff\xff\x7f" + bytes(32), b"II+\x00\x08\x00\x00\x00\x10" + bytes(7),
     b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"],
    ids=["magic-only", "ifd-0", "ifd-at-eof", "mm-short", "ifd-past-eof", "bigtiff-no-ifd", "zero-entries"],
)
def test_tiff_without_an_image(tmp_path, content):
    path = tmp_path / "header.tif"
    path.write_bytes(content)
    with unchanged(path), pytest.raises(OSError) as ei:
        CuImage(path)
    check_error(ei.value, CorruptFileError, path)


# -- truncation -------------------------------------------------------------------------------------------------
def _cut_points(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    patch = TiffPatch(data)
    offsets = patch.values(324)
    counts = patch.values(325)
    first = min(offsets)
    return {
        "after-magic": 4,
        "after-header": 8,
        "inside-ifd": patch.ifd + patch.count_size + patch.entry_size * 3 + 5,
        "after-ifd": patch.ifd_end + 4,
        "before-data": first - 1,
        "at-data": first,
        "inside-tile": offsets[TILE_INDEX] + counts[TILE_INDEX] // 2,
        "before-last-byte": len(data) - 1,
    }


@pytest.mark.parametrize("where", ["after-magic", "after-header", "inside-ifd", "after-ifd", "before-data"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_truncated_header(pristine, tmp_path, codec, where):
    src = pristine[codec]
    cut = _cut_points(src)[where]
    path = tmp_path / "cut.tif"
    path.write_bytes(src.read_bytes()[:cut])
    with unchanged(path), pytest.raises(OSError) as ei:
        open_and_read(path)
    check_error(ei.value, CorruptFileError, path)


@pytest.mark.parametrize("where", ["at-data", "inside-tile", "before-last-byte"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_truncated_tile_data(pristine, reference, tmp_path, codec, where):
    src = pristine[codec]
    cut = _cut_points(src)[where]
    path = tmp_path / "cut.tif"
    path.write_bytes(src.read_bytes()[:cut])
    patch = TiffPatch(src.read_bytes())
    offsets, counts = patch.values(324), patch.values(325)
    # the first tile (row-major) whose bytes no longer fit in the file is the one the error names
    broken = [i for i in range(len(offsets)) if offsets[i] + counts[i] > cut]
    first = divmod(broken[0], GRID[1])
    with unchanged(path), CuImage(path) as img:
        with pytest.raises(OSError) as ei:
            img.read_region()
        check_error(ei.value, CorruptFileError, path, level=0, tile=first)
        intact = [i for i in range(len(offsets)) if i not in broken]
        if intact:  # tiles before the cut still read, and read right
            ty, tx = divmod(intact[0], GRID[1])
            part = img.read_region((tx * T, ty * T), (T, T))
            np.testing.assert_array_equal(part, reference[codec][ty * T : ty * T + T, tx * T : tx * T + T])


def test_truncated_after_open(pristine, tmp_path):
    """A file cut short while it is open: the short read is a CorruptFileError naming the tile."""
    path = tmp_path / "shrinking.tif"
    data = pristine["deflate"].read_bytes()
    path.write_bytes(data)
    offsets = TiffPatch(data).values(324)
    with CuImage(path) as img:
        os.truncate(path, offsets[TILE_INDEX] + 3)
        with pytest.raises(CorruptFileError) as ei:
            img.read_region((TILE[1] * T, TILE[0] * T), (T, T), num_workers=1)
        check_error(ei.value, CorruptFileError, path, level=0, tile=TILE)


# -- tile offsets and byte counts -------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("how", ["past-eof", "far-past-eof", "max-u32", "overlaps-eof"])
def test_tile_offset_past_end(pristine, reference, tmp_path, codec, how):
    src = pristine[codec]
    size = src.stat().st_size
    counts = TiffPatch(src.read_bytes()).values(325)
    value = {"past-eof": size + 100, "far-past-eof": size + (1 << 30), "max-u32": 2**32 - 1,
             "overlaps-eof": size - counts[TILE_INDEX] // 2}[how]
    path = patched(src, tmp_path / "offset.tif", lambda p: p.set_item(324, TILE_INDEX, value))
    with unchanged(path), CuImage(path) as img:
        for workers in (1, 2):
            with pytest.raises(CorruptFileError) as ei:
                img.read_region(num_workers=workers)
            check_error(ei.value, CorruptFileError, path, level=0, tile=TILE)
        np.testing.assert_array_equal(img.read_region((0, 0), (T, T)), reference[codec][:T, :T])


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("value", [2**32 - 1, 2**31, 1 << 24])
def test_absurd_byte_count(pristine, tmp_path, codec, value):
    path = patched(pristine[codec], tmp_path / "count.tif", lambda p: p.set_item(325, TILE_INDEX, value))
    with unchanged(path), CuImage(path) as img:
        with pytest.raises(CorruptFileError) as ei:
            img.read_region((T, T), (2 * T, T))
        check_error(ei.value, CorruptFileError, path, level=0, tile=TILE)


@pytest.mark.parametrize(
    ("offset", "count"),
    [(2**40, None), (2**63 - 16, None), (2**64 - 1, None), (None, 2**40), (None, 2**63 - 1), (None, 2**64 - 1),
     (2**62, 2**62), (2**63 - 16, 2**63 - 1), (2**64 - 1, 2**64 - 1)],
)
def test_bigtiff_64bit_offsets_and_counts(tmp_path, offset, count):
    """BigTIFF's unsigned 64-bit fields: values past 2**63 and sums that would overflow int64 are refused for
    the tile they describe, when it is read; the file still opens and its other tiles read."""
    src = write_tiff(tmp_path / "big.tif", "zlib", bigtiff=True)
    patch = TiffPatch(src.read_bytes())
    if offset is not None:
        patch.set_item(324, TILE_INDEX, offset)
    if count is not None:
        patch.set_item(325, TILE_INDEX, count)
    path = patch.save(tmp_path / "big-patched.tif")
    with unchanged(path), CuImage(path) as img, warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent int64 overflow on the way
        for workers in (1, 2):
            with pytest.raises(CorruptFileError) as ei:
                img.read_region(num_workers=workers)
            check_error(ei.value, CorruptFileError, path, level=0, tile=TILE)
        assert img.read_region((0, 0), (T, T)).shape == (T, T, 3)


@pytest.mark.parametrize("codec", list(CODECS))
def test_zero_byte_count_is_a_missing_tile_read_as_fill(pristine, reference, tmp_path, codec):
    path = patched(pristine[codec], tmp_path / "sparse.tif", lambda p: p.set_item(325, TILE_INDEX, 0))
    box = (slice(TILE[0] * T, TILE[0] * T + T), slice(TILE[1] * T, TILE[1] * T + T))
    with unchanged(path), CuImage(path) as img:
        for fill, expected in ((None, 0), (77, 77)):
            arr = img.read_region(fill=fill)
            assert (arr[box] == expected).all()
            rest = arr.copy()
            rest[box] = reference[codec][box]
            np.testing.assert_array_equal(rest, reference[codec])


def test_all_tiles_missing_reads_as_fill(pristine, tmp_path):
    path = patched(pristine["jpeg"], tmp_path / "empty-tiles.tif", lambda p: p.set_values(325, [0] * 12))
    with unchanged(path), CuImage(path) as img:
        assert (img.read_region(fill=200) == 200).all()
        assert (img.read_region((10, 10), (50, 50)) == 0).all()


# -- corrupt tile payloads ---------------------------------------------------------------------------------------
def _payload_file(tmp_path: Path, codec: str, how: str) -> Path:
    compression = {**CODECS, **MORE_CODECS}[codec]
    src = write_tiff(tmp_path / f"{codec}.tif", compression)
    patch = TiffPatch(src.read_bytes())
    off, count = patch.values(324)[TILE_INDEX], patch.values(325)[TILE_INDEX]
    rng = np.random.default_rng(11)
    if how == "zeroed":
        patch.data[off : off + count] = bytes(count)
    elif how == "garbage":
        patch.data[off : off + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    elif how == "garbage-body":  # the stream's header survives, its body does not
        keep = max(16, count // 5)
        patch.data[off + keep : off + count] = rng.integers(0, 256, count - keep, dtype=np.uint8).tobytes()
    elif how == "half-count":
        patch.set_item(325, TILE_INDEX, count // 2)
    elif how == "one-byte":
        patch.set_item(325, TILE_INDEX, 1)
    return patch.save(tmp_path / f"{codec}-{how}.tif")


@pytest.mark.parametrize("how", ["zeroed", "garbage", "garbage-body", "half-count", "one-byte"])
@pytest.mark.parametrize("codec", [*CODECS, *MORE_CODECS])
def test_corrupt_tile_payload(tmp_path, codec, how):
    path = _payload_file(tmp_path, codec, how)
    with unchanged(path), CuImage(path) as img:
        for workers in (1, 2):
            try:
                arr = img.read_region(num_workers=workers)
            except DecodeError as err:
                check_error(err, DecodeError, path, level=0, tile=TILE)
                continue
            # decoders that accept any bytes (raw samples, PackBits, a tolerant JPEG body) may succeed
            assert arr.shape == (H, W, 3)
            assert codec not in STRICT or how not in ("zeroed", "garbage", "one-byte"), "damage went unnoticed"
            assert not (codec == "none" and how in ("half-count", "one-byte")), "short tile went unnoticed"


def test_horizontal_predictor_on_complex_samples(tmp_path):
    """Predictor 2 on complex samples: no decoder for that, a typed error rather than imagecodecs' ValueError."""
    src = tmp_path / "complex.tif"
    tifffile.imwrite(src, np.zeros((32, 32), np.complex64), tile=(16, 16), compression="zlib")
    patch = TiffPatch(src.read_bytes())
    patch.replace_entry(305, 317, 3, 2)  # Software -> Predictor 2 (the entries stay sorted)
    path = patch.save(tmp_path / "complex-predictor.tif")
    with unchanged(path), CuImage(path) as image, pytest.raises(cucim_like.CodecUnavailableError):
        image.read_region()


def test_sample_format_bits_and_predictor_sweep(tmp_path):
    """Every SampleFormat x BitsPerSample x Predictor written over deflate/LZW/JPEG tiles: success or typed."""
    jobs = []
    for compression, dtype in (("zlib", np.int8), ("lzw", np.int8), ("jpeg", np.uint8)):
        src = tmp_path / f"src-{compression}.tif"
        extra = {"predictor": 2} if compression != "jpeg" else {}
        tifffile.imwrite(src, _image().astype(dtype), tile=(T, T), compression=compression, photometric="rgb",
                         **extra)
        for sample_format in (1, 2, 3, 4, 5, 6):
            for bits in (8, 16, 32, 64):
                for predictor in (1, 2, 3):
                    patch = TiffPatch(src.read_bytes())
                    patch.set_values(258, [bits] * 3)
                    if 339 in patch.entries:
                        patch.set_values(339, [sample_format] * 3)
                    if 317 in patch.entries:
                        patch.set_value(317, predictor)
                    name = f"{compression}-sf{sample_format}-b{bits}-p{predictor}.tif"
                    jobs.append({"path": str(patch.save(tmp_path / name)),
                                 "ops": [["region", 0, 0, 64, 64, 0, 1], ["region", 10, 10, 90, 60, 0, 2]]})
    results = run_jobs(jobs, tmp_path / "work")
    problems = [
        f"{Path(job['path']).name}: {r['status']} {o}"
        for job, r in zip(jobs, results, strict=True)
        for o in r.get("outcomes", [{"exc": "-", "typed": False}])
        if "exc" in o and not o["typed"]
    ]
    assert not problems, "\n".join(problems)


# -- absurd header values: run where an oversized allocation fails loudly ----------------------------------------
def _absurd_files(tmp_path: Path) -> dict[str, tuple[Path, type | None]]:
    """name -> (file, the error class the open must raise, or None when the open may succeed)."""
    files: dict[str, tuple[Path, type | None]] = {}
    for codec in ("none", "jpeg", "deflate"):
        src = write_tiff(tmp_path / f"src-{codec}.tif", CODECS[codec])
        cases = {
            "width-2^31-1": [(256, 2**31 - 1)],
            "height-2^31-1": [(257, 2**31 - 1)],
            "width-height-2^32-1": [(256, 2**32 - 1), (257, 2**32 - 1)],
            "width-0": [(256, 0)],
            "height-0": [(257, 0)],
            "tilewidth-0": [(322, 0)],
            # consistent grids (4 x 3 tiles) whose tiles alone would need tens of GiB
            "width-2^31-1-tile-2^29": [(256, 2**31 - 1), (322, 2**29)],
            "height-2^31-1-tile-2^30": [(257, 2**31 - 1), (323, 2**30)],
            "tile-2^16-square": [(322, 2**16), (323, 2**16), (256, 2**18), (257, 2**17)],
            "samples-65535": [(277, 65535)],
            "bits-0": [(258, 0)],
            "bits-7": [(258, 7)],
        }
        for name, edits in cases.items():
            def edit(p: TiffPatch, edits=edits) -> None:
                for code, value in edits:
                    if code == 258:
                        p.set_values(258, [value] * 3)
                    else:
                        p.set_value(code, value)

            files[f"{codec}-{name}"] = (patched(src, tmp_path / f"{codec}-{name}.tif", edit), OSError)
        # huge but consistent: 2**31 - 1 rows of 32 x 32 tiles would need 2**26 tile entries; 2**21 rows do
        rows = 2**21 // T
        files[f"{codec}-height-2^21-consistent"] = (
            patched(src, tmp_path / f"{codec}-tall.tif", lambda p, rows=rows: (
                p.set_value(257, 2**21),
                p.set_values(324, p.values(324)[:GRID[1]] * rows),
                p.set_values(325, p.values(325)[:GRID[1]] * rows),
            )),
            None,
        )
    big = write_tiff(tmp_path / "src-big.tif", "zlib", bigtiff=True)
    for value in (2**40, 2**62, 2**64 - 1):
        files[f"bigtiff-count-{value}"] = (
            patched(big, tmp_path / f"big-count-{value}.tif", lambda p, v=value: p.set_item(325, TILE_INDEX, v)),
            None,
        )
    return files


def test_absurd_headers_fail_typed_with_bounded_memory(tmp_path):
    files = _absurd_files(tmp_path)
    ops = [["region", 0, 0, 64, 64, 0, 1], ["region", 16, 16, 100, 70, 0, 2],
           ["region", 2**17, 2**20 - 50, 40, 100, 0, 1], ["level", 0, 2]]
    # the tall, consistent image is 800 MB as a whole: only regions of it are asked for
    jobs = [{"path": str(path), "ops": ops[:3] if name.endswith("consistent") else ops}
            for name, (path, _) in files.items()]
    before = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, (path, _) in files.items()}
    results = run_jobs(jobs, tmp_path / "work", headroom_mb=2048)
    problems = []
    for (name, (path, must_fail)), result in zip(files.items(), results, strict=True):
        if result["status"] != "done":
            problems.append(f"{name}: {result['status']} {result.get('stderr', '')[-400:]}")
            continue
        opened, *reads = result["outcomes"][:-1] if len(result["outcomes"]) > 1 else result["outcomes"]
        for o in result["outcomes"]:
            if "exc" in o and not o["typed"]:
                problems.append(f"{name}: {o['op']} raised {o['module']}.{o['exc']}: {o['msg']}")
            elif "exc" in o and o["exc"] != "InvalidArgumentError" and o["path"] != str(path):
                problems.append(f"{name}: {o['exc']} does not name the path: {o['msg']}")
        if must_fail is not None and "exc" not in opened:
            problems.append(f"{name}: opened, but its header is absurd")
        if must_fail is not None and opened.get("exc") not in (None, "CorruptFileError", "UnsupportedFormatError"):
            problems.append(f"{name}: open raised {opened['exc']}")
        if result["rss_growth_kb"] > 200 * 1024:
            problems.append(f"{name}: resident memory grew by {result['rss_growth_kb'] // 1024} MiB")
        if hashlib.sha256(path.read_bytes()).hexdigest() != before[name]:
            problems.append(f"{name}: file changed")
        if name.endswith("consistent"):  # a valid, tall image: small regions read
            assert "exc" not in opened, opened
            assert all("exc" not in o for o in reads), reads
        if name.startswith("bigtiff-count"):  # every read touching the tile fails; the far one is fill
            assert [o.get("exc") for o in reads] == ["CorruptFileError", "CorruptFileError", None,
                                                      "CorruptFileError"], reads
            assert all(o["level"] == 0 and tuple(o["tile"]) == TILE for o in reads if "exc" in o), reads
    assert not problems, "\n".join(problems)


def test_absurd_dimension_error_names_path_and_level(pristine, tmp_path):
    for code, value in ((256, 2**31 - 1), (257, 2**32 - 1)):
        path = patched(pristine["deflate"], tmp_path / f"dims-{code}.tif", lambda p, c=code, v=value: p.set_value(c, v))
        with unchanged(path), pytest.raises(CorruptFileError) as ei:
            CuImage(path)
        check_error(ei.value, CorruptFileError, path, level=0)
    path = patched(pristine["deflate"], tmp_path / "tile.tif", lambda p: (p.set_value(256, 2**31 - 1),
                                                                            p.set_value(322, 2**29)))
    with unchanged(path), pytest.raises(CorruptFileError) as ei:
        CuImage(path)
    check_error(ei.value, CorruptFileError, path, level=0)
    assert "bytes" in ei.value.message


# -- errors raised outside the format parser ----------------------------------------------------------------------
def test_codec_unavailable_error_names_path(pristine, tmp_path):
    """Samples no decoder handles (YCbCr outside JPEG) fail at read time, as designed; the error should still
    name the file and the level."""
    src = write_tiff(tmp_path / "rgb.tif", "zlib")
    path = patched(src, tmp_path / "ycbcr.tif", lambda p: p.set_value(262, 6))
    with CuImage(path) as image, pytest.raises(cucim_like.CodecUnavailableError) as ei:
        image.read_region()
    check_error(ei.value, cucim_like.CodecUnavailableError, path, level=0)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "slide.svs"
    os.mkfifo(fifo)
    [result] = run_jobs([{"path": str(fifo), "ops": []}], tmp_path / "work", job_timeout=3)
    assert result["status"] == "done", result["status"]
    assert result["outcomes"][0]["exc"] == "UnsupportedFormatError"


def _aperio_with_tall_thumbnail(tmp_path: Path) -> Path:
    """An SVS whose thumbnail claims 2**32 - 1 rows in 65536 strips of 2**16 rows (824 GB), all pointing at
    its one real strip: a consistent header, small file."""
    src = tmp_path / "aperio.svs"
    desc = "Aperio Image Library v10.0.0\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(src) as tw:
        tw.write(_image(512, 512), tile=(256, 256), photometric="rgb", compression="jpeg", description=desc,
                 metadata=None)
        tw.write(_image(64, 64), photometric="rgb", compression="zlib", rowsperstrip=64,
                 description="Aperio thumbnail", metadata=None)
    patch = TiffPatch(src.read_bytes(), page=1)
    offset, count = patch.values(273)[0], patch.values(279)[0]
    patch.set_value(257, 2**32 - 1)
    patch.set_value(278, 2**16)
    patch.set_values(273, [offset] * 2**16)
    patch.set_values(279, [count] * 2**16)
    return patch.save(tmp_path / "aperio-tall-thumbnail.svs")


def test_absurd_associated_image_size(tmp_path):
    path = _aperio_with_tall_thumbnail(tmp_path)
    with CuImage(path) as image:
        assert image.associated_images == {"thumbnail"}
    [result] = run_jobs([{"path": str(path), "ops": [["associated", "thumbnail"]]}], tmp_path / "work")
    opened, read, _ = result["outcomes"]
    assert "exc" not in opened
    assert read.get("typed"), read


# -- wrong arguments --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def img(pristine):
    with CuImage(pristine["deflate"]) as image:
        yield image


@pytest.mark.parametrize(
    "kwargs",
    [
        {"location": (0, 0), "size": (0, 10)},
        {"location": (0, 0), "size": (10, 0)},
        {"location": (0, 0), "size": (-5, 10)},
        {"location": (0, 0), "size": (10, -1)},
        {"location": (1.5, 0), "size": (10, 10)},
        {"location": (0, 0), "size": (10.0, 10)},
        {"location": np.array([0.5, 1.0]), "size": (10, 10)},
        {"location": ("0", "0"), "size": (10, 10)},
        {"location": "ab", "size": (10, 10)},
        {"location": (0, 0), "size": ("10", "10")},
        {"location": (0, 0), "size": "10"},
        {"location": (None, 0), "size": (10, 10)},
        {"location": (True, 0), "size": (10, 10)},
        {"location": (0,), "size": (10, 10)},
        {"location": (0, 0, 0), "size": (10, 10)},
        {"location": (0, 0), "size": (10,)},
        {"location": (0, 0), "size": (10, 10, 10)},
        {"location": 5, "size": (10, 10)},
        {"location": (0.5, 0)},  # size defaults to the level's, the location is still checked
        {"size": (10, 0)},
        {"location": (0, 0), "size": (10, 10), "num_workers": -1},
        {"location": (0, 0), "size": (10, 10), "num_workers": 1.5},
        {"location": (0, 0), "size": (2**40, 2**40)},
        {"location": (0, 0), "size": (10, 10), "buf": np.zeros((5, 5, 3), np.uint8)},
        {"location": (0, 0), "size": (10, 10), "buf": np.zeros((10, 10, 3), np.float32)},
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}"[:40] for k, v in kw.items()),
)
def test_bad_arguments(img, kwargs):
    with unchanged(Path(img.path)), pytest.raises(ValueError) as ei:
        img.read_region(**kwargs)
    assert isinstance(ei.value, InvalidArgumentError), type(ei.value)


@pytest.mark.parametrize("level", [1, 5, -1, 2**40, 0.0, "0", None, True])
def test_level_that_does_not_exist(img, level):
    with pytest.raises(ValueError) as ei:
        img.read_region((0, 0), (10, 10), level=level)
    assert isinstance(ei.value, InvalidArgumentError)
    if isinstance(level, int) and not isinstance(level, bool):
        assert isinstance(ei.value, LevelError) and isinstance(ei.value, IndexError)
        assert str(level) in str(ei.value)


def test_good_arguments_of_other_kinds(img, reference):
    """NumPy integers and arrays, lists and negative locations (partly outside: fill) are accepted."""
    ref = reference["deflate"]
    np.testing.assert_array_equal(img.read_region(np.array([3, 4]), [np.int64(20), np.uint16(10)]), ref[4:14, 3:23])
    arr = img.read_region((-10, -5), (20, 15), fill=9)
    assert (arr[:5] == 9).all() and (arr[:, :10] == 9).all()
    np.testing.assert_array_equal(arr[5:, 10:], ref[:10, :10])
    assert (img.read_region((10**12, 10**12), (4, 4)) == 0).all()


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 3-D tiled volume (ImageDepth/TileDepth): 8 x 64 x 64 in 4 x 32 x 32 tiles, 2 x 2 x 2 of them."""
    vol = np.arange(8 * 64 * 64, dtype=np.uint16).reshape(8, 64, 64)
    path = tmp_path_factory.mktemp("volume") / "volume.tif"
    tifffile.imwrite(path, vol, tile=(4, 32, 32), compression="zlib", volumetric=True)
    return path, vol


@pytest.mark.parametrize(
    "kwargs",
    [{"location": (0, 0), "size": (4, 4)}, {"location": (0, 0, 0), "size": (4, 4)},
     {"location": (0, 0), "size": (4, 4, 1)}, {"location": (0, 0, 0), "size": (4, 4, 0)},
     {"location": (0, 0, 0.5), "size": (4, 4, 1)}, {"location": (0, 0, 0), "size": (4, 4, "1")}],
)
def test_volume_arguments(volume, kwargs):
    path, _ = volume
    with CuImage(path) as vol, pytest.raises(ValueError) as ei:
        assert vol.is_volume
        vol.read_region(**kwargs)
    assert isinstance(ei.value, InvalidArgumentError)


def test_volume_tile_past_end_names_its_3d_coordinates(volume, tmp_path):
    path, ref = volume
    bad = patched(path, tmp_path / "bad-volume.tif", lambda p: p.set_item(325, 5, 2**32 - 1))  # tile z=1 y=0 x=1
    with unchanged(bad), CuImage(bad) as vol:
        with pytest.raises(CorruptFileError) as ei:
            vol.read_region()
        check_error(ei.value, CorruptFileError, bad, level=0, tile=(0, 1, 0, 1))
        np.testing.assert_array_equal(vol.read_region((0, 0, 0), (64, 64, 4)), ref[:4])


def test_unknown_associated_image(img):
    with pytest.raises(KeyError) as ei:
        img.associated_image("label")
    check_error(ei.value, UnknownAssociatedImageError, Path(img.path))


def test_closed_image(pristine):
    image = CuImage(pristine["none"])
    image.close()
    with pytest.raises(ValueError) as ei:
        image.read_region((0, 0), (4, 4))
    check_error(ei.value, InvalidArgumentError, pristine["none"])


def test_every_error_class_is_exported():
    for name in cucim_like.__all__:
        obj = getattr(cucim_like, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, CucimLikeError)
    assert issubclass(ImageFileNotFoundError, FileNotFoundError)
    assert issubclass(CorruptFileError, OSError) and issubclass(DecodeError, ValueError)
    assert math.isfinite(H)  # keeps the module's imports honest


@pytest.mark.parametrize("location", [(2**70, 0), [(2**70, 0), (1, 2)], [2**64, 0]])
def test_locations_beyond_64_bits_are_a_typed_error(small_slide, location):
    with CuImage(small_slide[0]) as img, pytest.raises(InvalidArgumentError, match="64-bit"):
        img.read_region(location, (4, 4))
