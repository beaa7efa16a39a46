"""DICOM VL Whole Slide Microscopy series: pyramid levels, optical paths, focal planes, associated images.

Each instance of the series is one level (or part of one: concatenations, optical paths or focal planes in
other files). Frames map to tiles by the TILED_FULL order (columns, rows, focal planes, optical paths) or, for
TILED_SPARSE, by their per-frame positions; tiles no frame covers read as fill.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from typing import Any

import numpy as np

from ...errors import CorruptFileError, CucimLikeError, UnsupportedFormatError
from ..base import AssociatedImage, Level
from .frames import tile_table
from .header import DicomInstance, DicomSource, check_uniform

_ASSOCIATED = {"LABEL": "label", "OVERVIEW": "macro", "THUMBNAIL": "thumbnail"}
# Bounds on a level's tile grid, whose tables are dense arrays: at most 2**25 tiles (a 200,000-pixel-square
# level in 64-pixel tiles has 9.8 million), and at most 4096 tiles per stored frame (a sparse slide covering
# 1/4096 of its matrix)
_MAX_GRID_TILES = 1 << 25
_TILES_PER_FRAME = 4096


def _first(seq_owner, keyword: str):
    """Item 0 of a sequence attribute, or None."""
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _shared(inst: DicomInstance, keyword: str):
    return _first(_first(inst.ds, "SharedFunctionalGroupsSequence"), keyword)


def image_flavor(inst: DicomInstance) -> str:
    """ImageType's third value (VOLUME, LABEL, OVERVIEW, THUMBNAIL); VOLUME when absent (legacy files)."""
    image_type = inst.get("ImageType")
    if image_type is not None and not isinstance(image_type, str) and len(image_type) >= 3:
        return str(image_type[2]).upper()
    return "VOLUME"


def _matrix_size(inst: DicomInstance) -> tuple[int, int]:
    """(width, height) of the whole pixel matrix; one frame's size for files without the attributes."""
    w = inst.get("TotalPixelMatrixColumns")
    h = inst.get("TotalPixelMatrixRows")
    if w is None or h is None:
        return inst.columns, inst.rows
    w, h = int(w), int(h)
    if not 0 < w < 1 << 31 or not 0 < h < 1 << 31:
        raise CorruptFileError(f"TotalPixelMatrix {w} x {h} is invalid", path=inst.path)
    return w, h


def _optical_paths(inst: DicomInstance) -> list[str]:
    seq = inst.get("OpticalPathSequence") or []
    ids = [str(item.get("OpticalPathIdentifier", i)) for i, item in enumerate(seq)]
    return ids or ["0"]


def _z_um(item) -> float:
    pos = _first(item, "PlanePositionSlideSequence")
    return float(pos.get("ZOffsetInSlideCoordinateSystem", 0.0) or 0.0) if pos is not None else 0.0


class _Frames:
    """Frames of one level as parallel int64/float64 columns: file id, frame number, optical path (index into
    ``paths``), z in um, tile row, tile column. TILED_FULL frames are added without a loop per frame."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._parts: list[tuple[np.ndarray, ...]] = []

    def _path_index(self, ids: list[str]) -> np.ndarray:
        for pid in ids:
            if pid not in self.paths:
                self.paths.append(pid)
        return np.asarray([self.paths.index(pid) for pid in ids], dtype=np.int64)

    def add_tiled_full(self, fid: int, inst: DicomInstance, across: int, down: int) -> None:
        paths = _optical_paths(inst)
        nz = int(inst.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        z0 = _z_um(_first(inst.ds, "SharedFunctionalGroupsSequence"))
        measures = _shared(inst, "PixelMeasuresSequence")
        dz = float(measures.get("SpacingBetweenSlices", 0) or 0) * 1000 if measures is not None else 0.0
        start = int(inst.get("ConcatenationFrameOffsetNumber", 0) or 0)
        if nz < 1 or start < 0:
            raise CorruptFileError("TotalPixelMatrixFocalPlanes or ConcatenationFrameOffsetNumber is invalid",
                                   path=inst.path)
        frame = np.arange(inst.frames, dtype=np.int64)
        g = start + frame
        tx, rest = g % across, g // across
        ty, rest = rest % down, rest // down
        zi, pi = rest % nz, rest // nz
        if pi.max() >= len(paths):
            raise CorruptFileError(f"{inst.frames} frames from offset {start} exceed the TILED_FULL matrix of "
                                   f"{across} x {down} tiles x {nz} focal planes x {len(paths)} optical paths",
                                   path=inst.path)
        self._parts.append((np.full(inst.frames, fid, np.int64), frame, self._path_index(paths)[pi],
                            np.round(z0 + zi * dz, 6), ty, tx))

    def add_sparse(self, fid: int, inst: DicomInstance, tile_w: int, tile_h: int) -> None:
        """Add the frames of a TILED_SPARSE instance from their per-frame positions. Runs at open, or on the
        level's first read: a damaged value (pydicom converts them on access) is a CorruptFileError."""
        try:
            self._add_sparse(fid, inst, tile_w, tile_h)
        except CucimLikeError:
            raise
        except Exception as exc:
            raise CorruptFileError(f"per-frame functional groups are damaged: {type(exc).__name__}: {exc}",
                                   path=inst.path) from exc

    def _add_sparse(self, fid: int, inst: DicomInstance, tile_w: int, tile_h: int) -> None:
        per_frame = inst.get("PerFrameFunctionalGroupsSequence")
        if per_frame is None or len(per_frame) != inst.frames:
            raise CorruptFileError("TILED_SPARSE instance needs one PerFrameFunctionalGroupsSequence item per "
                                   "frame", path=inst.path)
        shared = _first(inst.ds, "SharedFunctionalGroupsSequence")
        default_path = _optical_paths(inst)[0]
        shared_path = _first(shared, "OpticalPathIdentificationSequence")
        if shared_path is not None:
            default_path = str(shared_path.get("OpticalPathIdentifier", default_path))
        n = inst.frames
        cols, rows, z = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.float64)
        path_ids: list[str] = []
        for j, item in enumerate(per_frame):
            pos = _first(item, "PlanePositionSlideSequence") or _first(shared, "PlanePositionSlideSequence")
            if pos is None:
                raise CorruptFileError("frame has no PlanePositionSlideSequence", path=inst.path,
                                       tile=f"frame {j}")
            cols[j] = int(pos.get("ColumnPositionInTotalImagePixelMatrix", 0) or 0) - 1
            rows[j] = int(pos.get("RowPositionInTotalImagePixelMatrix", 0) or 0) - 1
            z[j] = float(pos.get("ZOffsetInSlideCoordinateSystem", 0.0) or 0.0)
            path_item = _first(item, "OpticalPathIdentificationSequence")
            path_ids.append(str(path_item.get("OpticalPathIdentifier", default_path)) if path_item is not None
                            else default_path)
        off_grid = (cols < 0) | (rows < 0) | (cols % tile_w != 0) | (rows % tile_h != 0)
        if off_grid.any():
            j = int(np.argmax(off_grid))
            raise UnsupportedFormatError(f"frame {j} at pixel ({cols[j] + 1}, {rows[j] + 1}) is not on the tile "
                                         "grid", path=inst.path)
        self._parts.append((np.full(n, fid, np.int64), np.arange(n, dtype=np.int64), self._path_index(path_ids),
                            np.round(z, 6), rows // tile_h, cols // tile_w))

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(c) for c in zip(*self._parts, strict=True))


def _grids(fid_col: np.ndarray, frame_col: np.ndarray, ty_col: np.ndarray, tx_col: np.ndarray, chosen: np.ndarray,
           down: int, across: int) -> tuple[np.ndarray, np.ndarray]:
    """(file ids, frame numbers) per tile (1, 1, down, across) of the ``chosen`` frames; -1: no frame."""
    sel = np.flatnonzero(chosen)[::-1]  # on duplicates the first frame wins
    file_grid = np.zeros((1, 1, down, across), np.int64)
    frame_grid = np.full((1, 1, down, across), -1, np.int64)
    file_grid[0, 0, ty_col[sel], tx_col[sel]] = fid_col[sel]
    frame_grid[0, 0, ty_col[sel], tx_col[sel]] = frame_col[sel]
    return file_grid, frame_grid


def _organization(inst: DicomInstance) -> str:
    return str(inst.get("DimensionOrganizationType", "") or "").upper()


_Z_OFFSET = 0x0040074A  # ZOffsetInSlideCoordinateSystem


def _scanned_planes(insts: list[DicomInstance]) -> np.ndarray | None:
    """The focal planes (z in um, sorted, rounded as the frames' are) of TILED_SPARSE instances, from a scan
    of their per-frame groups' bytes; None unless every frame names exactly one z and the distinct values
    are as many as TotalPixelMatrixFocalPlanes declares."""
    found = []
    for inst in insts:
        values = inst.scan_values("PerFrameFunctionalGroupsSequence", _Z_OFFSET)
        if values is None or len(values) != inst.frames:
            return None
        try:
            found.append(np.array([float(v.decode("ascii").strip()) for v in values], np.float64))
        except (UnicodeDecodeError, ValueError):
            return None
    planes = np.unique(np.round(np.concatenate(found), 6))
    declared = {int(inst.get("TotalPixelMatrixFocalPlanes", 1) or 1) for inst in insts}
    if declared != {len(planes)} or not np.isfinite(planes).all():
        return None
    return planes


def _lazy_sparse_keys(insts: list[DicomInstance]) -> list[tuple[str, float]] | None:
    """The variants (optical path, z in um) of a level whose instances are all TILED_SPARSE, known without
    parsing the frames' positions: one per declared optical path and focal plane, the planes from a scan of
    the per-frame groups (checked against the parsed positions on the first read). One focal plane the scan
    cannot settle: z from the shared functional groups. None for other levels, or several planes the scan
    cannot settle.

    Such a level's frames need not be read at open: where each frame goes is only needed by the first read.
    """
    if any(_organization(inst) != "TILED_SPARSE" for inst in insts):
        return None
    declared = list(dict.fromkeys(pid for inst in insts for pid in _optical_paths(inst)))
    planes = _scanned_planes(insts)
    if planes is None:
        if any(int(inst.get("TotalPixelMatrixFocalPlanes", 1) or 1) != 1 for inst in insts):
            return None
        # one plane the scan could not read (positions in the shared groups, say): the shared z
        planes = [round(_z_um(_first(insts[0].ds, "SharedFunctionalGroupsSequence")), 6)]
    return [(pid, float(z)) for pid in declared for z in planes]


def _sparse_table(instances: list[DicomInstance], fids: tuple[int, ...], down: int, across: int,
                  keys: tuple[tuple[str, float], ...], key: tuple[str, float], memo: dict,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile table of variant ``key`` (optical path, z) of a lazily read TILED_SPARSE level whose variants are
    ``keys``. The frames' positions are read once per level (``memo`` is shared by its variants; loaders run
    under the levels' table lock). With one declared path every frame belongs to it; with one focal plane
    every frame lies in it."""
    ref = instances[fids[0]]
    paths = tuple(dict.fromkeys(k[0] for k in keys))
    planes = tuple(dict.fromkeys(k[1] for k in keys))
    if "columns" not in memo:
        frames = _Frames()
        for fid in fids:
            frames.add_sparse(fid, instances[fid], ref.columns, ref.rows)
        undeclared = [pid for pid in frames.paths if pid not in paths]
        if len(paths) > 1 and undeclared:
            raise CorruptFileError(f"frames name optical path {undeclared[0]!r}, which the file does not declare "
                                   f"(it declares {list(paths)})", path=ref.path)
        columns = frames.columns()
        off_plane = ~np.isin(columns[3], planes)
        if len(planes) > 1 and off_plane.any():
            raise CorruptFileError(f"a frame lies at z {float(columns[3][off_plane][0])} um, not on the focal planes "
                                   f"{list(planes)} found at open", path=ref.path)
        memo["columns"], memo["paths"] = columns, frames.paths
    fid_col, frame_col, path_col, z_col, ty_col, tx_col = memo["columns"]
    chosen = (ty_col < down) & (tx_col < across)
    if len(paths) > 1:
        chosen &= path_col == (memo["paths"].index(key[0]) if key[0] in memo["paths"] else -1)
    if len(planes) > 1:
        chosen &= z_col == key[1]
    file_grid, frame_grid = _grids(fid_col, frame_col, ty_col, tx_col, chosen, down, across)
    return tile_table(instances, file_grid, frame_grid)


class DicomWsiSource(DicomSource):
    """A DICOM WSI series opened from its instances' headers (see module docstring)."""

    vendor = "dicom-wsi"

    def __init__(self, path: str, instances: list[DicomInstance]) -> None:
        super().__init__(path, instances)
        volumes: dict[tuple[int, int], list[int]] = defaultdict(list)
        for fid, inst in enumerate(instances):
            flavor = image_flavor(inst)
            if flavor in _ASSOCIATED:
                name = _ASSOCIATED[flavor]
                if name not in self.associated:
                    self.associated[name] = AssociatedImage(name, self._single_level(-1, [fid])[1][0])
                continue
            volumes[_matrix_size(inst)].append(fid)
        if not volumes:
            raise UnsupportedFormatError("DICOM WSI series has no VOLUME instance", path=path)
        sizes = sorted(volumes, key=lambda wh: (-wh[0] * wh[1], -wh[0]))
        width0 = sizes[0][0]
        per_variant: dict[tuple[str, float], list[Level]] = defaultdict(list)
        keys_order: list[tuple[str, float]] = []
        for index, size in enumerate(sizes):
            keys, levels = self._single_level(index, volumes[size], downsample=width0 / size[0])
            for key, level in zip(keys, levels, strict=True):
                if key not in per_variant:
                    keys_order.append(key)
                per_variant[key].append(level)
        first_key = keys_order[0]
        n0 = len(per_variant[first_key])
        # a variant must exist at every level of the default one to be offered
        self.variants = {k: per_variant[k] for k in keys_order if len(per_variant[k]) == n0}
        self.levels = per_variant[first_key]
        self._metadata(instances[volumes[sizes[0]][0]], keys_order)

    # -- levels --------------------------------------------------------------------------------------------
    def _single_level(self, index: int, fids: list[int], downsample: float = 1.0,
                      ) -> tuple[list[tuple[str, float]], list[Level]]:
        """Levels (one per optical path x focal plane) built from the instances ``fids`` of one size."""
        insts = [self.instances[f] for f in fids]
        ref = insts[0]
        width, height = _matrix_size(ref)
        check_uniform(insts, f"instances of one {width} x {height} level", self.path)
        across, down = math.ceil(width / ref.columns), math.ceil(height / ref.rows)
        frames_here = sum(inst.frames for inst in insts)
        if across * down > min(_MAX_GRID_TILES, max(1 << 16, _TILES_PER_FRAME * frames_here)):
            # tile tables are dense over the grid: a matrix size from a damaged header must not size them
            raise CorruptFileError(f"TotalPixelMatrix {width} x {height} in frames of {ref.columns} x {ref.rows} "
                                   f"makes {across * down} tiles for {frames_here} frames", path=ref.path)
        lazy_keys = _lazy_sparse_keys(insts)
        if lazy_keys is not None:
            # sparse: the frames' positions are read on the level's first read
            memo: dict = {}
            return lazy_keys, [Level(
                index=index, shape=(1, height, width, ref.samples), tile_shape=(1, ref.rows, ref.columns),
                dtype=ref.dtype, downsample=downsample, codec=ref.codec, offsets=None, bytecounts=None,
                table_loader=functools.partial(_sparse_table, self.instances, tuple(fids), down, across,
                                               tuple(lazy_keys), key, memo),
                variant=variant,
            ) for variant, key in enumerate(lazy_keys)]
        frames = _Frames()
        seen_parts: set[tuple[str, int]] = set()
        for fid, inst in zip(fids, insts, strict=True):
            if _organization(inst) == "TILED_SPARSE":
                frames.add_sparse(fid, inst, ref.columns, ref.rows)
            else:
                # the same concatenation part twice (a copy of a file): use it once
                part = (str(inst.get("SOPInstanceUID", fid)), int(inst.get("ConcatenationFrameOffsetNumber", 0) or 0))
                if part in seen_parts:
                    continue
                seen_parts.add(part)
                frames.add_tiled_full(fid, inst, across, down)
        fid_col, frame_col, path_col, z_col, ty_col, tx_col = frames.columns()
        # optical paths in the order the instances list them (sparse frames may come in any order)
        declared = [pid for inst in insts for pid in _optical_paths(inst)]
        path_order = list(dict.fromkeys([*declared, *frames.paths]))
        rank = np.asarray([path_order.index(pid) for pid in frames.paths], dtype=np.int64)[path_col]
        zs, z_index = np.unique(z_col, return_inverse=True)
        variant_col = rank * len(zs) + z_index.reshape(-1)
        inside = (ty_col < down) & (tx_col < across)
        keys = []
        levels = []
        for variant, code in enumerate(np.unique(variant_col)):
            keys.append((path_order[int(code) // len(zs)], float(zs[int(code) % len(zs)])))
            file_grid, frame_grid = _grids(fid_col, frame_col, ty_col, tx_col, (variant_col == code) & inside,
                                           down, across)
            loader = functools.partial(tile_table, self.instances, file_grid, frame_grid)
            levels.append(Level(
                index=index, shape=(1, height, width, ref.samples), tile_shape=(1, ref.rows, ref.columns),
                dtype=ref.dtype, downsample=downsample, codec=ref.codec, offsets=None, bytecounts=None,
                table_loader=loader, variant=variant,
            ))
        return keys, levels

    # -- metadata ------------------------------------------------------------------------------------------
    def _metadata(self, inst: DicomInstance, keys: list[tuple[str, float]]) -> None:
        ds = inst.ds
        measures = _shared(inst, "PixelMeasuresSequence")
        if measures is not None and measures.get("PixelSpacing"):
            sy, sx = (float(v) * 1000 for v in measures.PixelSpacing[:2])
            zs = sorted({k[1] for k in keys})
            sz = (zs[1] - zs[0]) if len(zs) > 1 else 1.0
            self.pixel_spacing = (sz, sy, sx)
        self.default_fill = 255 if inst.samples == 3 else 0
        optical = _first(ds, "OpticalPathSequence")
        icc = optical.get("ICCProfile") if optical is not None else None
        self.icc_profile = bytes(icc) if icc else (bytes(ds.ICCProfile) if ds.get("ICCProfile") else None)
        organization = str(ds.get("DimensionOrganizationType", "") or "")
        legacy = not organization
        section: dict[str, Any] = {
            "sop_class_uid": inst.sop_class,
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            "series_instance_uid": inst.series_uid,
            "transfer_syntax_uid": inst.transfer_syntax,
            "photometric_interpretation": inst.photometric,
            "dimension_organization_type": organization or "TILED_FULL (inferred: the file does not say)",
            "inferred_tiling": legacy,
            "manufacturer": str(ds.get("Manufacturer", "")),
            "model_name": str(ds.get("ManufacturerModelName", "")),
            "container_identifier": str(ds.get("ContainerIdentifier", "")),
            "optical_paths": list(dict.fromkeys(k[0] for k in self.variants)),
            "focal_planes_um": sorted({k[1] for k in self.variants}),
            "has_icc_profile": self.icc_profile is not None,
            "files": list(self.files),
        }
        self.vendor_metadata = {"dicom": section}
        self.raw_metadata = ""
        self.channel_names = ["R", "G", "B"] if inst.samples == 3 else ["gray"]
