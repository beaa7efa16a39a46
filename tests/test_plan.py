"""Property tests of the planner: tile jobs and fills are disjoint and cover the output exactly."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cucim_like.plan import coalesce_ranges, plan_batch, plan_region, tile_boxes, tile_uses


@st.composite
def regions(draw):
    z, y, x = (draw(st.integers(1, 40)) for _ in range(3))
    c = draw(st.sampled_from([1, 3, 4]))
    planes = draw(st.sampled_from([1, c]))
    tz, ty, tx = draw(st.integers(1, 12)), draw(st.integers(1, 16)), draw(st.integers(1, 16))
    start = tuple(draw(st.integers(-20, e + 5)) for e in (z, y, x))
    size = tuple(draw(st.integers(1, 30)) for _ in range(3))
    return (z, y, x, c), (tz, ty, tx), planes, start, size


def _paint(plan):
    count = np.zeros(plan.out_shape, np.int32)
    for job in plan.jobs:
        count[tuple(slice(a, b) for a, b in job.dst)] += 1
    for box in plan.fills:
        count[tuple(slice(a, b) for a, b in box)] += 1
    return count


@settings(max_examples=400, deadline=None)
@given(regions())
def test_jobs_and_fills_cover_output_exactly_once(case):
    shape, tile, planes, start, size = case
    plan = plan_region(shape, tile, planes, start, size)
    assert plan.out_shape == (*size, shape[3])
    assert (_paint(plan) == 1).all()


@settings(max_examples=300, deadline=None)
@given(regions())
def test_jobs_copy_the_right_voxels(case):
    """Placing tiles of a labelled volume by the plan reproduces the volume's crop (fills marked -1)."""
    shape, tile, planes, start, size = case
    z, y, x, c = shape
    volume = np.arange(z * y * x * c, dtype=np.int64).reshape(shape)
    grid = [-(-e // t) for e, t in zip((z, y, x), tile, strict=True)]
    per = c // planes
    plan = plan_region(shape, tile, planes, start, size)
    out = np.full(plan.out_shape, -2, np.int64)
    for box in plan.fills:
        out[tuple(slice(a, b) for a, b in box)] = -1
    for job in plan.jobs:
        p, rest = divmod(job.tile, grid[0] * grid[1] * grid[2])
        iz, rest = divmod(rest, grid[1] * grid[2])
        iy, ix = divmod(rest, grid[2])
        origin = (iz * tile[0], iy * tile[1], ix * tile[2])
        padded = np.full((*tile, per), -3, np.int64)
        src = volume[origin[0]:origin[0] + tile[0], origin[1]:origin[1] + tile[1], origin[2]:origin[2] + tile[2],
                     p * per:(p + 1) * per]
        padded[: src.shape[0], : src.shape[1], : src.shape[2]] = src
        out[tuple(slice(a, b) for a, b in job.dst)] = padded[tuple(slice(a, b) for a, b in job.src)]
    expected = np.full(plan.out_shape, -1, np.int64)
    lo = [max(0, -s) for s in start]
    hi = [min(n, e - s) for s, n, e in zip(start, size, (z, y, x), strict=True)]
    if all(b > a for a, b in zip(lo, hi, strict=True)):
        expected[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = volume[
            start[0] + lo[0]:start[0] + hi[0], start[1] + lo[1]:start[1] + hi[1], start[2] + lo[2]:start[2] + hi[2]
        ]
    np.testing.assert_array_equal(out, expected)


def test_fully_outside_region_is_all_fill():
    plan = plan_region((1, 100, 100, 3), (1, 16, 16), 1, (0, 500, 500), (1, 10, 10))
    assert plan.jobs == []
    assert (_paint(plan) == 1).all()


def test_whole_level_touches_every_tile_once():
    plan = plan_region((1, 100, 70, 3), (1, 16, 16), 1, (0, 0, 0), (1, 100, 70))
    assert sorted(plan.tiles()) == list(range(7 * 5))
    assert plan.fills == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 500)), min_size=1, max_size=40),
    st.integers(0, 300),
    st.integers(500, 5000),
)
def test_coalesced_ranges_hold_each_tile_once_within_bounds(spans, max_gap, max_size):
    offsets = np.array([s[0] for s in spans], np.int64)
    lengths = np.array([s[1] for s in spans], np.int64)
    tiles = list(range(len(spans)))
    ranges = coalesce_ranges(tiles, offsets, lengths, max_gap=max_gap, max_size=max_size)
    seen = [t for r in ranges for t in r.tiles]
    assert sorted(seen) == tiles
    starts = [r.start for r in ranges]
    assert starts == sorted(starts)
    for r in ranges:
        for t in r.tiles:
            assert r.start <= offsets[t] and offsets[t] + lengths[t] <= r.stop
        if len(r.tiles) > 1:
            assert r.stop - r.start <= max_size


def test_coalesce_merges_neighbours_and_splits_gaps():
    offsets = np.array([0, 100, 200, 10_000], np.int64)
    lengths = np.array([100, 100, 100, 50], np.int64)
    ranges = coalesce_ranges([3, 1, 0, 2], offsets, lengths, max_gap=10, max_size=1 << 20)
    assert [(r.start, r.stop, r.tiles) for r in ranges] == [(0, 300, (0, 1, 2)), (10_000, 10_050, (3,))]


def test_coalesce_keeps_files_apart():
    offsets = np.array([0, 100], np.int64)
    lengths = np.array([100, 100], np.int64)
    ranges = coalesce_ranges([0, 1], offsets, lengths, np.array([0, 1]), max_gap=10)
    assert [(r.file_id, r.tiles) for r in ranges] == [(0, (0,)), (1, (1,))]


@settings(max_examples=100, deadline=None)
@given(regions(), st.lists(st.tuples(st.integers(-20, 60), st.integers(-20, 60), st.integers(-20, 60)),
                           min_size=1, max_size=6))
def test_batch_plan_stacks_regions_and_covers_once(case, more):
    shape, tile, planes, start, size = case
    starts = [start, *more]
    batch = plan_batch(shape, tile, planes, starts, size)
    assert batch.out_shape == (len(starts) * size[0], size[1], size[2], shape[3])
    assert (_paint(batch) == 1).all()
    for i, s in enumerate(starts):  # region i's jobs equal a single-region plan shifted by i * d in z
        single = plan_region(shape, tile, planes, s, size)
        d = size[0]
        mine = [j for j in batch.jobs if i * d <= j.dst[0][0] < (i + 1) * d]
        assert [(j.tile, j.src) for j in mine] == [(j.tile, j.src) for j in single.jobs]


def test_batch_shares_tiles_between_regions():
    batch = plan_batch((1, 100, 100, 3), (1, 64, 64), 1, [(0, 0, 0), (0, 10, 10), (0, 5, 20)], (1, 20, 20))
    assert batch.tiles() == [0]
    assert len(batch.jobs) == 3


@given(regions(), st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_tile_uses_counts_the_batches_that_plan_each_tile(region, n, batch_size, seed):
    """Per tile of a plane, the number of batches whose plan has a job on it (a batch counts once), and for
    the tiles of more than one batch the bounding box of the jobs' source boxes over all batches."""
    level_shape, tile_shape, planes, _, size = region
    rng = np.random.default_rng(seed)
    starts = np.stack([rng.integers(-s - 3, e + 3, n) for s, e in zip(size, level_shape[:3], strict=True)], 1)
    uses = tile_uses(level_shape, tile_shape, starts, size, batch_size)
    counts = uses.counts
    expected = np.zeros_like(counts)
    spans: dict[int, list[list[int]]] = {}
    for i in range(0, n, batch_size):
        plan = plan_batch(level_shape, tile_shape, planes, starts[i:i + batch_size].tolist(), size)
        for tile in {job.tile % len(counts) for job in plan.jobs}:
            expected[tile] += 1
        for job in plan.jobs:
            span = spans.setdefault(job.tile % len(counts), [[1 << 30, 0] for _ in range(3)])
            for axis, (a, b) in enumerate(job.src[:3]):
                span[axis] = [min(span[axis][0], a), max(span[axis][1], b)]
    np.testing.assert_array_equal(counts, expected)
    assert set(uses.boxes) == {int(t) for t in np.flatnonzero(expected > 1)}
    for tile, box in uses.boxes.items():
        assert box == tuple(tuple(v) for v in spans[tile])


def test_tile_uses_declines_levels_with_too_many_tiles():
    assert tile_uses((1, 1 << 12, 1 << 12, 3), (1, 1, 1), np.zeros((1, 3), np.int64), (1, 1, 1), 1) is None


@given(regions(), st.integers(1, 30), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_tile_boxes_bound_what_the_regions_need_of_the_given_tiles(region, n, seed):
    """For each given tile a region touches, the bounding box of the source boxes of the regions' jobs on it;
    tiles no region touches are left out."""
    level_shape, tile_shape, planes, _, size = region
    rng = np.random.default_rng(seed)
    starts = np.stack([rng.integers(-s - 3, e + 3, n) for s, e in zip(size, level_shape[:3], strict=True)], 1)
    plane_tiles = math.prod(-(-e // t) for e, t in zip(level_shape[:3], tile_shape[:3], strict=True))
    tiles = np.unique(rng.integers(0, plane_tiles, rng.integers(0, 2 * plane_tiles + 1)))
    spans: dict[int, list[list[int]]] = {}
    for job in plan_batch(level_shape, tile_shape, planes, starts.tolist(), size).jobs:
        span = spans.setdefault(job.tile % plane_tiles, [[1 << 30, 0] for _ in range(3)])
        for axis, (a, b) in enumerate(job.src[:3]):
            span[axis] = [min(span[axis][0], a), max(span[axis][1], b)]
    boxes = tile_boxes(level_shape, tile_shape, starts, size, tiles)
    assert set(boxes) == {int(t) for t in tiles} & set(spans)
    for tile, box in boxes.items():
        assert box == tuple(tuple(v) for v in spans[tile])
