"""Pure planning: a region of a level becomes tile jobs and fill boxes; tile byte ranges become coalesced reads.

Everything here is plain data and arithmetic, with no I/O and no decoding, so it is shared by the CPU and CUDA
executors and property-tested on its own. Boxes are per-axis (start, stop) pairs in (z, y, x, c) order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

Box = tuple[tuple[int, int], ...]


class TileJob(NamedTuple):
    """Copy ``src`` of decoded tile ``tile`` (flat index into the level's tile table) to ``dst`` of the output."""

    tile: int
    src: Box
    dst: Box


@dataclass(slots=True)
class Plan:
    """What one region read does: ``jobs`` copy tile parts, ``fills`` are output boxes outside the level."""

    out_shape: tuple[int, int, int, int]
    jobs: list[TileJob] = field(default_factory=list)
    fills: list[Box] = field(default_factory=list)

    def tiles(self) -> list[int]:
        """Distinct tiles the plan needs, in first-use order."""
        return list(dict.fromkeys(job.tile for job in self.jobs))


def box_slices(box: Box) -> tuple[slice, ...]:
    if len(box) == 4:  # (z, y, x, c): the boxes of plans
        (z0, z1), (y0, y1), (x0, x1), (c0, c1) = box
        return slice(z0, z1), slice(y0, y1), slice(x0, x1), slice(c0, c1)
    return tuple(slice(a, b) for a, b in box)


def _axis_spans(start: int, size: int, extent: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (tile index, start in tile, stop in tile, start in output) for the in-bounds part."""
    pos = start if start > 0 else 0
    hi = start + size
    if hi > extent:
        hi = extent
    spans = []
    while pos < hi:
        t = pos // tile
        base = t * tile
        stop = base + tile if base + tile < hi else hi
        spans.append((t, pos - base, stop - base, pos - start))
        pos = stop
    return spans


def plan_region(
    level_shape: Sequence[int],
    tile_shape: Sequence[int],
    planes: int,
    start: Sequence[int],
    size: Sequence[int],
) -> Plan:
    """Plan reading ``size`` (d, h, w) voxels at ``start`` (z, y, x) of a level, all channels.

    level_shape: (z, y, x, c); tile_shape: (tz, ty, tx); planes: 1 (contiguous samples) or c (one tile per
    sample). The output is (d, h, w, c). Parts of the region outside the level become ``fills``.
    """
    size = (int(size[0]), int(size[1]), int(size[2]))
    plan = Plan(out_shape=(*size, int(level_shape[3])))
    _plan_into(plan, level_shape, tile_shape, planes, start, size, 0)
    return plan


def _plan_into(plan: Plan, level_shape: Sequence[int], tile_shape: Sequence[int], planes: int,
               start: Sequence[int], size: tuple[int, int, int], dz: int) -> None:
    """Append the jobs and fills of one region to ``plan``, its output rows shifted by ``dz`` along z."""
    extent = (int(level_shape[0]), int(level_shape[1]), int(level_shape[2]))
    channels = int(level_shape[3])
    start = (int(start[0]), int(start[1]), int(start[2]))
    tz_, ty_, tx_ = int(tile_shape[0]), int(tile_shape[1]), int(tile_shape[2])
    grid = (-(-extent[0] // tz_), -(-extent[1] // ty_), -(-extent[2] // tx_))
    zs = _axis_spans(start[0], size[0], extent[0], tz_)
    ys = _axis_spans(start[1], size[1], extent[1], ty_)
    xs = _axis_spans(start[2], size[2], extent[2], tx_)
    per_plane = channels // planes
    jobs = plan.jobs
    for p in range(planes):
        c_box = (p * per_plane, (p + 1) * per_plane) if planes > 1 else (0, channels)
        src_c = (0, per_plane)
        for tz, z0, z1, oz in zs:
            dst_z = (oz + dz, oz + dz + z1 - z0)
            for ty, y0, y1, oy in ys:
                row = ((p * grid[0] + tz) * grid[1] + ty) * grid[2]
                for tx, x0, x1, ox in xs:
                    jobs.append(TileJob(row + tx, ((z0, z1), (y0, y1), (x0, x1), src_c),
                                        (dst_z, (oy, oy + y1 - y0), (ox, ox + x1 - x0), c_box)))
    if (start[0] < 0 or start[1] < 0 or start[2] < 0 or start[0] + size[0] > extent[0]
            or start[1] + size[1] > extent[1] or start[2] + size[2] > extent[2]):
        for (z0, z1), *rest in _outside_boxes(start, size, extent, channels):
            plan.fills.append(((z0 + dz, z1 + dz), *rest))


def _outside_boxes(start: tuple[int, ...], size: tuple[int, ...], extent: tuple[int, ...], channels: int) -> list[Box]:
    """Disjoint boxes covering the part of the output (d, h, w, c) that lies outside the level (none for a
    region inside it; :func:`_plan_into` calls this only for regions that reach outside)."""
    inside = []
    for s, n, e in zip(start, size, extent, strict=True):
        lo = min(max(0, -s), n)
        hi = max(min(n, e - s), lo)
        inside.append((lo, hi))
    boxes: list[Box] = []
    # Peel slabs axis by axis: before/after the inside range on this axis, full range on later axes,
    # the inside range on earlier axes.
    for axis in range(3):
        lo, hi = inside[axis]
        for a, b in ((0, lo), (hi, size[axis])):
            if b > a:
                box = [inside[i] if i < axis else (0, size[i]) for i in range(3)]
                box[axis] = (a, b)
                boxes.append((*box, (0, channels)))
        if hi <= lo:  # nothing inside: the slabs above already cover everything
            break
    return [b for b in boxes if all(hi > lo for lo, hi in b)]


class ByteRange(NamedTuple):
    """One read: bytes [start, stop) of file ``file_id``, holding the listed tiles (flat indices)."""

    file_id: int
    start: int
    stop: int
    tiles: tuple[int, ...]


def coalesce_ranges(
    tiles: Sequence[int],
    offsets: np.ndarray,
    lengths: np.ndarray,
    file_ids: np.ndarray | None = None,
    *,
    max_gap: int = 64 * 1024,
    max_size: int = 4 * 1024 * 1024,
) -> list[ByteRange]:
    """Sort tiles by (file, offset) and merge neighbours into reads.

    Two tiles share a read when the gap between them is at most ``max_gap`` bytes and the read stays within
    ``max_size`` bytes (a single larger tile gets a read of its own). ``offsets``/``lengths``/``file_ids`` are
    flat arrays indexed by tile.
    """
    if not len(tiles):
        return []
    if len(tiles) <= 32:  # plain Python is quicker than NumPy for a handful of tiles
        keyed = []
        for t in tiles:
            start = int(offsets[t])
            keyed.append((int(file_ids[t]) if file_ids is not None else 0, start, start + int(lengths[t]), int(t)))
        keyed.sort()
        out: list[ByteRange] = []
        cur: list = []
        for f, s, e, t in keyed:
            if cur and f == cur[0] and s - cur[2] <= max_gap and max(e, cur[2]) - cur[1] <= max_size:
                cur[2] = max(cur[2], e)
                cur[3].append(t)
                continue
            if cur:
                out.append(ByteRange(cur[0], cur[1], cur[2], tuple(cur[3])))
            cur = [f, s, e, [t]]
        out.append(ByteRange(cur[0], cur[1], cur[2], tuple(cur[3])))
        return out
    t = np.asarray(tiles, dtype=np.int64)
    off = offsets[t]
    ln = lengths[t]
    fid = file_ids[t] if file_ids is not None else np.zeros_like(off)
    order = np.lexsort((off, fid))
    ranges: list[ByteRange] = []
    cur_f = cur_s = cur_e = -1
    members: list[int] = []
    for i in order.tolist():
        f, s, e = int(fid[i]), int(off[i]), int(off[i] + ln[i])
        if members and f == cur_f and s - cur_e <= max_gap and max(e, cur_e) - cur_s <= max_size:
            cur_e = max(cur_e, e)
            members.append(int(t[i]))
            continue
        if members:
            ranges.append(ByteRange(cur_f, cur_s, cur_e, tuple(members)))
        cur_f, cur_s, cur_e, members = f, s, e, [int(t[i])]
    ranges.append(ByteRange(cur_f, cur_s, cur_e, tuple(members)))
    return ranges


def plan_batch(
    level_shape: Sequence[int],
    tile_shape: Sequence[int],
    planes: int,
    starts: Sequence[Sequence[int]],
    size: Sequence[int],
) -> Plan:
    """Plan a batch of same-size regions as one output (b * d, h, w, c): region i fills z rows
    [i * d, (i + 1) * d). A tile used by several regions appears in several jobs and is decoded once by the
    executors, which group jobs by tile."""
    size = tuple(int(v) for v in size)
    d = size[0]
    batch = Plan(out_shape=(len(starts) * d, size[1], size[2], int(level_shape[3])))
    for i, start in enumerate(starts):
        _plan_into(batch, level_shape, tile_shape, planes, start, size, i * d)
    return batch


# tile_uses works in chunks of at most this many (patch, tile) pairs, and only for levels of at most
# _USES_MAX_TILES tiles per plane (its counts take 8 bytes a tile)
_USES_CHUNK = 1 << 20
_USES_MAX_TILES = 1 << 22


@dataclass(frozen=True)
class TileUses:
    """What a batch iterator's regions need of the tiles of one plane of a level (tiles numbered as plan jobs
    number a plane's tiles: ``job.tile % len(counts)``).

    ``counts``: int64 (tiles per plane,), how many batches touch each tile (a batch counts once).
    ``boxes``: for each tile more than one batch touches, the smallest box holding all that the regions need
    of it, as ((z0, z1), (y0, y1), (x0, x1)) in tile coordinates: what is worth keeping of that tile."""

    counts: np.ndarray
    boxes: dict[int, tuple[tuple[int, int], ...]]


class _RegionTiles:
    """The (region, tile) pairs of same-size regions ``size`` (d, h, w) on a level, worked out a chunk of
    regions at a time (whole batches of ``batch_size`` per chunk)."""

    def __init__(self, level_shape: Sequence[int], tile_shape: Sequence[int], size: Sequence[int],
                 batch_size: int) -> None:
        self.extent = np.array([int(v) for v in level_shape[:3]], np.int64)
        self.tile = np.array([int(v) for v in tile_shape[:3]], np.int64)
        self.grid = -(-self.extent // self.tile)
        self.n_tiles = int(np.prod(self.grid))
        self.span = np.array([int(v) for v in size[:3]], np.int64)
        most = -(-self.span // self.tile) + 1  # tiles a region can touch along each axis, at most
        self.offsets = np.stack(np.meshgrid(*(np.arange(m) for m in most), indexing="ij"), -1).reshape(-1, 3)
        self.batch_size = max(1, int(batch_size))
        b = self.batch_size
        self.chunk = b * max(1, _USES_CHUNK // (len(self.offsets) * b))

    def pairs(self, starts: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per chunk of ``starts`` ((n, 3) int64): (batch, flat tile, part start, part stop) of its (region,
        tile) pairs, the part being what the region needs of the tile, in tile coordinates (z, y, x)."""
        extent, tile, grid = self.extent, self.tile, self.grid
        for i in range(0, len(starts), self.chunk):
            part = starts[i:i + self.chunk]
            lo = np.clip(part, 0, extent)
            hi = np.clip(part + self.span, 0, extent)
            first, last = lo // tile, (hi - 1) // tile  # last < first along an axis the region misses
            t = first[:, None, :] + self.offsets[None, :, :]  # (regions, per_region, 3)
            inside = np.all((t <= last[:, None, :]) & (hi > lo)[:, None, :], axis=2)
            flat = (t[..., 0] * grid[1] + t[..., 1]) * grid[2] + t[..., 2]
            batch = np.broadcast_to((np.arange(i, i + len(part)) // self.batch_size)[:, None], flat.shape)
            origin = t * tile
            p0 = np.maximum(lo[:, None, :], origin) - origin
            p1 = np.minimum(hi[:, None, :], origin + tile) - origin
            yield batch[inside], flat[inside], p0[inside], p1[inside]


def tile_uses(level_shape: Sequence[int], tile_shape: Sequence[int], starts: np.ndarray, size: Sequence[int],
              batch_size: int, boxes: bool = True) -> TileUses | None:
    """:class:`TileUses` of same-size regions ``size`` (d, h, w) at ``starts`` ((n, 3) int (z, y, x), in
    delivery order; regions ``[i * batch_size, (i + 1) * batch_size)`` form batch i); its ``boxes`` left empty
    unless ``boxes``. None for levels of more than ``_USES_MAX_TILES`` tiles per plane."""
    pairs = _RegionTiles(level_shape, tile_shape, size, batch_size)
    if pairs.n_tiles > _USES_MAX_TILES:
        return None
    starts = np.asarray(starts, np.int64).reshape(-1, 3)
    counts = np.zeros(pairs.n_tiles, np.int64)
    for batch, flat, _, _ in pairs.pairs(starts):
        keys = np.unique(batch * pairs.n_tiles + flat)  # one per (batch, tile)
        counts += np.bincount(keys % pairs.n_tiles, minlength=pairs.n_tiles)
    multi = np.flatnonzero(counts > 1) if boxes else np.zeros(0, np.int64)
    return TileUses(counts, tile_boxes(level_shape, tile_shape, starts, size, multi))


def tile_boxes(level_shape: Sequence[int], tile_shape: Sequence[int], starts: np.ndarray, size: Sequence[int],
               tiles: np.ndarray) -> dict[int, tuple[tuple[int, int], ...]]:
    """For each of ``tiles`` (sorted flat tile numbers of a plane) that a region ``size`` (d, h, w) at one of
    ``starts`` ((n, 3) int (z, y, x)) touches: the smallest box holding all that those regions need of it, as
    ((z0, z1), (y0, y1), (x0, x1)) in tile coordinates."""
    tiles = np.asarray(tiles, np.int64)
    if not len(tiles):
        return {}
    starts = np.asarray(starts, np.int64).reshape(-1, 3)
    lo_box = np.full((len(tiles), 3), np.iinfo(np.int64).max)
    hi_box = np.zeros((len(tiles), 3), np.int64)
    for _, flat, p0, p1 in _RegionTiles(level_shape, tile_shape, size, 1).pairs(starts):
        where = np.searchsorted(tiles, flat)
        keep = (where < len(tiles)) & (tiles[np.minimum(where, len(tiles) - 1)] == flat)
        np.minimum.at(lo_box, where[keep], p0[keep])
        np.maximum.at(hi_box, where[keep], p1[keep])
    touched = hi_box[:, 0] > 0
    return {tile_id: tuple(zip(lo, hi, strict=True)) for tile_id, lo, hi in
            zip(tiles[touched].tolist(), lo_box[touched].tolist(), hi_box[touched].tolist(), strict=True)}
