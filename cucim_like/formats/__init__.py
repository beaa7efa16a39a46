"""Format detection by content: a registry of probes, each loading its format module only when it matches."""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Sequence
from typing import Any

from ..errors import FileAccessError, ImageFileNotFoundError, InvalidArgumentError, UnsupportedFormatError
from .base import ImageSource

# (name, probe on the first bytes, "module:Class"); the probe runs without importing the module.
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

_DICOM = "cucim_like.formats.dicom:open_dicom"
_PRECOMPUTED = "cucim_like.formats.precomputed:open_precomputed"


def _looks_like_precomputed_info(head: bytes) -> bool:
    from .precomputed.info import looks_like_info  # a small module: JSON probe only

    return looks_like_info(head)

_FORMATS: list[tuple[str, object, str]] = [
    # DICOM first: a DICOM preamble may itself be a TIFF header (dual-personality files)
    ("dicom", lambda head: head[128:132] == b"DICM", _DICOM),
    ("tiff", lambda head: head[:4] in TIFF_MAGICS, "cucim_like.formats.tiff:TiffSource"),
    ("precomputed", _looks_like_precomputed_info, _PRECOMPUTED),  # the info file itself
]
# options a format's opener takes besides the path
_OPTIONS = {"dicom": {"series_uid"}, "precomputed": {"missing"}}


def register_format(name: str, probe, target: str) -> None:
    """Add a format: ``probe(head: bytes) -> bool`` on the file's first 512 bytes, ``target`` "module:Class"."""
    _FORMATS.append((name, probe, target))


def _load(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _check_options(name: str, options: dict[str, Any]) -> None:
    unknown = set(options) - _OPTIONS.get(name, set())
    if unknown:
        raise InvalidArgumentError(f"{', '.join(sorted(unknown))} do(es) not apply to {name} images")


def open_source(path: str | os.PathLike | Sequence[str | os.PathLike], **options: Any) -> ImageSource:
    """Open ``path`` with the format its content matches.

    ``path`` is a file; a neuroglancer precomputed directory (one with an ``info`` file) or its ``file://``
    URL; or a directory or a list of files of one DICOM series. ``options`` (``series_uid`` for DICOM,
    ``missing`` for precomputed) go to the format that opens it; None values are dropped. Raises
    ImageFileNotFoundError when it does not exist, UnsupportedFormatError when no format matches.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if not isinstance(path, (str, os.PathLike)):
        files = list(path)
        for f in files:
            _check_file(os.fspath(f))
        _check_options("dicom", options)
        return _load(_DICOM)(files, **options)
    path = os.fspath(path)
    if path.startswith("file://"):
        from .precomputed import local_path

        path = local_path(path)
    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        from .precomputed import is_precomputed_dir

        if is_precomputed_dir(path):
            _check_options("precomputed", options)
            return _load(_PRECOMPUTED)(path, **options)
        _check_options("dicom", options)
        return _load(_DICOM)(path, **options)
    head = _head(path, st)
    for name, probe, target in _FORMATS:
        if probe(head):
            _check_options(name, options)
            return _load(target)(path, **options)
    raise UnsupportedFormatError("the file's content is not a supported image format", path=path)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError as exc:
        raise ImageFileNotFoundError("no such file", path=path) from exc
    except PermissionError as exc:
        raise FileAccessError(f"permission denied: {exc.strerror}", path=path) from exc


def _head(path: str, st: os.stat_result) -> bytes:
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise UnsupportedFormatError("not a regular file", path=path)
    try:
        with open(path, "rb") as fh:
            return fh.read(512)
    except PermissionError as exc:
        raise FileAccessError(f"permission denied: {exc.strerror}", path=path) from exc


def _check_file(path: str) -> None:
    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise UnsupportedFormatError("a list of files may not hold a directory", path=path)
    if _head(path, st)[128:132] != b"DICM":
        raise UnsupportedFormatError("a list of files opens DICOM series only; this file is not DICOM", path=path)
