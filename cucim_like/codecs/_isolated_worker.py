"""A decoder process for codec libraries that cannot be trusted with damaged input (fpzip).

Run as a script (``python -I -S _isolated_worker.py SOCK IN OUT``), not as a module: it imports the standard
library only, so it starts in milliseconds and never runs the user's program. ``SOCK`` is the descriptor of a
connection to the parent; ``IN`` and ``OUT`` are descriptors of two shared files (memfd) the parent writes
the compressed bytes into and reads the decoded values from. Each request names a codec and the sizes in use;
the reply is ``("ok", detail)`` or ``("error", message)``. If the library crashes, this process dies and the
parent turns that into a DecodeError; the parent itself never runs the library.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from multiprocessing.connection import Connection


class _Fpz(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("type", "prec", "nx", "ny", "nz", "nf")]


class _Fpzip:
    """fpzip's C API (read side), called through ctypes on the library the ``fpzip`` package ships."""

    def __init__(self, library: str) -> None:
        lib = ctypes.CDLL(library)
        lib.fpzip_read_from_buffer.restype = ctypes.POINTER(_Fpz)
        lib.fpzip_read_from_buffer.argtypes = [ctypes.c_void_p]
        lib.fpzip_read_header.restype = ctypes.c_int
        lib.fpzip_read_header.argtypes = [ctypes.POINTER(_Fpz)]
        lib.fpzip_read.restype = ctypes.c_size_t
        lib.fpzip_read.argtypes = [ctypes.POINTER(_Fpz), ctypes.c_void_p]
        lib.fpzip_read_close.argtypes = [ctypes.POINTER(_Fpz)]
        self.lib = lib

    def decode(self, src: int, size: int, dst: int, dims: tuple[int, ...]) -> tuple[str, object]:
        lib = self.lib
        fpz = lib.fpzip_read_from_buffer(src)
        try:
            if not lib.fpzip_read_header(fpz):
                return "error", "fpzip header is not valid"
            h = fpz.contents
            found = (h.type, h.nx, h.ny, h.nz, h.nf)
            if found != (0, *dims):  # checked by the parent already; a second look costs nothing
                return "error", f"fpzip header declares type/dims {found}, expected {(0, *dims)}"
            used = lib.fpzip_read(fpz, dst)
        finally:
            lib.fpzip_read_close(fpz)
        if used == 0:
            return "error", "fpzip could not decode the stream"
        if used != size:
            return "error", f"fpzip stream is {size} bytes but its values end after {used}"
        return "ok", used


class _Shared:
    """A shared file mapped in this process, remapped when the parent grows it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None
        self.address = 0
        self._anchor: ctypes.c_char | None = None

    def ensure(self, size: int) -> None:
        if size == self.size:
            return
        self._anchor = None
        if self.map is not None:
            self.map.close()
        self.map = mmap.mmap(self.fd, size)
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._anchor)
        self.size = size


def main(argv: list[str]) -> int:
    sock, in_fd, out_fd = (int(a) for a in argv[1:4])
    conn = Connection(sock)
    inp, out = _Shared(in_fd), _Shared(out_fd)
    codecs: dict[str, object] = {}
    while True:
        try:
            codec, library, n_in, in_size, out_size, params = conn.recv()
        except EOFError:
            return 0
        try:
            inp.ensure(in_size)
            out.ensure(out_size)
            if codec != "fpzip":
                raise ValueError(f"unknown codec {codec!r}")
            if library not in codecs:
                codecs[library] = _Fpzip(library)
            reply = codecs[library].decode(inp.address, n_in, out.address, tuple(params))
        except Exception as exc:  # a Python-level failure is reported; only a crash ends the process
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
