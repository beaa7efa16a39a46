"""Format detection by content: a registry of probes, each loading its format module only when it matches."""

from __future__ import annotations

import importlib
import os

from ..errors import ImageFileNotFoundError, UnsupportedFormatError
from .base import ImageSource

# (name, probe on the first bytes, "module:Class"); the probe runs without importing the module.
_FORMATS: list[tuple[str, object, str]] = [
    ("tiff", lambda head: head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
     "cucim_like.formats.tiff:TiffSource"),
]


def register_format(name: str, probe, target: str) -> None:
    """Add a format: ``probe(head: bytes) -> bool`` on the file's first 512 bytes, ``target`` "module:Class"."""
    _FORMATS.append((name, probe, target))


def open_source(path: str | os.PathLike) -> ImageSource:
    """Open ``path`` with the format its content matches.

    Raises ImageFileNotFoundError when it does not exist, UnsupportedFormatError when no format matches.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageFileNotFoundError("no such file", path=path)
    if os.path.isdir(path):
        raise UnsupportedFormatError("a directory is not a supported image", path=path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except IsADirectoryError as exc:
        raise UnsupportedFormatError("a directory is not a supported image", path=path) from exc
    except PermissionError:
        raise
    for _name, probe, target in _FORMATS:
        if probe(head):
            module_name, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
            return cls(path)
    raise UnsupportedFormatError("the file's content is not a supported image format", path=path)
