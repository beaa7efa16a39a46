"""Positional reads of byte ranges (``os.pread``: thread-safe, no shared file position, GIL released)."""

from __future__ import annotations

import mmap
import os
import threading

from .errors import CorruptFileError, ImageFileNotFoundError


def file_identity(path: str) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns): names one version of one file, also across re-opening."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_range(reader, start: int, stop: int, level: int | None, tile: object) -> None:
    if start < 0 or stop > reader.size or stop < start:
        raise CorruptFileError(f"byte range {start}-{stop} lies outside the file of {reader.size} bytes",
                               path=reader.path, level=level, tile=tile)


class FileReader:
    """Reads byte ranges of one file through one descriptor, opened on first use and after ``close``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity = file_identity(path)
        self.size = self.identity[2]
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        fd = self._fd
        if fd is None:
            with self._lock:
                fd = self._descriptor_unlocked()
        return fd

    def _descriptor_unlocked(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError as exc:
                raise ImageFileNotFoundError("file disappeared", path=self.path) from exc
        return self._fd

    def read(self, start: int, stop: int, *, level: int | None = None, tile: object = None) -> bytes:
        """Bytes [start, stop) of the file; CorruptFileError when the file ends before ``stop``."""
        _check_range(self, start, stop, level, tile)
        data = os.pread(self._descriptor(), stop - start, start)
        if len(data) != stop - start:
            raise CorruptFileError(
                f"read of bytes {start}-{stop} came back short ({len(data)} bytes): the file was truncated",
                path=self.path, level=level, tile=tile,
            )
        return data

    def view(self, start: int, stop: int, *, level: int | None = None, tile: object = None) -> memoryview:
        """Bytes [start, stop) as a read-only view of a memory map of the file: no copy, pages read on use.

        Callers must not keep the view past ``close`` (the map itself stays valid until collected).
        """
        _check_range(self, start, stop, level, tile)
        mp = self._map
        if mp is None:
            with self._lock:
                if self._map is None:
                    fd = self._descriptor_unlocked()
                    if os.fstat(fd).st_size < self.size:
                        raise CorruptFileError("the file was truncated after opening", path=self.path,
                                               level=level, tile=tile)
                    self._map = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ)
                mp = self._map
        return memoryview(mp)[start:stop]

    def close(self) -> None:
        with self._lock:
            self._map = None  # views handed out keep it alive; it unmaps when the last one goes
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


class MemoryReader:
    """Serves byte ranges of an in-memory copy of a file (e.g. a DICOM dataset inflated from Deflated
    transfer syntax), with the same interface as :class:`FileReader`; ``identity`` names the file on disk."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.identity = file_identity(path)
        self.size = len(data)
        self._data = data

    def read(self, start: int, stop: int, *, level: int | None = None, tile: object = None) -> bytes:
        _check_range(self, start, stop, level, tile)
        return self._data[start:stop]

    def view(self, start: int, stop: int, *, level: int | None = None, tile: object = None) -> memoryview:
        _check_range(self, start, stop, level, tile)
        return memoryview(self._data)[start:stop]

    def close(self) -> None:
        pass
