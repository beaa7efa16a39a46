"""DICOM volumes: a series of single-frame slices, or one multi-frame (Enhanced) instance, as one 3-D level.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the cross
product of the ImageOrientationPatient cosines), never by file name or instance number. Irregular spacing,
duplicate positions or slices that disagree in geometry are refused with a clear error.
"""

from __future__ import annotations

import functools

import numpy as np

from ...errors import CorruptFileError, UnsupportedFormatError
from ..base import Level
from .frames import tile_table
from .header import DicomInstance, DicomSource, check_uniform

_SPACING_TOLERANCE = 1e-3  # relative deviation of one slice gap from the median gap


def _first(owner, keyword: str):
    seq = owner.get(keyword) if owner is not None else None
    return seq[0] if seq else None


def _floats(value, n: int, what: str, path: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{what} is not numeric: {value!r}", path=path) from exc
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise CorruptFileError(f"{what} must be {n} finite numbers, got {value!r}", path=path)
    return arr


class _Slices:
    """Where each slice is, as arrays in slice order: file id, frame number, position (mm; None when the
    files do not say), (slope, intercept)."""

    def __init__(self, fids: np.ndarray, frames: np.ndarray, positions: np.ndarray | None,
                 rescale: np.ndarray) -> None:
        self.fids, self.frames, self.positions, self.rescale = fids, frames, positions, rescale

    def __len__(self) -> int:
        return len(self.fids)

    def reorder(self, order: np.ndarray) -> None:
        self.fids, self.frames, self.rescale = self.fids[order], self.frames[order], self.rescale[order]
        if self.positions is not None:
            self.positions = self.positions[order]


def _distinct_pairs(pairs: np.ndarray, limit: int = 16) -> list[list[float]] | None:
    """The distinct rows of ``pairs`` (n, 2), sorted, or None when there are more than ``limit``."""
    if len(pairs) and (pairs == pairs[0]).all():
        return [pairs[0].tolist()]
    distinct = np.unique(pairs, axis=0)
    return distinct.tolist() if len(distinct) <= limit else None


def _rescale(item, default: tuple[float, float] = (1.0, 0.0)) -> tuple[float, float]:
    if item is None:
        return default
    slope = item.get("RescaleSlope")
    intercept = item.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else default[0],
            float(intercept) if intercept not in (None, "") else default[1])


class DicomVolumeSource(DicomSource):
    """A CT/MR/other DICOM series or multi-frame file as a volume (z, y, x, c), spacing in mm."""

    vendor = "dicom-volume"

    def __init__(self, path: str, instances: list[DicomInstance]) -> None:
        super().__init__(path, instances)
        ref = instances[0]
        check_uniform(instances, "slices", path)
        if len(instances) > 1 and any(inst.frames > 1 for inst in instances):
            raise UnsupportedFormatError("a series mixing multi-frame instances is not supported: open one file",
                                         path=path)
        orientation, pixel_spacing, thickness = self._geometry(ref)
        slices = self._slices(instances, orientation is not None)
        normal = None
        if orientation is not None:
            normal = np.cross(orientation[:3], orientation[3:])
            if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
                raise CorruptFileError(f"ImageOrientationPatient {orientation.tolist()} is not two unit vectors at "
                                       "right angles", path=ref.path)
        slice_spacing = self._order(slices, normal, thickness, ref)
        self._build_level(ref, slices)
        self.pixel_spacing = (slice_spacing, float(pixel_spacing[0]), float(pixel_spacing[1]))
        self.spacing_unit = "mm"
        self.volume = True
        if slices.positions is not None:
            self.origin = tuple(float(v) for v in slices.positions[0])
        if orientation is not None:
            cols = (orientation[:3], orientation[3:], normal)
            self.direction = tuple(tuple(float(cols[j][i]) for j in range(3)) for i in range(3))
        rescale = slices.rescale
        self.rescale = rescale
        self.channel_names = ["R", "G", "B"] if ref.samples == 3 else ["gray"]
        self.vendor_metadata = {"dicom": {
            "sop_class_uid": ref.sop_class,
            "series_instance_uid": ref.series_uid,
            "study_instance_uid": str(ref.get("StudyInstanceUID", "")),
            "modality": str(ref.get("Modality", "")),
            "transfer_syntax_uid": ref.transfer_syntax,
            "photometric_interpretation": ref.photometric,
            "slices": len(slices),
            # the distinct (slope, intercept) pairs; per-slice values are applied by read_region(rescale=True)
            "rescale_slope_intercept": _distinct_pairs(rescale),
            "files": list(self.files),
        }}

    # -- geometry ------------------------------------------------------------------------------------------
    @staticmethod
    def _geometry(ref: DicomInstance) -> tuple[np.ndarray | None, tuple[float, float], float | None]:
        shared = _first(ref.ds, "SharedFunctionalGroupsSequence")
        orient_item = _first(shared, "PlaneOrientationSequence")
        iop = orient_item.get("ImageOrientationPatient") if orient_item is not None else ref.get(
            "ImageOrientationPatient")
        orientation = _floats(iop, 6, "ImageOrientationPatient", ref.path)
        measures = _first(shared, "PixelMeasuresSequence")
        spacing_src = measures if measures is not None and measures.get("PixelSpacing") else ref.ds
        ps = _floats(spacing_src.get("PixelSpacing"), 2, "PixelSpacing", ref.path)
        pixel_spacing = (float(ps[0]), float(ps[1])) if ps is not None and (ps > 0).all() else (1.0, 1.0)
        thickness = None
        for owner in (measures, ref.ds):
            if owner is None:
                continue
            for key in ("SpacingBetweenSlices", "SliceThickness"):
                value = owner.get(key)
                if value not in (None, "") and float(value) > 0:
                    thickness = float(value)
                    break
            if thickness:
                break
        return orientation, pixel_spacing, thickness

    @staticmethod
    def _slices(instances: list[DicomInstance], oriented: bool) -> _Slices:
        if len(instances) == 1 and instances[0].frames > 1:
            inst = instances[0]
            n = inst.frames
            shared = _first(inst.ds, "SharedFunctionalGroupsSequence")
            shared_scale = _rescale(_first(shared, "PixelValueTransformationSequence"), _rescale(inst.ds))
            per_frame = inst.get("PerFrameFunctionalGroupsSequence")
            frames = np.arange(n, dtype=np.int64)
            fids = np.zeros(n, np.int64)
            if per_frame is None:  # no per-frame geometry: the stored order is the order
                return _Slices(fids, frames, None, np.tile(np.asarray(shared_scale, np.float64), (n, 1)))
            if len(per_frame) != n:
                raise CorruptFileError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} "
                                       "frames", path=inst.path)
            shared_plane = _first(shared, "PlanePositionSequence")
            positions: list[np.ndarray | None] = []
            rescale = np.empty((n, 2), np.float64)
            for j, item in enumerate(per_frame):
                plane = _first(item, "PlanePositionSequence") or shared_plane
                positions.append(_floats(plane.get("ImagePositionPatient"), 3, "ImagePositionPatient", inst.path)
                                 if plane is not None else None)
                rescale[j] = _rescale(_first(item, "PixelValueTransformationSequence"), shared_scale)
            pos = None if any(p is None for p in positions) else np.stack(positions)
            return _Slices(fids, frames, pos, rescale)
        found = [_floats(inst.get("ImagePositionPatient"), 3, "ImagePositionPatient", inst.path)
                 for inst in instances]
        if len(instances) > 1 and (not oriented or any(p is None for p in found)):
            raise UnsupportedFormatError("slices without ImagePositionPatient/ImageOrientationPatient cannot be "
                                         "ordered into a volume", path=instances[0].path)
        pos = None if any(p is None for p in found) else np.stack(found)
        rescale = np.asarray([_rescale(inst.ds) for inst in instances], dtype=np.float64)
        n = len(instances)
        return _Slices(np.arange(n, dtype=np.int64), np.zeros(n, np.int64), pos, rescale)

    def _order(self, slices: _Slices, normal: np.ndarray | None, thickness: float | None,
               ref: DicomInstance) -> float:
        """Sort ``slices`` along the normal; returns the slice spacing (mm), checked to be regular."""
        if len(slices) < 2 or slices.positions is None or normal is None:
            return thickness or 1.0
        along = slices.positions @ normal
        order = np.argsort(along, kind="stable")
        slices.reorder(order)
        gaps = np.diff(along[order])
        median = float(np.median(gaps))
        if median <= 1e-6 or (gaps <= 1e-6).any():
            i = int(np.argmax(gaps <= 1e-6))
            raise UnsupportedFormatError(f"two slices share position {float(along[order][i]):.4f} mm along the "
                                         "normal: a mixed or duplicated series", path=self.path)
        worst = int(np.argmax(np.abs(gaps - median)))
        if abs(gaps[worst] - median) > max(_SPACING_TOLERANCE * median, 1e-4):
            raise UnsupportedFormatError(
                f"irregular slice spacing: gap {float(gaps[worst]):.4f} mm after slice {worst} differs from the "
                f"median gap {median:.4f} mm (a missing slice?); open the slices you want as a list of files",
                path=self.path)
        # in-plane positions must line up too (no tilted or shifted stacks)
        offsets = slices.positions - np.outer(along[order], normal)
        if np.abs(offsets - offsets[0]).max() > max(1e-2 * median, 1e-2):
            raise UnsupportedFormatError("slices are shifted within their plane (a tilted or mixed series)",
                                         path=self.path)
        return median

    def _build_level(self, ref: DicomInstance, slices: _Slices) -> None:
        nz = len(slices)
        file_grid = slices.fids.reshape(1, nz, 1, 1)
        frame_grid = slices.frames.reshape(1, nz, 1, 1)
        loader = functools.partial(tile_table, self.instances, file_grid, frame_grid)
        self.levels = [Level(
            index=0, shape=(nz, ref.rows, ref.columns, ref.samples), tile_shape=(1, ref.rows, ref.columns),
            dtype=ref.dtype, downsample=1.0, codec=ref.codec, offsets=None, bytecounts=None, table_loader=loader,
        )]
