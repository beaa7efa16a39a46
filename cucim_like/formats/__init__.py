"""Format detection by content: a registry of probes, each loading its format module only when it matches."""

from __future__ import annotations

import importlib
import os
import stat

from ..errors import FileAccessError, ImageFileNotFoundError, UnsupportedFormatError
from .base import ImageSource

# (name, probe on the first bytes, "module:Class"); the probe runs without importing the module.
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

_FORMATS: list[tuple[str, object, str]] = [
    ("tiff", lambda head: head[:4] in TIFF_MAGICS, "cucim_like.formats.tiff:TiffSource"),
]


def register_format(name: str, probe, target: str) -> None:
    """Add a format: ``probe(head: bytes) -> bool`` on the file's first 512 bytes, ``target`` "module:Class"."""
    _FORMATS.append((name, probe, target))


def open_source(path: str | os.PathLike) -> ImageSource:
    """Open ``path`` with the format its content matches.

    Raises ImageFileNotFoundError when it does not exist, UnsupportedFormatError when no format matches.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise ImageFileNotFoundError("no such file", path=path) from exc
    except PermissionError as exc:
        raise FileAccessError(f"permission denied: {exc.strerror}", path=path) from exc
    if stat.S_ISDIR(st.st_mode):
        raise UnsupportedFormatError("a directory is not a supported image", path=path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise UnsupportedFormatError("not a regular file", path=path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except PermissionError as exc:
        raise FileAccessError(f"permission denied: {exc.strerror}", path=path) from exc
    for _name, probe, target in _FORMATS:
        if probe(head):
            module_name, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
            return cls(path)
    raise UnsupportedFormatError("the file's content is not a supported image format", path=path)
