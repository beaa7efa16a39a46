"""The placement kernels (kernels/place.cu) and their launcher (cucim_like.cuda.kernels).

- NVRTC compiles the source with every name expression (no GPU needed; skipped where NVRTC cannot be loaded).
- ``place_reference`` against a plain per-element computation (NumPy only, runs everywhere).
- On a GPU (``gpu`` marker): ``place`` equals ``place_reference`` for every input/output dtype pair, both layouts,
  with and without a normalising transform and YCbCr conversion, slots with padded rows, fills, and batches of
  regions (``zdiv``).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from cucim_like.cuda import kernels
from cucim_like.cuda.placement import (
    KERNEL_IN_DTYPES,
    KERNEL_OUT_DTYPES,
    LAYOUTS,
    OutputTransform,
    ResolvedTransform,
    fill_table,
    job_table,
    place_reference,
)
from cucim_like.errors import DeviceUnavailableError, InvalidArgumentError
from cucim_like.plan import Box, TileJob

from .conftest import requires_gpu

# -- the source and its compilation ---------------------------------------------------------------------------


def test_launcher_imports_without_cupy():
    code = (
        "import sys\n"
        "import cucim_like.cuda.kernels as k\n"
        "assert 'place_tiles' in k.kernel_source() and k.NAME_EXPRESSIONS\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_name_expressions_cover_every_dtype_pair():
    names = kernels.NAME_EXPRESSIONS
    assert len(names) == len(set(names)) == len(KERNEL_IN_DTYPES) * len(KERNEL_OUT_DTYPES) + len(KERNEL_OUT_DTYPES)
    assert set(KERNEL_IN_DTYPES) | set(KERNEL_OUT_DTYPES) <= set(kernels.C_TYPES)
    assert "place_tiles<unsigned char, __half>" in names
    assert "fill_boxes<float>" in names
    source = kernels.kernel_source()
    assert "__global__ void place_tiles(" in source and "__global__ void fill_boxes(" in source


def _nvrtc_or_skip() -> None:
    """Skip when NVRTC's library cannot be loaded or no CUDA headers are found; compile errors are not caught."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        probe = nvrtc.createProgram("__global__ void probe() {}", "probe.cu", [], [])
        nvrtc.destroyProgram(probe)
    except Exception as exc:  # ImportError, OSError/RuntimeError loading libnvrtc, ...
        pytest.skip(f"NVRTC unavailable: {type(exc).__name__}: {exc}")
    try:
        kernels.cuda_include_dir()
    except DeviceUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("arch", ["compute_75", "compute_90"])
def test_nvrtc_compiles_every_instantiation(arch):
    _nvrtc_or_skip()
    ptx, lowered = kernels.compile_nvrtc(arch)
    assert set(lowered) == set(kernels.NAME_EXPRESSIONS)
    assert ptx.count(".entry ") == len(kernels.NAME_EXPRESSIONS)
    for name, mangled in lowered.items():
        assert f".entry {mangled}(" in ptx, name
    # the float arithmetic is explicit mul.rn/add.rn/sub.rn: nothing is fused, whatever --fmad says
    assert "fma." not in ptx
    assert kernels.compile_ptx(arch).count(".entry ") == len(kernels.NAME_EXPRESSIONS)


# -- cases ----------------------------------------------------------------------------------------------------

DIMS = (4, 37, 45, 4)  # (D, h, w, c) of the plan: a batch of 2 regions of depth ZDIV
ZDIV = 2
TILE = (16, 16)
ORIGIN = (5, 9)  # region origin in the level
LEVEL = (40, 50)  # level extent: the region's last rows and columns lie outside and are filled
FILL = 200.0


def random_values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random samples over the dtype's whole range; floats span many magnitudes and include halves, NaN, inf."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    x = rng.uniform(-1.5, 1.5, shape) * 10.0 ** rng.integers(-3, 6, shape)
    halves = rng.random(shape) < 0.2
    x[halves] = np.round(x[halves] * 2) / 2
    x = x.astype(dt)
    flat = x.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, 0.5, -0.5, 2.5, -2.5, 0.49999997, 1e-45, 65519.0, 70000.0], dt)
    flat[rng.choice(flat.size, specials.size, replace=False)] = specials
    return x


def make_transform(in_dtype: str, out_dtype: str, layout: str, normalise: bool, channels: int) -> ResolvedTransform:
    """Identity (dtype and layout only) or a per-channel mean/std normalisation."""
    if not normalise:
        return OutputTransform(dtype=out_dtype, layout=layout).resolve(np.dtype(in_dtype), channels)
    if in_dtype in ("uint8", "float32"):
        mean, std = [0.485, 0.456, 0.406, 0.5], [0.229, 0.224, 0.225, 0.25]
    else:
        mean, std = [1000.0, 2000.0, -300.0, 0.0], [250.0, 500.0, 100.0, 1.0]
    return OutputTransform(dtype=out_dtype, layout=layout, mean=mean[:channels], std=std[:channels]).resolve(
        np.dtype(in_dtype), channels
    )


def make_case(rng: np.random.Generator, in_dtype: str, ycbcr: bool, dims: tuple[int, int, int, int] = DIMS,
              zdiv: int = ZDIV) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """A batch of D / zdiv region reads of depth zdiv over a tiled level: (bases, slots, jobs, fills).

    Slots are views of wider arrays (padded rows, an extra channel): ``slots[i] = bases[i][:, :, :tx, :4]``. Jobs
    copy 3 channels (from slot channel 0 with YCbCr, else 1) to output channels 0..2; channel 3 and the parts of
    each region outside the level are fill boxes.
    """
    D, H, W, C = dims
    zdiv = zdiv or D
    th, tw = TILE
    oy, ox = ORIGIN
    lh, lw = LEVEL
    sc0 = 0 if ycbcr else 1
    bases: list[np.ndarray] = []
    jobs: list[TileJob] = []
    boxes: list[Box] = []
    inside_h, inside_w = min(H, lh - oy), min(W, lw - ox)
    for z0 in range(0, D, zdiv):
        zs = (z0, z0 + zdiv)
        for ty in range(math.ceil(lh / th)):
            for tx in range(math.ceil(lw / tw)):
                y0, y1 = max(ty * th, oy), min((ty + 1) * th, oy + H, lh)
                x0, x1 = max(tx * tw, ox), min((tx + 1) * tw, ox + W, lw)
                if y0 >= y1 or x0 >= x1:
                    continue
                slot = len(bases)
                bases.append(random_values(rng, (zdiv, th, tw + 3, 5), in_dtype))
                src_yx = ((y0 - ty * th, y1 - ty * th), (x0 - tx * tw, x1 - tx * tw))
                dst_yx = ((y0 - oy, y1 - oy), (x0 - ox, x1 - ox))
                # every other tile as one job per z slice, so boxes also start inside a region
                for za, zb in [(0, zdiv)] if (ty + tx) % 2 else [(k, k + 1) for k in range(zdiv)]:
                    src = ((za, zb), *src_yx, (sc0, sc0 + 3))
                    jobs.append(TileJob(slot, src, ((z0 + za, z0 + zb), *dst_yx, (0, 3))))
        boxes += [((z, z + 1), (0, inside_h), (0, inside_w), (3, C)) for z in range(z0, z0 + zdiv)]
        if inside_h < H:
            boxes.append((zs, (inside_h, H), (0, W), (0, C)))
        if inside_w < W:
            boxes.append((zs, (0, inside_h), (inside_w, W), (0, C)))
    order = rng.permutation(len(jobs))
    slots = [base[:, :, :tw, :4] for base in bases]
    table = job_table([jobs[i] for i in order])
    return bases, slots, table, fill_table(boxes)


def empty_out(transform: ResolvedTransform, dims: tuple[int, int, int, int], zdiv: int = ZDIV) -> np.ndarray:
    """An output array (``transform.out_shape(dims, zdiv)``) holding a sentinel, so unwritten elements show."""
    return np.full(transform.out_shape(dims, zdiv), 7, transform.dtype)


# -- place_reference against a per-element computation (NumPy only) ------------------------------------------

f32 = np.float32


def _cast(value: np.generic, dtype: np.dtype) -> np.generic:
    """One value to ``dtype``: integer to integer saturates; floats to integers NaN -> 0, half away from zero (in
    float32: floor(v + 0.5) / ceil(v - 0.5)), saturated; to floats directly."""
    if dtype.kind == "f":
        return dtype.type(value)
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    if isinstance(value, np.integer):
        return dtype.type(min(max(int(value), lo), hi))
    v = f32(value)
    if math.isnan(v):
        return dtype.type(0)
    if math.isinf(v):
        return dtype.type(hi if v > 0 else lo)
    r = math.floor(f32(v + f32(0.5))) if v >= 0 else math.ceil(f32(v - f32(0.5)))
    return dtype.type(min(max(r, lo), hi))


def _ycbcr(samples: Sequence[np.generic], dtype: np.dtype) -> list[np.generic]:
    maxval = float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0
    half = f32((maxval + 1) / 2)
    y, cb, cr = f32(samples[0]), f32(samples[1]) - half, f32(samples[2]) - half
    rgb = [y + f32(1.402) * cr, y - f32(0.344136) * cb - f32(0.714136) * cr, y + f32(1.772) * cb]
    out = []
    for v in rgb:
        r = float(v)
        if math.isfinite(r):
            r = round(r)  # half to even
        r = r if math.isnan(r) else min(max(r, 0.0), maxval)
        out.append(dtype.type(r))
    return out


def naive_place(slots: Sequence[np.ndarray], jobs: np.ndarray, fills: np.ndarray, out: np.ndarray, fill: float,
                transform: ResolvedTransform, ycbcr: bool, zdiv: int) -> np.ndarray:
    """The placement contract, written out one element at a time; ``out`` is (D, h, w, c) or, channels first,
    (D / zdiv, c, zdiv, h, w)."""
    dtype = np.dtype(transform.dtype)

    def put(z: int, y: int, x: int, c: int, value: np.generic) -> None:
        q, r = divmod(z, zdiv)
        out[(q, c, r, y, x) if transform.channels_first else (z, y, x, c)] = value

    def apply(value: np.generic, c: int) -> np.generic:
        if transform.identity:
            return _cast(value, dtype)
        return _cast(f32(f32(value) * transform.mul[c]) + transform.add[c], dtype)

    for slot, sz, sy, sx, sc, dz, dy, dx, dc, nz, ny, nx, nc in jobs.tolist():
        tile = slots[slot]
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    samples = [tile[sz + z, sy + y, sx + x, sc + c] for c in range(nc)]
                    if ycbcr and nc == 3:
                        samples = _ycbcr(samples, tile.dtype)
                    for c in range(nc):
                        put(dz + z, dy + y, dx + x, dc + c, apply(samples[c], dc + c))
    for dz, dy, dx, dc, nz, ny, nx, nc in fills.tolist():
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    for c in range(nc):
                        put(dz + z, dy + y, dx + x, dc + c, apply(f32(fill), dc + c))
    return out


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Integers and float32 exactly equal (NaN where NaN); float16 within rtol 1e-3."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == np.float16:
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "in_dtype, out_dtype, layout, normalise, ycbcr, zdiv",
    [
        ("uint8", "uint8", "HWC", False, False, 0),
        ("uint8", "float32", "CHW", True, True, 2),
        ("uint16", "float16", "CHW", True, False, 0),
        ("int16", "uint8", "HWC", False, True, 1),
        ("float32", "int16", "HWC", True, False, 2),
        ("float32", "uint16", "CHW", False, True, 1),
    ],
)
def test_reference_matches_per_element_placement(in_dtype, out_dtype, layout, normalise, ycbcr, zdiv):
    rng = np.random.default_rng(11)
    dims = (2, 13, 17, 4)
    _, slots, jobs, fills = make_case(rng, in_dtype, ycbcr, dims, zdiv)
    transform = make_transform(in_dtype, out_dtype, layout, normalise, dims[-1])
    got = place_reference(slots, jobs, fills, empty_out(transform, dims, zdiv), FILL, transform, ycbcr, zdiv)
    want = naive_place(slots, jobs, fills, empty_out(transform, dims, zdiv), FILL, transform, ycbcr, zdiv or 2)
    assert_same(got, want)


@pytest.mark.parametrize("ycbcr", [False, True])
@pytest.mark.parametrize("zdiv", [0, 1, 2])
def test_cases_cover_the_output_exactly_once(ycbcr, zdiv):
    """Jobs and fills of make_case partition the output (so the order the GPU writes them in is irrelevant)."""
    _, slots, jobs, fills = make_case(np.random.default_rng(0), "uint8", ycbcr, DIMS, zdiv)
    count = np.zeros(DIMS, np.int32)
    for *_, dz, dy, dx, dc, nz, ny, nx, nc in jobs.tolist():
        count[dz : dz + nz, dy : dy + ny, dx : dx + nx, dc : dc + nc] += 1
    for dz, dy, dx, dc, nz, ny, nx, nc in fills.tolist():
        count[dz : dz + nz, dy : dy + ny, dx : dx + nx, dc : dc + nc] += 1
    assert np.all(count == 1)
    assert len(jobs) > 4 and all(slot.strides[2] > slot.shape[3] * slot.itemsize for slot in slots)  # padded


def test_reference_rounds_half_away_from_zero_and_saturates():
    values = np.array([2.5, -2.5, 3.5, 0.4, 300.0, -40000.0, np.nan, np.inf, -np.inf], np.float32)
    slots = [values.reshape(1, 1, -1, 1)]
    jobs = job_table([TileJob(0, ((0, 1), (0, 1), (0, 9), (0, 1)), ((0, 1), (0, 1), (0, 9), (0, 1)))])
    none = fill_table([])
    expected = {
        "int16": [3, -3, 4, 0, 300, -32768, 0, 32767, -32768],
        "uint8": [3, 0, 4, 0, 255, 0, 0, 255, 0],
        "uint16": [3, 0, 4, 0, 300, 0, 0, 65535, 0],
    }
    for dtype, want in expected.items():
        transform = OutputTransform(dtype=dtype).resolve(np.dtype("float32"), 1)
        out = place_reference(slots, jobs, none, np.zeros((1, 1, 9, 1), dtype), 0.0, transform)
        assert out.reshape(-1).tolist() == want, dtype


def test_reference_ycbcr_known_colours():
    ycc = np.array([[128, 128, 128], [255, 128, 128], [0, 128, 128], [76, 85, 255]], np.uint8).reshape(1, 1, 4, 3)
    jobs = job_table([TileJob(0, ((0, 1), (0, 1), (0, 4), (0, 3)), ((0, 1), (0, 1), (0, 4), (0, 3)))])
    transform = OutputTransform().resolve(np.dtype("uint8"), 3)
    out = place_reference([ycc], jobs, fill_table([]), np.zeros((1, 1, 4, 3), np.uint8), 0.0, transform, True)
    assert out.reshape(4, 3).tolist() == [[128, 128, 128], [255, 255, 255], [0, 0, 0], [254, 0, 0]]


def test_reference_fills_channels_first_with_the_transformed_value():
    transform = OutputTransform(dtype="float32", layout="CHW", mean=0.5, std=0.25).resolve(np.dtype("uint8"), 3)
    assert transform.out_shape((2, 4, 5, 3), 1) == (2, 3, 1, 4, 5)
    fills = fill_table([((1, 2), (1, 3), (2, 5), (0, 3)), ((0, 1), (0, 1), (0, 5), (2, 3))])
    no_jobs = np.zeros((0, 13), np.int32)
    out = place_reference([], no_jobs, fills, np.zeros((2, 3, 1, 4, 5), np.float32), 255.0, transform, zdiv=1)
    np.testing.assert_allclose(out[1, :, 0, 1:3, 2:5], 2.0, rtol=1e-6)  # region 1, all channels
    np.testing.assert_allclose(out[0, 2, 0, 0, :], 2.0, rtol=1e-6)  # region 0, channel 2, row 0
    assert np.count_nonzero(out) == 3 * 2 * 3 + 5
    assert_same(out, naive_place([], no_jobs, fills, np.zeros_like(out), 255.0, transform, False, 1))


# -- the kernels against the reference (GPU) ------------------------------------------------------------------


def run_on_gpu(bases: list[np.ndarray], slots: list[np.ndarray], jobs: np.ndarray, fills: np.ndarray,
               transform: ResolvedTransform, ycbcr: bool, dims: tuple[int, int, int, int], zdiv: int = ZDIV,
               fill: float = FILL) -> np.ndarray:
    """``kernels.place`` on device copies of the case (slots as the same padded views), back on the host."""
    import cupy

    device_slots = []
    for base, slot in zip(bases, slots, strict=True):
        view = cupy.asarray(base)[tuple(slice(0, n) for n in slot.shape)]
        assert view.strides == slot.strides
        device_slots.append(view)
    out = cupy.asarray(empty_out(transform, dims, zdiv))
    kernels.place(device_slots, jobs, fills, out, fill, transform, ycbcr, zdiv)
    return cupy.asnumpy(out)


@pytest.mark.gpu
@pytest.mark.parametrize("ycbcr", [False, True], ids=["raw", "ycbcr"])
@pytest.mark.parametrize("normalise", [False, True], ids=["identity", "normalise"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("out_dtype", KERNEL_OUT_DTYPES)
@pytest.mark.parametrize("in_dtype", KERNEL_IN_DTYPES)
def test_kernel_matches_reference(in_dtype, out_dtype, layout, normalise, ycbcr):
    requires_gpu()
    seed = [KERNEL_IN_DTYPES.index(in_dtype), KERNEL_OUT_DTYPES.index(out_dtype), LAYOUTS.index(layout),
            int(normalise), int(ycbcr)]
    rng = np.random.default_rng(seed)
    bases, slots, jobs, fills = make_case(rng, in_dtype, ycbcr)
    transform = make_transform(in_dtype, out_dtype, layout, normalise, DIMS[-1])
    want = place_reference(slots, jobs, fills, empty_out(transform, DIMS), FILL, transform, ycbcr, ZDIV)
    got = run_on_gpu(bases, slots, jobs, fills, transform, ycbcr, DIMS)
    assert_same(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("zdiv", [0, 1, 4])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_kernel_matches_reference_for_other_region_depths(layout, zdiv):
    requires_gpu()
    rng = np.random.default_rng(zdiv)
    bases, slots, jobs, fills = make_case(rng, "uint8", True, DIMS, zdiv)
    transform = make_transform("uint8", "float32", layout, True, DIMS[-1])
    want = place_reference(slots, jobs, fills, empty_out(transform, DIMS, zdiv), FILL, transform, True, zdiv)
    got = run_on_gpu(bases, slots, jobs, fills, transform, True, DIMS, zdiv)
    assert_same(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", KERNEL_OUT_DTYPES)
def test_kernel_rounding_edges_match_reference(out_dtype):
    """Ties, the float32 tie just below 0.5, NaN/inf and subnormals (no flush to zero, no fused multiply-add)."""
    requires_gpu()
    values = np.array([0.49999997, -0.49999997, 0.5, -0.5, 1.5, 2.5, -2.5, np.nan, np.inf, -np.inf, 1e-45, -1e-45,
                       1e-10, 65519.0, 65520.0, 3.4e38], np.float32)
    n = values.size
    base = values.reshape(1, 1, n, 1)
    jobs = job_table([TileJob(0, ((0, 1), (0, 1), (0, n), (0, 1)), ((0, 1), (0, 1), (0, n), (0, 1)))])
    fills = fill_table([((0, 1), (1, 2), (0, n), (0, 1))])
    dims = (1, 2, n, 1)
    for mean, std in ((None, None), (0.0, 1e30), (0.1, 3.0)):  # identity; subnormal products; ordinary
        transform = OutputTransform(dtype=out_dtype, mean=mean, std=std).resolve(np.dtype("float32"), 1)
        want = place_reference([base], jobs, fills, empty_out(transform, dims, 0), 0.49999997, transform)
        got = run_on_gpu([base], [base], jobs, fills, transform, False, dims, 0, fill=0.49999997)
        if out_dtype == "float32":
            np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
        assert_same(got, want)


@pytest.mark.gpu
def test_kernel_splits_launches_beyond_65535_jobs_and_uses_the_current_stream():
    requires_gpu()
    import cupy

    dims = (1, 300, 450, 1)
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (1, 300, 450, 1), dtype=np.uint8)
    ys, xs = np.divmod(np.arange(300 * 450), 450)
    even = (ys + xs) % 2 == 0
    jobs = np.zeros((int(even.sum()), 13), np.int32)
    jobs[:, 2], jobs[:, 3], jobs[:, 6], jobs[:, 7] = ys[even], xs[even], ys[even], xs[even]
    jobs[:, 9:13] = 1
    fills = np.zeros((int((~even).sum()), 8), np.int32)
    fills[:, 1], fills[:, 2] = ys[~even], xs[~even]
    fills[:, 4:8] = 1
    assert len(jobs) > 65535 and len(fills) > 65535
    transform = OutputTransform(dtype="float32", mean=0.5, std=0.2).resolve(np.dtype("uint8"), 1)
    want = place_reference([base], jobs, fills, empty_out(transform, dims, 0), 17.0, transform)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        out = cupy.asarray(empty_out(transform, dims, 0))
        kernels.place([cupy.asarray(base)], jobs, fills, out, 17.0, transform, False)
        got = out.get(stream=stream)
    stream.synchronize()
    assert_same(got, want)


@pytest.mark.gpu
def test_place_refuses_bad_tables_and_dtypes():
    requires_gpu()
    import cupy

    transform = OutputTransform().resolve(np.dtype("uint8"), 3)
    out = cupy.zeros((2, 8, 8, 3), np.uint8)  # two regions of depth 1 (zdiv=1)
    slot = cupy.zeros((2, 8, 8, 3), np.uint8)
    good = job_table([TileJob(0, ((0, 1), (0, 8), (0, 8), (0, 3)), ((1, 2), (0, 8), (0, 8), (0, 3)))])
    none = fill_table([])
    kernels.place([slot], good, none, out, 0.0, transform, False, 1)
    for column, value in ((0, 1), (2, 1), (6, 1), (8, 1), (12, 4), (1, -1), (5, 2), (5, 0)):
        bad = good.copy()
        bad[0, column] = value
        if column == 5 and value == 0:
            bad[0, 9] = 2  # z 0..2 lies in the output but crosses the boundary of regions of depth 1
        with pytest.raises(InvalidArgumentError):
            kernels.place([slot], bad, none, out, 0.0, transform, False, 1)
    with pytest.raises(InvalidArgumentError):
        kernels.place([slot], np.zeros((0, 13), np.int32), fill_table([((0, 1), (0, 9), (0, 8), (0, 3))]), out,
                      0.0, transform, False, 1)
    with pytest.raises(InvalidArgumentError, match="region depth"):
        kernels.place([slot], good, none, out, 0.0, transform, False, 3)
    with pytest.raises(InvalidArgumentError, match="slot dtype"):
        kernels.place([slot.astype(np.int32)], good, none, out, 0.0,
                      OutputTransform(dtype="uint8").resolve(np.dtype("int32"), 3), False, 1)
    with pytest.raises(InvalidArgumentError, match="output dtype"):
        kernels.place([slot], good, none, out.astype(np.float64), 0.0,
                      OutputTransform(dtype="float64").resolve(np.dtype("uint8"), 3), False, 1)
    with pytest.raises(InvalidArgumentError, match="channels-first"):
        kernels.place([slot], good, none, out, 0.0, OutputTransform(layout="CHW").resolve(np.dtype("uint8"), 3),
                      False, 1)
