// Placement kernels of the CUDA executor: copy boxes of decoded tiles ("slots") into the output array,
// converting YCbCr to RGB and applying the output transform on the way, and write fill boxes.
//
// The contract (table layout, arithmetic) is cucim_like/cuda/placement.py; `place_reference` there is the NumPy
// twin of these kernels and the tests compare the two bit for bit.
//
// Tables (int32, C-contiguous):
//   jobs  (n, 13): slot, sz0, sy0, sx0, sc0, dz0, dy0, dx0, dc0, nz, ny, nx, nc
//   boxes (m, 8):  dz0, dy0, dx0, dc0, nz, ny, nx, nc
// Output: element strides (oq, or, oy, ox, oc) of (q, r, y, x, c) where output row z = q * zdiv + r
// (ResolvedTransform.out_strides): channels last (D, h, w, c) and channels first (D / zdiv, c, zdiv, h, w), a
// batch of D / zdiv regions of depth zdiv, are the same code. A box never crosses a region boundary (the
// launcher checks), so q is fixed per box and r runs from dz0 % zdiv.
//
// Float arithmetic: every float32 multiply, add and subtract that NumPy performs as a separate, rounded step is
// written here as an explicit PTX `mul.rn.f32` / `add.rn.f32` / `sub.rn.f32` (helpers below). PTX never fuses
// instructions that carry an explicit rounding modifier into an FMA, and without `.ftz` they keep subnormals,
// so the results equal NumPy's float32 results whatever --fmad / -ftz the module is compiled with (CuPy adds
// -ftz=true to every RawModule; the launcher also passes --fmad=false). No fmaf is used anywhere.

#include <cuda_fp16.h>

namespace place_detail {

constexpr int JOB_COLUMNS = 13;
constexpr int FILL_COLUMNS = 8;

// Per-type facts: integer, half or neither, value range (integers), the YCbCr maximum and mid value.
template <typename T> struct Traits;

template <> struct Traits<unsigned char> {
    static constexpr bool is_int = true, is_half = false;
    static constexpr long long lo = 0, hi = 255;
    static constexpr float maxval = 255.0f, mid = 128.0f;
};
template <> struct Traits<unsigned short> {
    static constexpr bool is_int = true, is_half = false;
    static constexpr long long lo = 0, hi = 65535;
    static constexpr float maxval = 65535.0f, mid = 32768.0f;
};
template <> struct Traits<short> {
    static constexpr bool is_int = true, is_half = false;
    static constexpr long long lo = -32768, hi = 32767;
    static constexpr float maxval = 32767.0f, mid = 16384.0f;
};
template <> struct Traits<float> {
    static constexpr bool is_int = false, is_half = false;
    static constexpr float maxval = 1.0f, mid = 1.0f;
};
template <> struct Traits<__half> {
    static constexpr bool is_int = false, is_half = true;
};

// IEEE float32 operations, rounded to nearest even, never contracted, subnormals kept.
__device__ __forceinline__ float mul_rn(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float add_rn(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float sub_rn(float a, float b) {
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

// float32 -> Out, as cast_like_kernel: floats converted directly (round to nearest even); integers NaN -> 0,
// rounded half away from zero as floor(v + 0.5) / ceil(v - 0.5) in float32, then saturated.
// (floor(v + 0.5f) is what the reference computes; it equals roundf except at v = +-0.49999997f, where the float32
// sum rounds up to 1, so the reference's form is used to stay bit-identical.)
template <typename Out> __device__ __forceinline__ Out from_float(float v) {
    if constexpr (Traits<Out>::is_int) {
        if (isnan(v)) return Out(0);
        const float r = v >= 0.0f ? floorf(add_rn(v, 0.5f)) : ceilf(sub_rn(v, 0.5f));
        if (r <= static_cast<float>(Traits<Out>::lo)) return static_cast<Out>(Traits<Out>::lo);
        if (r >= static_cast<float>(Traits<Out>::hi)) return static_cast<Out>(Traits<Out>::hi);
        return static_cast<Out>(r);
    } else if constexpr (Traits<Out>::is_half) {
        return __float2half_rn(v);
    } else {
        return v;
    }
}

// In -> Out without a transform: integer to integer saturates; everything else goes through float32, which holds
// every value of the integer input types exactly.
template <typename In, typename Out> __device__ __forceinline__ Out convert(In v) {
    if constexpr (Traits<In>::is_int && Traits<Out>::is_int) {
        const long long t = static_cast<long long>(v);
        if (t <= Traits<Out>::lo) return static_cast<Out>(Traits<Out>::lo);
        if (t >= Traits<Out>::hi) return static_cast<Out>(Traits<Out>::hi);
        return static_cast<Out>(t);
    } else {
        return from_float<Out>(static_cast<float>(v));
    }
}

// One converted sample: rounded half to even (rintf, as np.rint), clamped to [0, maxval] (a NaN stays NaN, as
// with np.clip), stored as In.
template <typename In> __device__ __forceinline__ In ycbcr_sample(float v) {
    float r = rintf(v);
    if (r < 0.0f) r = 0.0f;
    if (r > Traits<In>::maxval) r = Traits<In>::maxval;
    return static_cast<In>(r);  // integral and in range for integer In
}

// Full-range BT.601 YCbCr -> RGB in float32, same operations and order as ycbcr_to_rgb_float.
template <typename In> __device__ __forceinline__ void ycbcr_to_rgb(In& s0, In& s1, In& s2) {
    const float y = static_cast<float>(s0);
    const float cb = sub_rn(static_cast<float>(s1), Traits<In>::mid);
    const float cr = sub_rn(static_cast<float>(s2), Traits<In>::mid);
    const float r = add_rn(y, mul_rn(1.402f, cr));
    const float g = sub_rn(sub_rn(y, mul_rn(0.344136f, cb)), mul_rn(0.714136f, cr));
    const float b = add_rn(y, mul_rn(1.772f, cb));
    s0 = ycbcr_sample<In>(r);
    s1 = ycbcr_sample<In>(g);
    s2 = ycbcr_sample<In>(b);
}

template <typename In, typename Out>
__device__ __forceinline__ Out transform(In v, int identity, const float* mul, const float* add, long long ch) {
    if (identity) return convert<In, Out>(v);
    return from_float<Out>(add_rn(mul_rn(static_cast<float>(v), mul[ch]), add[ch]));
}

// Output strides of (q, r, y, x, c) and the region depth.
struct OutLayout {
    long long oq, or_, oy, ox, oc;
    int zdiv;

    // Offset of the box corner (dz0, dy0, dx0, dc0); the box stays inside the region holding dz0.
    __device__ __forceinline__ long long corner(long long dz0, long long dy0, long long dx0, long long dc0) const {
        return (dz0 / zdiv) * oq + (dz0 % zdiv) * or_ + dy0 * oy + dx0 * ox + dc0 * oc;
    }
};

// Pixel p of a box of ny x nx rows (x fastest) as (z, y, x).
struct Pixel {
    long long z, y, x;
    __device__ __forceinline__ Pixel(long long p, long long ny, long long nx)
        : z(p / nx / ny), y((p / nx) % ny), x(p % nx) {}
};

}  // namespace place_detail

// One block row (blockIdx.y) per job; threads stride over the job's nz*ny*nx pixels, x fastest, and each thread
// writes all nc channels of its pixel.
template <typename In, typename Out>
__global__ void place_tiles(const unsigned long long* slot_ptrs, const long long* slot_strides, const int* jobs,
                            int n_jobs, Out* out, long long oq, long long or_, long long oy, long long ox,
                            long long oc, int zdiv, int ycbcr, const float* mul, const float* add, int identity,
                            int job_base) {
    using namespace place_detail;
    const long long job = static_cast<long long>(job_base) + blockIdx.y;
    if (job >= n_jobs) return;
    const int* row = jobs + job * JOB_COLUMNS;
    const int slot = row[0];
    const long long sz0 = row[1], sy0 = row[2], sx0 = row[3], sc0 = row[4];
    const long long dz0 = row[5], dy0 = row[6], dx0 = row[7], dc0 = row[8];
    const long long nz = row[9], ny = row[10], nx = row[11];
    const int nc = row[12];
    const long long pixels = nz * ny * nx;
    if (pixels <= 0 || nc <= 0) return;

    const In* src = reinterpret_cast<const In*>(slot_ptrs[slot]);
    const long long* st = slot_strides + 4LL * slot;
    const long long ssz = st[0], ssy = st[1], ssx = st[2], ssc = st[3];
    const bool convert_colour = ycbcr != 0 && nc == 3;
    const OutLayout lay{oq, or_, oy, ox, oc, zdiv};
    Out* const dst = out + lay.corner(dz0, dy0, dx0, dc0);
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;

    for (long long p = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels; p += step) {
        const Pixel px(p, ny, nx);
        const long long z = px.z, y = px.y, x = px.x;
        const In* sp = src + (sz0 + z) * ssz + (sy0 + y) * ssy + (sx0 + x) * ssx + sc0 * ssc;
        Out* const dp = dst + z * or_ + y * oy + x * ox;
        if (convert_colour) {
            In s0 = sp[0], s1 = sp[ssc], s2 = sp[2 * ssc];
            ycbcr_to_rgb<In>(s0, s1, s2);
            dp[0] = transform<In, Out>(s0, identity, mul, add, dc0);
            dp[oc] = transform<In, Out>(s1, identity, mul, add, dc0 + 1);
            dp[2 * oc] = transform<In, Out>(s2, identity, mul, add, dc0 + 2);
        } else {
            for (int c = 0; c < nc; ++c) {
                dp[c * oc] = transform<In, Out>(sp[c * ssc], identity, mul, add, dc0 + c);
            }
        }
    }
}

// One block row per box; writes values[dc0 + c] (the transformed fill value of that output channel, float32)
// cast to Out with the same rule as place_tiles.
template <typename Out>
__global__ void fill_boxes(const int* boxes, int n_boxes, Out* out, long long oq, long long or_, long long oy,
                           long long ox, long long oc, int zdiv, const float* values, int box_base) {
    using namespace place_detail;
    const long long box = static_cast<long long>(box_base) + blockIdx.y;
    if (box >= n_boxes) return;
    const int* row = boxes + box * FILL_COLUMNS;
    const long long dz0 = row[0], dy0 = row[1], dx0 = row[2], dc0 = row[3];
    const long long nz = row[4], ny = row[5], nx = row[6];
    const int nc = row[7];
    const long long pixels = nz * ny * nx;
    if (pixels <= 0 || nc <= 0) return;
    const OutLayout lay{oq, or_, oy, ox, oc, zdiv};
    Out* const dst = out + lay.corner(dz0, dy0, dx0, dc0);
    const long long step = static_cast<long long>(gridDim.x) * blockDim.x;

    for (long long p = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels; p += step) {
        const Pixel px(p, ny, nx);
        const long long z = px.z, y = px.y, x = px.x;
        Out* const dp = dst + z * or_ + y * oy + x * ox;
        for (int c = 0; c < nc; ++c) dp[c * oc] = from_float<Out>(values[dc0 + c]);
    }
}
