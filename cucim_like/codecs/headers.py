"""Tiny, bounded readers of codec headers: the frame size a stream declares, checked before decoding."""

from __future__ import annotations

import struct

from ..errors import DecodeError

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_frame(data: bytes | memoryview, markers: frozenset[int] | set[int] = _SOF_MARKERS,
               ) -> tuple[int, int, int, int]:
    """(precision, height, width, components) from a JPEG stream's frame header (a marker of ``markers``:
    the SOFn of ITU T.81 by default; SOF55 for JPEG-LS).

    Works on abbreviated streams (tables elsewhere). Raises DecodeError when no SOF comes before the scan.
    """
    return jpeg_sof(data, markers)[1:]


def jpeg_sof(data: bytes | memoryview, markers: frozenset[int] | set[int] = _SOF_MARKERS,
             ) -> tuple[int, int, int, int, int]:
    """Like :func:`jpeg_frame`, with the SOF marker found first: (marker, precision, height, width, comps)."""
    if not isinstance(data, bytes):
        # the frame header sits near the start: look at 4 KiB first, at 64 KiB only when tables are larger
        head = bytes(data[:4096])
        try:
            return jpeg_sof(head, markers)
        except DecodeError:
            if len(data) <= 4096:
                raise
        return jpeg_sof(bytes(data[:65536]), markers)
    buf = data
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise DecodeError("not a JPEG stream (no SOI marker)")
    i = 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise DecodeError(f"JPEG marker expected at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", buf, i + 2)
        if length < 2:
            raise DecodeError(f"JPEG segment length {length} at byte {i}")
        if marker in markers:
            if i + 4 + 6 > n:
                break
            precision, height, width, comps = struct.unpack_from(">BHHB", buf, i + 4)
            return marker, precision, height, width, comps
        if marker in (0xDA, 0xD9):
            break
        i += 2 + length
    raise DecodeError("JPEG stream has no frame header (SOF) before its scan")


def j2k_size(data: bytes | memoryview) -> tuple[int, int, int, int]:
    """(height, width, components, bits) from a JPEG 2000 code stream's SIZ marker (raw J2K or JP2 boxes)."""
    buf = bytes(data[:65536]) if not isinstance(data, bytes) else data
    start = 0
    if buf[:4] == b"\x00\x00\x00\x0c" and buf[4:8] == b"jP  ":
        # JP2: walk the boxes to the contiguous code stream box
        i = 0
        while i + 8 <= len(buf):
            (length,) = struct.unpack_from(">I", buf, i)
            kind = buf[i + 4 : i + 8]
            header = 8
            if length == 1:
                if i + 16 > len(buf):
                    break
                (length,) = struct.unpack_from(">Q", buf, i + 8)
                header = 16
            if kind == b"jp2c":
                start = i + header
                break
            if length < header:
                break
            i += length
        else:
            raise DecodeError("JP2 file has no code stream box")
        if not start:
            raise DecodeError("JP2 file has no code stream box")
    if buf[start : start + 4] != b"\xff\x4f\xff\x51" or start + 42 > len(buf):
        raise DecodeError("not a JPEG 2000 code stream (no SOC/SIZ marker)")
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", buf, start + 8)
    (csiz,) = struct.unpack_from(">H", buf, start + 40)
    if start + 42 + 3 * csiz > len(buf) or csiz == 0:
        raise DecodeError(f"JPEG 2000 SIZ marker declares {csiz} components")
    bits = (buf[start + 42] & 0x7F) + 1
    return ysiz - yo, xsiz - xo, csiz, bits


def webp_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) from a WebP stream's first chunk (VP8 lossy, VP8L lossless or VP8X extended)."""
    buf = bytes(data[:32])
    if len(buf) < 30 or buf[:4] != b"RIFF" or buf[8:12] != b"WEBP":
        raise DecodeError("not a WebP stream (no RIFF/WEBP header)")
    kind = buf[12:16]
    if kind == b"VP8 ":
        if buf[23:26] != b"\x9d\x01\x2a":
            raise DecodeError("WebP VP8 chunk has no frame start code")
        width, height = struct.unpack_from("<HH", buf, 26)
        return height & 0x3FFF, width & 0x3FFF
    if kind == b"VP8L":
        if buf[20] != 0x2F:
            raise DecodeError("WebP VP8L chunk has no signature")
        (bits,) = struct.unpack_from("<I", buf, 21)
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if kind == b"VP8X":
        width = int.from_bytes(buf[24:27], "little") + 1
        height = int.from_bytes(buf[27:30], "little") + 1
        return height, width
    raise DecodeError(f"WebP stream starts with an unknown chunk {kind!r}")
