"""Fuzz worker: mutates chunks of a precomputed volume and reads them through cucim_like, in this process.

Run by tests/formats/test_precomputed_fuzz.py in a subprocess (a crash fails that test). Usage:
``python -m tests._precomputed_fuzz_worker KIND COUNT SEED WORKDIR``; prints one JSON line of outcome counts.
Every read must end in a typed CucimLikeError, or return exactly what an independent decoder makes of the
mutated stream (a mutation that leaves a well-formed stream, e.g. a flipped raw sample, is undetectable by
any reader). Peak Python-tracked memory per read is recorded to show no allocation follows damaged headers.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

import cucim_like
from cucim_like.errors import CucimLikeError

from .formats.precomputed_fixtures import sample_volume, write_volume

CHUNK = (16, 16, 8)  # x, y, z
KINDS = {  # kind -> (encoding, dtype, channels, layout)
    "raw": ("raw", "uint16", 2, "files"),
    "jpeg": ("jpeg", "uint8", 3, "files"),
    "compressed_segmentation": ("compressed_segmentation", "uint32", 2, "files"),
    "fpzip": ("fpzip", "float32", 3, "files"),
    "kempressed": ("kempressed", "float32", 3, "files"),
    "gzip": ("raw", "uint16", 1, "gzip"),
    "shard": ("compressed_segmentation", "uint64", 1, "shard"),
}
SHARD = {"preshift_bits": 0, "hash": "murmurhash3_x86_128", "minishard_bits": 1, "shard_bits": 0,
         "minishard_index_encoding": "gzip", "data_encoding": "gzip"}


def mutate(data: bytes, rng: np.random.Generator, alien: bytes) -> tuple[str, bytes]:
    """One mutation of ``data``: a truncation, 1-8 byte flips, a header edit, a wrong size, or a stream of the
    right encoding made for another chunk shape (``alien``)."""
    n = len(data)
    kind = rng.choice(["truncate", "flip", "header", "extend", "alien"], p=[0.25, 0.35, 0.25, 0.1, 0.05])
    buf = bytearray(data)
    if kind == "truncate":
        return kind, bytes(buf[: int(rng.integers(0, n))])
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
        return kind, bytes(buf)
    if kind == "header":
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(0, min(n, 40)))] = int(rng.integers(0, 256))
        return kind, bytes(buf)
    if kind == "extend":
        return kind, bytes(buf) + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return kind, alien


def reference(encoding: str, dtype: str, channels: int, stream: bytes, shape_zyx) -> np.ndarray | None:
    """An independent decode of ``stream`` as (z, y, x, c), or None when that decoder refuses it. fpzip runs
    in a child process, as it may crash."""
    z, y, x = shape_zyx
    if encoding == "raw":
        want = z * y * x * channels * np.dtype(dtype).itemsize
        if len(stream) != want:
            return None
        return np.frombuffer(stream, np.dtype(dtype).newbyteorder("<")).reshape(channels, z, y, x).transpose(
            1, 2, 3, 0)
    if encoding == "jpeg":
        import imagecodecs

        try:
            img = imagecodecs.jpeg8_decode(stream)
        except Exception:
            return None
        return img.reshape(z, y, x, channels) if img.size == z * y * x * channels else None
    if encoding == "compressed_segmentation":
        import struct

        import compressed_segmentation as cseg

        parts = []
        offsets = struct.unpack_from(f"<{channels}I", stream)
        for off in offsets:  # one channel at a time (the package handles single channels only): a channel's
            one = struct.pack("<I", 1) + stream[4 * off :]  # blocks are addressed from its own start
            arr = cseg.decompress(one, (x, y, z), np.dtype(dtype), (8, 8, 8), order="F")
            parts.append(np.asarray(arr).reshape(x, y, z, order="F").transpose(2, 1, 0))
        return np.stack(parts, axis=-1)
    code = (
        "import sys, fpzip, numpy as np\n"
        "a = fpzip.decompress(sys.stdin.buffer.read(), order='F')\n"
        "sys.stdout.buffer.write(np.ascontiguousarray(a.astype(np.float32)).tobytes(order='F'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], input=stream, capture_output=True, timeout=60)
    if run.returncode != 0:
        return None
    values = np.frombuffer(run.stdout, np.float32)
    if encoding == "fpzip":
        if values.size != x * y * z * channels:
            return None
        return values.reshape(channels, z, y, x).transpose(1, 2, 3, 0)
    if values.size != x * y * z * channels:
        return None
    arr = values.reshape(z, channels, y, x).transpose(0, 2, 3, 1)  # kempressed: (x, y, c, z) stored
    return arr - np.float32(2.0)


def deterministic(encoding: str, dtype: str, channels: int, stream: bytes, shape_zyx, first) -> bool:
    """Whether the fpzip package decodes ``stream`` the same way four more times (``first``: the first result,
    None for a refusal or a crash). Some damaged streams make fpzip read memory it never wrote (its buffer
    reader has no bound, its tables are indexed by decoded symbols): its result, or whether it crashes, then
    changes from run to run, so no decoder defines what such a stream holds and no read can be checked
    against one."""
    for _ in range(4):
        again = reference(encoding, dtype, channels, stream, shape_zyx)
        if (again is None) != (first is None) or (again is not None and not np.array_equal(
                again.view(np.uint8), first.view(np.uint8))):
            return False
    return True


def rereads_agree(root: Path, first: np.ndarray) -> bool:
    """Whether four more reads of the volume through cucim_like return ``first`` again (the decoder
    processes are reused, so fpzip's undefined reads see other memory on each)."""
    for _ in range(4):
        try:
            with cucim_like.CuImage(str(root)) as img:
                again = img.read_region()
        except CucimLikeError:
            return False
        again = again if again.ndim == 4 else again[..., None]
        if not np.array_equal(again.view(np.uint8), first.view(np.uint8)):
            return False
    return True


def main(kind: str, count: int, seed: int, workdir: str) -> dict:
    encoding, dtype, channels, layout = KINDS[kind]
    root = Path(workdir) / kind
    vol = sample_volume((CHUNK[2], CHUNK[1], CHUNK[0], channels), dtype, seed=seed)
    if encoding == "jpeg":
        vol = (vol // 8 * 8).astype(np.uint8)
    write_volume(root, [vol], encoding=encoding, chunk=CHUNK, gz=layout == "gzip",
                 sharding=SHARD if layout == "shard" else None)
    key = json.loads((root / "info").read_text())["scales"][0]["key"]
    if layout == "shard":
        target = root / key / ".shard"
    else:
        target = root / key / ("0-16_0-16_0-8" + (".gz" if layout == "gzip" else ""))
    original = target.read_bytes()
    alien_root = Path(workdir) / (kind + "-alien")
    write_volume(alien_root, [np.ascontiguousarray(vol[:4, :8])], encoding=encoding, chunk=(16, 8, 4),
                 gz=layout == "gzip", sharding=SHARD if layout == "shard" else None)
    alien = next(p for p in (alien_root / key).iterdir()).read_bytes()
    chunk_nbytes = vol.nbytes
    cucim_like.CuImage.cache("no_cache")
    with cucim_like.CuImage(str(root)) as img:  # warm-up: imports and first-use set-up are not per read
        img.read_region()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    wrong: list[str] = []
    peak = 0
    for i in range(count):
        how, stream = mutate(original, rng, alien)
        target.write_bytes(stream)
        tracemalloc.start()
        try:
            with cucim_like.CuImage(str(root)) as img:
                got = img.read_region()
            outcome = "data"
        except CucimLikeError as exc:
            outcome = type(exc).__name__
            got = None
        finally:
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        if got is not None:
            got = got if got.ndim == 4 else got[..., None]
            inner = stream
            if layout == "gzip":
                inner = gzip.decompress(stream)
            if layout == "shard":
                same = np.array_equal(got, vol)  # the shard index or data changed in a way that reads back
                outcome = "data-same" if same else "data-differs"
                if not same:
                    wrong.append(f"{i}:{how}")
            else:
                ref = reference(encoding, dtype, channels, inner, vol.shape[:3])
                ok = ref is not None and np.array_equal(got.view(np.uint8), np.ascontiguousarray(ref).view(np.uint8))
                outcome = "data-as-reference" if ok else "data-differs"
                if not ok and encoding in ("fpzip", "kempressed") and not (
                        rereads_agree(root, got) and deterministic(encoding, dtype, channels, inner, vol.shape[:3],
                                                                   ref)):
                    outcome = "fpzip-undefined"
                elif not ok:
                    wrong.append(f"{i}:{how}")
        counts[outcome] = counts.get(outcome, 0) + 1
    target.write_bytes(original)
    return {"kind": kind, "count": count, "counts": counts, "wrong": wrong[:20], "peak_bytes": peak,
            "chunk_bytes": chunk_nbytes}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
