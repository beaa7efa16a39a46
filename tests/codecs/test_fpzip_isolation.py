"""fpzip decoding: header parsed in Python, payload decoded in child processes that may die without harm."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cucim_like.codecs.fpzip import FpzipDecoder, KempressedDecoder, read_fpzip_header
from cucim_like.codecs.isolation import IsolatedDecoders, decoder_pool
from cucim_like.errors import DecodeError
from cucim_like.formats.base import CodecSpec

fpzip = pytest.importorskip("fpzip")


def stream(shape_xyzc=(12, 10, 6, 2), seed=0) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    a = np.cumsum(rng.standard_normal(shape_xyzc), axis=0).astype(np.float32)
    return a, fpzip.compress(np.asfortranarray(a), order="F")


def decoder(shape_zyxc, cls=FpzipDecoder):
    return cls(CodecSpec(cls.__name__.lower()), shape_zyxc, np.dtype(np.float32))


def test_header_is_read_without_the_library():
    _, b = stream((12, 10, 6, 2))
    h = read_fpzip_header(b)
    assert (h.type, h.precision, h.nx, h.ny, h.nz, h.nf) == (0, 0, 12, 10, 6, 2)
    b64 = fpzip.compress(np.zeros((3, 4, 5, 1)), order="F")  # float64
    assert read_fpzip_header(b64).type == 1
    for bad in (b[:10], b"", b"xyz" + b[3:], bytes(40)):
        with pytest.raises(DecodeError):
            read_fpzip_header(bad)


def test_decodes_match_the_fpzip_package_and_the_library_stays_out_of_the_reading_process(tmp_path):
    a, b = stream()
    out = np.empty((6, 10, 12, 2), np.float32)
    decoder(out.shape).decode(b, out)
    np.testing.assert_array_equal(out, a.transpose(2, 1, 0, 3))
    (tmp_path / "s").write_bytes(b)
    code = (
        "import sys, numpy as np, pathlib\n"
        "from cucim_like.codecs.fpzip import FpzipDecoder\n"
        "from cucim_like.formats.base import CodecSpec\n"
        "out = np.empty((6, 10, 12, 2), np.float32)\n"
        f"FpzipDecoder(CodecSpec('fpzip'), out.shape, np.float32).decode(pathlib.Path({str(tmp_path / 's')!r})"
        ".read_bytes(), out)\n"
        "maps = pathlib.Path('/proc/self/maps')\n"
        "print('fpzip' in sys.modules, maps.exists() and 'fpzip' in maps.read_text(), float(out.sum()))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    imported, mapped, total = run.stdout.split()
    assert (imported, mapped) == ("False", "False")
    assert float(total) == pytest.approx(float(a.sum()), rel=1e-5)


def test_float64_and_mismatched_dims_are_refused_before_decoding():
    pool = decoder_pool()
    started = pool.started
    out = np.empty((6, 10, 12, 2), np.float32)
    with pytest.raises(DecodeError, match="float64"):
        decoder(out.shape).decode(fpzip.compress(np.zeros((12, 10, 6, 2))), out)
    with pytest.raises(DecodeError, match=r"\(12, 10, 6, 3\)"):
        decoder(out.shape).decode(stream((12, 10, 6, 3))[1], out)
    assert pool.started == started  # no process was needed to refuse them


def test_a_crashing_stream_is_a_decode_error_and_the_pool_recovers():
    a, b = stream()
    out = np.empty((6, 10, 12, 2), np.float32)
    dec = decoder(out.shape)
    died = 0
    for pos in range(40, len(b), max(1, len(b) // 60)):  # flipped payload bytes: most crash fpzip
        bad = bytearray(b)
        bad[pos] ^= 0xFF
        try:
            dec.decode(bytes(bad), out)
        except DecodeError as exc:
            died += "died" in str(exc)
    assert died > 0
    with pytest.raises(DecodeError, match="bytes but its values end"):
        dec.decode(b[: len(b) // 2] + bytes(len(b)), out)  # the decoder would use bytes the stream lacks
    dec.decode(b, out)
    np.testing.assert_array_equal(out, a.transpose(2, 1, 0, 3))


def test_kempressed_subtracts_two_in_float32():
    a, _ = stream((8, 6, 4, 3), seed=3)
    b = fpzip.compress(np.asfortranarray(np.float32(2.0) + np.swapaxes(a, 2, 3)), order="F")
    out = np.empty((4, 6, 8, 3), np.float32)
    decoder(out.shape, KempressedDecoder).decode(b, out)
    ref = np.swapaxes(fpzip.decompress(b, order="F"), 3, 2) - 2.0
    np.testing.assert_array_equal(out.view(np.uint32), ref.transpose(2, 1, 0, 3).view(np.uint32))


def test_concurrent_callers_share_a_bounded_pool():
    pool = IsolatedDecoders(2)
    lib = __import__("cucim_like.codecs.fpzip", fromlist=["_library"])._library()
    arrays, streams = zip(*(stream(seed=i) for i in range(8)), strict=True)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with pool.decode("fpzip", lib, streams[i], arrays[i].nbytes, (12, 10, 6, 2)) as view:
                results[i] = np.frombuffer(view, np.float32).copy()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    assert not errors
    assert pool.started <= 2
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(results[i], a.reshape(-1, order="F"))
