// Spherical resampling kernels of osr_sdk._spherical: parameter structs, kernel declarations and
// the per-pixel math shared by the CPU (double) and CUDA (float) kernels. No Python in here.
//
// Conventions (see sdk/osr_sdk/_spherical.pyi): ERP images are (H, W, C) float32 with pixel (x, y)
// centred at lon = ((x + 0.5) / W) * 2pi - pi, lat = pi/2 - ((y + 0.5) / H) * pi; a view is
// (lon0, lat0, tan_half_x, tan_half_y) in float64; patches are (N, C, h, w) float32.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define OSR_HD __host__ __device__ __forceinline__
#else
#define OSR_HD inline
#endif

namespace osr {

constexpr double kPi = 3.14159265358979323846;

enum Interp { kNearest = 0, kBilinear = 1, kBicubic = 2 };
enum Blend { kUniform = 0, kFeather = 1 };

// ERP (H, W, C) -> patches (N, C, h, w).
struct SampleParams {
  const float* erp;
  int H, W, C;
  const double* views;  // (N, 4), host memory
  int N;
  float* out;
  int h, w;
  int interp;
};

// patches (N, C, h, w) -> accumulator (H, W, C + 1).
struct MergeParams {
  const float* patches;
  int N, C, h, w;
  const double* views;  // (N, 4), host memory
  float* acc;
  int H, W;
  int blend;
  double feather;  // used when blend == kFeather; > 0
};

// accumulator (H, W, C + 1) -> out (H, W, C).
struct FinalizeParams {
  const float* acc;
  float* out;
  int H, W, C;
};

// CPU kernels (sphere_cpu.cpp); threads == 0 means std::thread::hardware_concurrency().
void sample_views_cpu(const SampleParams& p, int threads);
void merge_accumulate_cpu(const MergeParams& p, int threads);
void merge_finalize_cpu(const FinalizeParams& p, int threads);

// CUDA kernels and helpers (sphere_cuda.cu), only linked when built with OSR_WITH_CUDA.
// They run on `device`'s legacy default stream (asynchronously unless stated) and return nullptr
// on success or the CUDA error string.
int cuda_device_count();  // 0 when there is no driver or no GPU
const char* cuda_sample_views(const SampleParams& p, int device);
const char* cuda_merge_accumulate(const MergeParams& p, int device);
const char* cuda_merge_finalize(const FinalizeParams& p, int device);
const char* cuda_count_nonfinite(const float* x, int64_t n, int device, uint64_t* count);  // syncs
const char* cuda_alloc(void** ptr, size_t bytes, int device);
const char* cuda_free(void* ptr, int device);
const char* cuda_zero(void* ptr, size_t bytes, int device);
// cudaMemcpy between pageable host memory and `device`, ordered after the work queued on the legacy
// default stream; `src` (to device) may be reused, `dst` (to host) is filled, once they return.
const char* cuda_copy_to_device(void* dst, const void* src, size_t bytes, int device);
const char* cuda_copy_to_host(void* dst, const void* src, size_t bytes, int device);
const char* cuda_synchronize(int device);  // cudaDeviceSynchronize
const char* cuda_mem_info(int device, size_t* free_bytes, size_t* total_bytes);  // cudaMemGetInfo
// Make `stream` (a cudaStream_t as an integer; 2 = per-thread default stream) wait for the work
// queued so far on the legacy default stream.
const char* cuda_stream_wait_legacy(uintptr_t stream, int device);

// ---------------------------------------------------------------------------------------------
// Shared per-pixel math. T is double on the CPU and float on the GPU.

// a mod n in [0, n); the usual case, at most one period off, needs no division.
OSR_HD int pmod(int a, int n) {
  if (a < 0)
    a += n;
  else if (a >= n)
    a -= n;
  if (a >= 0 && a < n) return a;
  a %= n;
  return a < 0 ? a + n : a;
}

// floor(x) as an int for |x| < 2^31; cheaper than std::floor on baseline x86-64 (no roundsd).
template <typename T>
OSR_HD int ifloor(T x) {
  const int i = static_cast<int>(x);  // truncates toward zero
  return i - (x < static_cast<T>(i));
}

// ERP row read for row index r in [-H, 2H): a row past a pole reflects (r < 0 -> -1 - r,
// r >= H -> 2H - 1 - r) and *flipped says to read it on the opposite meridian (column + W / 2).
OSR_HD int erp_row(int r, int H, bool* flipped) {
  *flipped = r < 0 || r >= H;
  r = r < 0 ? -1 - r : (r >= H ? 2 * H - 1 - r : r);
  return r < 0 ? 0 : (r >= H ? H - 1 : r);  // the clamp only matters for H == 1
}

// Index (row * W + col) of ERP pixel (r, c): columns wrap modulo W, rows as erp_row.
OSR_HD int64_t erp_fetch_index(int r, int c, int H, int W) {
  bool flipped;
  const int row = erp_row(r, H, &flipped);
  return static_cast<int64_t>(row) * W + pmod(flipped ? c + W / 2 : c, W);
}

// Keys cubic convolution weights (a = -0.75) of the taps at offsets -1, 0, 1, 2 for a fraction t
// in [0, 1); exactly interpolating (t = 0 gives 0, 1, 0, 0).
template <typename T>
OSR_HD void keys_weights(T t, T wt[4]) {
  const T a = T(-0.75);
  const T d0 = t + 1, d2 = 1 - t, d3 = 2 - t;
  wt[0] = ((a * d0 - 5 * a) * d0 + 8 * a) * d0 - 4 * a;
  wt[1] = ((a + 2) * t - (a + 3)) * t * t + 1;
  wt[2] = ((a + 2) * d2 - (a + 3)) * d2 * d2 + 1;
  wt[3] = ((a * d3 - 5 * a) * d3 + 8 * a) * d3 - 4 * a;
}

// Separable interpolation over a K x K block of taps whose top-left tap is ERP pixel (r0, c0),
// with row weights wy and column weights wx; writes the C channels to out[c * out_stride].
// The taps of erp_fetch_index, worked out per row and per column rather than per tap.
template <int K, typename T>
OSR_HD void erp_taps(const float* erp, int H, int W, int C, int r0, int c0, const T* wy,
                     const T* wx, float* out, int64_t out_stride) {
  const float* rows[K];
  bool flipped[K];  // a row past a pole: read the opposite meridian
  for (int k = 0; k < K; ++k)
    rows[k] = erp + static_cast<int64_t>(erp_row(r0 + k, H, &flipped[k])) * W * C;
  int64_t cols[K], cols_flipped[K];
  for (int m = 0; m < K; ++m) {
    cols[m] = static_cast<int64_t>(pmod(c0 + m, W)) * C;
    cols_flipped[m] = static_cast<int64_t>(pmod(c0 + m + W / 2, W)) * C;
  }
  for (int c = 0; c < C; ++c) {
    T v = 0;
    for (int k = 0; k < K; ++k) {
      T row = 0;
      for (int m = 0; m < K; ++m)
        row += wx[m] * rows[k][(flipped[k] ? cols_flipped[m] : cols[m]) + c];
      v += wy[k] * row;
    }
    out[c * out_stride] = static_cast<float>(v);
  }
}

// Interpolates the C channels of `erp` at continuous pixel coordinates (col0 + fx, ye) and writes
// them to out[c * out_stride]. col0 lets the GPU keep a large integer column out of fx (float).
template <typename T>
OSR_HD void erp_interp(const float* erp, int H, int W, int C, int interp, int col0, T fx, T ye,
                       float* out, int64_t out_stride) {
  if (interp == kNearest) {  // floor(x + 0.5)
    const int64_t idx = erp_fetch_index(ifloor(ye + T(0.5)), col0 + ifloor(fx + T(0.5)), H, W) * C;
    for (int c = 0; c < C; ++c) out[c * out_stride] = erp[idx + c];
    return;
  }
  const int ix = ifloor(fx), r = ifloor(ye), c = col0 + ix;
  const T tx = fx - ix, ty = ye - r;
  if (interp == kBilinear) {
    const T wx[2] = {1 - tx, tx}, wy[2] = {1 - ty, ty};
    erp_taps<2>(erp, H, W, C, r, c, wy, wx, out, out_stride);
  } else {
    T wx[4], wy[4];
    keys_weights(tx, wx);
    keys_weights(ty, wy);
    erp_taps<4>(erp, H, W, C, r - 1, c - 1, wy, wx, out, out_stride);
  }
}

// atan2 within 5e-16 of std::atan2, several times faster than glibc's correctly rounded one (which
// dominated the CPU sampling profile): reduction to [0, tan(pi/8)] and the Cephes rational
// approximation of atan. Not for NaN or infinite input.
inline double atan2_fast(double y, double x) {
  const double ax = std::fabs(x), ay = std::fabs(y);
  const bool swap = ay > ax;
  double t = swap ? (ay > 0 ? ax / ay : 0.0) : (ax > 0 ? ay / ax : 0.0);  // in [0, 1]
  const bool big = t > 0.41421356237309504880;                           // tan(pi/8)
  if (big) t = (t - 1) / (t + 1);
  const double z = t * t;
  const double p = (((-8.750608600031904122785e-1 * z - 1.615753718733365076637e1) * z -
                     7.500855792314704667340e1) * z - 1.228866684490136173410e2) * z -
                   6.485021904942025371773e1;
  const double q = ((((z + 2.485846490142306297962e1) * z + 1.650270098316988542046e2) * z +
                     4.328810604912902668951e2) * z + 4.853903996359136964868e2) * z +
                   1.945506571482613964425e2;
  double a = t + t * z * p / q + (big ? kPi / 4 : 0.0);
  if (swap) a = kPi / 2 - a;
  if (std::signbit(x)) a = kPi - a;
  return std::copysign(a, y);
}
#ifdef __CUDACC__
__device__ __forceinline__ float atan2_fast(float y, float x) { return atan2f(y, x); }
#endif

// Inverse gnomonic projection at centre latitude phi0 (sin, cos given): the point (x, y) of the
// tangent plane lies at longitude lon0 + *dlon and latitude *lat. Equal to DESIGN §4's
// c = atan(rho), lat = asin(cos c sin phi0 + y sin c cos phi0 / rho),
// dlon = atan2(x sin c, rho cos phi0 cos c - y sin phi0 sin c), with sin c = rho cos c and
// cos c = 1 / sqrt(1 + rho^2) divided out (atan2 is scale-invariant); at rho = 0 it gives
// (phi0, 0) as the formula's limit does. atan2 for the latitude keeps precision near the poles.
template <typename T>
OSR_HD void gnomonic_inverse(T x, T y, T sphi0, T cphi0, T* dlon, T* lat) {
  const T den = cphi0 - y * sphi0;
  *dlon = atan2_fast(x, den);
  *lat = atan2_fast(sphi0 + y * cphi0, sqrt(x * x + den * den));
}

// Forward gnomonic projection from the sines and cosines of the point's latitude phi and of
// dlon = lon - lon0: returns cos c (the point is on the visible side when > 0) and the
// projective numerators, x = *xc / cos c and y = *yc / cos c.
template <typename T>
OSR_HD T gnomonic_forward(T sphi, T cphi, T sdlon, T cdlon, T sphi0, T cphi0, T* xc, T* yc) {
  *xc = cphi * sdlon;
  *yc = cphi0 * sphi - sphi0 * cphi * cdlon;
  return sphi0 * sphi + cphi0 * cphi * cdlon;
}

// Gnomonic coordinate of view pixel index j (or i) across n pixels, in units of tan_half:
// (j + 0.5) / n * 2 - 1 (negate for rows: y points north while i goes down).
template <typename T>
OSR_HD T view_pixel_coord(int j, int n) {
  return static_cast<T>(2 * j + 1 - n) / static_cast<T>(n);
}

// Continuous ERP pixel coordinates of a longitude / latitude (radians).
template <typename T>
OSR_HD T erp_x_of_lon(T lon, int W) {
  return (lon + T(kPi)) * (T(W) / T(2 * kPi)) - T(0.5);
}
template <typename T>
OSR_HD T erp_y_of_lat(T lat, int H) {
  return (T(kPi / 2) - lat) * (T(H) / T(kPi)) - T(0.5);
}

// Feather weight of one axis: smoothstep(clamp((1 - |t|) / feather, 0, 1)).
template <typename T>
OSR_HD T feather_axis(T t, T inv_feather) {
  T a = (1 - fabs(t)) * inv_feather;
  a = a < 0 ? T(0) : (a > 1 ? T(1) : a);
  return a * a * (3 - 2 * a);
}

// Bilinear tap of an (h, w) patch plane at continuous (pi, pj), indices clamped into the plane;
// built once per pixel, then applied to each channel plane.
template <typename T>
struct PatchTap {
  int64_t o00, o01, o10, o11;
  T w00, w01, w10, w11;

  OSR_HD PatchTap(int h, int w, T pi, T pj) {
    const int i = ifloor(pi), j = ifloor(pj);
    const T ti = pi - i, tj = pj - j;
    const int64_t i0 = clampi(i, h), i1 = clampi(i + 1, h);
    const int64_t j0 = clampi(j, w), j1 = clampi(j + 1, w);
    o00 = i0 * w + j0, o01 = i0 * w + j1, o10 = i1 * w + j0, o11 = i1 * w + j1;
    w00 = (1 - ti) * (1 - tj), w01 = (1 - ti) * tj, w10 = ti * (1 - tj), w11 = ti * tj;
  }
  OSR_HD T operator()(const float* plane) const {
    return w00 * plane[o00] + w01 * plane[o01] + w10 * plane[o10] + w11 * plane[o11];
  }
  OSR_HD static int clampi(int a, int n) { return a < 0 ? 0 : (a > n - 1 ? n - 1 : a); }
};

}  // namespace osr
