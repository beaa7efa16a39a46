"""DICOM: whole-slide images (VL Whole Slide Microscopy series) and volumes (CT/MR series, multi-frame files).

``open_dicom`` takes a file, a directory or a list of files, gathers the instances of one series by their
UIDs (a WSI file also brings its siblings in the same directory), and returns a
:class:`~cucim_like.formats.dicom.wsi.DicomWsiSource` or
:class:`~cucim_like.formats.dicom.volume.DicomVolumeSource`. pydicom is imported only here, on first use.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

from ...errors import CorruptFileError, CucimLikeError, InvalidArgumentError, UnsupportedFormatError
from ..base import ImageSource
from .header import WSI_SOP_CLASS, DicomInstance

_MAGIC_AT = 128


def is_dicom_file(path: str) -> bool:
    """Whether ``path`` is a regular file with the DICOM Part 10 "DICM" magic at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_MAGIC_AT)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _directory_files(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    paths = (os.path.join(directory, n) for n in names if not n.startswith("."))
    return [p for p in paths if os.path.isfile(p) and is_dicom_file(p)]


def _instances(paths: list[str], *, skip_bad: bool) -> list[DicomInstance]:
    out = []
    for p in paths:
        try:
            out.append(DicomInstance(p))
        except CucimLikeError:
            if not skip_bad:
                raise
    return out


def _pick_series(instances: list[DicomInstance], series_uid: str | None, where: str) -> list[DicomInstance]:
    groups: dict[str, list[DicomInstance]] = defaultdict(list)
    for inst in instances:
        groups[inst.series_uid].append(inst)
    if series_uid is not None:
        if series_uid not in groups:
            raise InvalidArgumentError(f"series_uid {series_uid!r} is not among the series found: {sorted(groups)}",
                                       path=where)
        return groups[series_uid]
    if len(groups) > 1:
        listing = ", ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(groups.items()))
        raise UnsupportedFormatError(f"several DICOM series are present ({listing}); choose one with series_uid=",
                                     path=where)
    return next(iter(groups.values()))


def open_dicom(path: str | os.PathLike | Sequence[str | os.PathLike], series_uid: str | None = None) -> ImageSource:
    """Open a DICOM file, directory or list of files as one image (see module docstring)."""
    if isinstance(path, (str, os.PathLike)):
        where = os.fspath(path)
        if os.path.isdir(where):
            files = _directory_files(where)
            if not files:
                raise UnsupportedFormatError("the directory holds no DICOM file", path=where)
            instances = _instances(files, skip_bad=True)
            if not instances:
                raise UnsupportedFormatError("no DICOM file in the directory holds a readable image", path=where)
            chosen = _pick_series(instances, series_uid, where)
        else:
            first = DicomInstance(where)
            if series_uid is not None and first.series_uid != series_uid:
                raise InvalidArgumentError(f"the file belongs to series {first.series_uid}, not {series_uid}",
                                           path=where)
            chosen = [first]
            if first.sop_class == WSI_SOP_CLASS:
                # the other levels and the label usually live beside it, in the same series
                siblings = [p for p in _directory_files(os.path.dirname(os.path.abspath(where)) or ".")
                            if not os.path.samefile(p, where)]
                chosen += [i for i in _instances(siblings, skip_bad=True) if i.series_uid == first.series_uid]
    else:
        files = [os.fspath(p) for p in path]
        if not files:
            raise InvalidArgumentError("the list of files is empty")
        where = files[0]
        chosen = _pick_series(_instances(files, skip_bad=False), series_uid, where)
    try:
        if any(inst.sop_class == WSI_SOP_CLASS for inst in chosen):
            from .wsi import DicomWsiSource

            return DicomWsiSource(where, [inst for inst in chosen if inst.sop_class == WSI_SOP_CLASS])
        from .volume import DicomVolumeSource

        return DicomVolumeSource(where, chosen)
    except CucimLikeError:
        raise
    except Exception as exc:  # a damaged attribute value, converted by pydicom on first access
        raise CorruptFileError(f"DICOM header is damaged: {type(exc).__name__}: {exc}", path=where) from exc
