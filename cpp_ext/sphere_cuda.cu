// CUDA kernels of osr_sdk._spherical (CUDA runtime API only, linked statically). Everything runs
// on the device's legacy default stream. Geometry in float (the CPU kernels use double).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "sphere.h"

namespace osr {
namespace {

const cudaStream_t kStream = cudaStreamLegacy;

const char* status(cudaError_t e) { return e == cudaSuccess ? nullptr : cudaGetErrorString(e); }

// Makes `device` current for the scope, then restores the caller's device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    err_ = cudaGetDevice(&prev_);
    if (err_ == cudaSuccess && prev_ != device) {
      err_ = cudaSetDevice(device);
      changed_ = err_ == cudaSuccess;
    }
  }
  ~DeviceScope() {
    if (changed_) cudaSetDevice(prev_);
  }
  const char* error() const { return status(err_); }

 private:
  int prev_ = 0;
  bool changed_ = false;
  cudaError_t err_;
};

// ------------------------------------------------------------------------------------ sample

// Views travel as a kernel argument, up to kSampleChunk per launch (3 KiB of the 4 KiB limit).
struct SampleView {
  float sphi0, cphi0, tx, ty;
  int col_int;     // the view centre's ERP x coordinate = col_int + col_frac (kept apart so
  float col_frac;  // that fx stays small: float precision is relative)
};
constexpr int kSampleChunk = 128;
struct SampleViews {
  SampleView v[kSampleChunk];
};

// One thread per output pixel (j, i) of view n0 + blockIdx.z.
__global__ void sample_kernel(SampleParams p, SampleViews views, int n0) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y * blockDim.y + threadIdx.y;
  if (j >= p.w || i >= p.h) return;
  const SampleView& V = views.v[blockIdx.z];
  const float x = view_pixel_coord<float>(j, p.w) * V.tx;
  const float y = -view_pixel_coord<float>(i, p.h) * V.ty;
  float dlon, lat;
  gnomonic_inverse(x, y, V.sphi0, V.cphi0, &dlon, &lat);
  const float fx = V.col_frac + dlon * (static_cast<float>(p.W) / static_cast<float>(2 * kPi));
  const int64_t plane = static_cast<int64_t>(p.h) * p.w;
  float* out = p.out + static_cast<int64_t>(n0 + blockIdx.z) * p.C * plane +
               static_cast<int64_t>(i) * p.w + j;
  erp_interp(p.erp, p.H, p.W, p.C, p.interp, V.col_int, fx, erp_y_of_lat(lat, p.H), out, plane);
}

// ------------------------------------------------------------------------------------- merge

struct MergeView {
  float slon0, clon0, sphi0, cphi0, tx, ty, inv_tx, inv_ty;
};
constexpr int kMergeChunk = 96;  // 3 KiB of kernel arguments
struct MergeViews {
  MergeView v[kMergeChunk];
};

// One thread per ERP pixel, looping over views n0 .. n0 + count - 1. Float geometry puts the
// patch coordinates within ~1e-4 px of the exact ones (float's resolution at 512 px is 3e-5).
__global__ void merge_kernel(MergeParams p, MergeViews views, int n0, int count,
                             float inv_feather) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= p.W || y >= p.H) return;
  float slon, clon, sphi, cphi;  // lon / pi = (2x + 1) / W - 1, lat / pi = 1/2 - (y + 1/2) / H
  sincospif((2 * x + 1 - p.W) / static_cast<float>(p.W), &slon, &clon);
  sincospif((0.5f * p.H - 0.5f - y) / p.H, &sphi, &cphi);
  const int C = p.C;
  const int64_t plane = static_cast<int64_t>(p.h) * p.w;
  float* acc = p.acc + (static_cast<int64_t>(y) * p.W + x) * (C + 1);
  for (int k = 0; k < count; ++k) {
    const MergeView& V = views.v[k];
    float xc, yc;
    const float sdlon = slon * V.clon0 - clon * V.slon0, cdlon = clon * V.clon0 + slon * V.slon0;
    const float cosc = gnomonic_forward(sphi, cphi, sdlon, cdlon, V.sphi0, V.cphi0, &xc, &yc);
    // Cheap rejection first (most views miss most pixels), divisions only for the others.
    if (!(cosc > 0 && fabsf(xc) < V.tx * cosc && fabsf(yc) < V.ty * cosc)) continue;
    const float u = xc / cosc * V.inv_tx, v = yc / cosc * V.inv_ty;
    if (!(fabsf(u) < 1 && fabsf(v) < 1)) continue;
    const float wgt =
        p.blend == kFeather ? feather_axis(u, inv_feather) * feather_axis(v, inv_feather) : 1.0f;
    const PatchTap<float> tap(p.h, p.w, (1 - v) * 0.5f * p.h - 0.5f, (u + 1) * 0.5f * p.w - 0.5f);
    const float* patch = p.patches + static_cast<int64_t>(n0 + k) * C * plane;
    for (int c = 0; c < C; ++c) acc[c] += wgt * tap(patch + c * plane);
    acc[C] += wgt;
  }
}

__global__ void finalize_kernel(FinalizeParams p) {
  const int64_t n = static_cast<int64_t>(p.H) * p.W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* a = p.acc + i * (p.C + 1);
    float* o = p.out + i * p.C;
    const float wsum = a[p.C];
    for (int c = 0; c < p.C; ++c) o[c] = wsum != 0 ? a[c] / wsum : 0.0f;
  }
}

// ---------------------------------------------------------------------------- count_nonfinite

__device__ unsigned long long g_nonfinite;  // one per device; guarded by g_count_mutex
std::mutex g_count_mutex;

__global__ void count_nonfinite_kernel(const float* x, int64_t n) {
  unsigned long long count = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    count += !isfinite(x[i]);
  for (int offset = 16; offset > 0; offset >>= 1)
    count += __shfl_down_sync(0xffffffffu, count, offset);
  if ((threadIdx.x & 31) == 0 && count) atomicAdd(&g_nonfinite, count);
}

unsigned grid_1d(int64_t n, int block) {
  return static_cast<unsigned>(std::min<int64_t>((n + block - 1) / block, 4096));
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it: no driver or no device simply means none
    return 0;
  }
  return n;
}

const char* cuda_sample_views(const SampleParams& p, int device) {
  if (p.N == 0) return nullptr;
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  dim3 block(32, 8), grid((p.w + 31) / 32, (p.h + 7) / 8);
  for (int n0 = 0; n0 < p.N; n0 += kSampleChunk) {
    const int count = std::min(kSampleChunk, p.N - n0);
    SampleViews views{};
    for (int k = 0; k < count; ++k) {
      const double* v = p.views + 4 * (n0 + k);
      const double xc = erp_x_of_lon(std::remainder(v[0], 2 * kPi), p.W);
      const double col = std::floor(xc);
      views.v[k] = {static_cast<float>(std::sin(v[1])), static_cast<float>(std::cos(v[1])),
                    static_cast<float>(v[2]), static_cast<float>(v[3]), static_cast<int>(col),
                    static_cast<float>(xc - col)};
    }
    grid.z = count;
    sample_kernel<<<grid, block, 0, kStream>>>(p, views, n0);
    if (const char* err = status(cudaGetLastError())) return err;
  }
  return nullptr;
}

const char* cuda_merge_accumulate(const MergeParams& p, int device) {
  if (p.N == 0) return nullptr;
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  const dim3 block(32, 8), grid((p.W + 31) / 32, (p.H + 7) / 8);
  const float inv_feather = p.blend == kFeather ? static_cast<float>(1.0 / p.feather) : 0.0f;
  for (int n0 = 0; n0 < p.N; n0 += kMergeChunk) {
    const int count = std::min(kMergeChunk, p.N - n0);
    MergeViews views{};
    for (int k = 0; k < count; ++k) {
      const double* v = p.views + 4 * (n0 + k);
      views.v[k] = {static_cast<float>(std::sin(v[0])), static_cast<float>(std::cos(v[0])),
                    static_cast<float>(std::sin(v[1])), static_cast<float>(std::cos(v[1])),
                    static_cast<float>(v[2]),           static_cast<float>(v[3]),
                    static_cast<float>(1 / v[2]),       static_cast<float>(1 / v[3])};
    }
    merge_kernel<<<grid, block, 0, kStream>>>(p, views, n0, count, inv_feather);
    if (const char* err = status(cudaGetLastError())) return err;
  }
  return nullptr;
}

const char* cuda_merge_finalize(const FinalizeParams& p, int device) {
  const int64_t n = static_cast<int64_t>(p.H) * p.W;
  if (n == 0) return nullptr;
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  finalize_kernel<<<grid_1d(n, 256), 256, 0, kStream>>>(p);
  return status(cudaGetLastError());
}

const char* cuda_count_nonfinite(const float* x, int64_t n, int device, uint64_t* count) {
  *count = 0;
  if (n == 0) return nullptr;
  const std::lock_guard<std::mutex> lock(g_count_mutex);
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  void* counter = nullptr;
  unsigned long long host = 0;
  cudaError_t e = cudaGetSymbolAddress(&counter, g_nonfinite);
  if (e == cudaSuccess) e = cudaMemsetAsync(counter, 0, sizeof(host), kStream);
  if (e == cudaSuccess) {
    count_nonfinite_kernel<<<grid_1d(n, 256), 256, 0, kStream>>>(x, n);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(&host, counter, sizeof(host), cudaMemcpyDeviceToHost, kStream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(kStream);
  *count = host;
  return status(e);
}

const char* cuda_alloc(void** ptr, size_t bytes, int device) {
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaMalloc(ptr, bytes));
}

const char* cuda_free(void* ptr, int device) {
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaFree(ptr));
}

const char* cuda_zero(void* ptr, size_t bytes, int device) {
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaMemsetAsync(ptr, 0, bytes, kStream));
}

const char* cuda_copy_to_device(void* dst, const void* src, size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

const char* cuda_copy_to_host(void* dst, const void* src, size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

const char* cuda_synchronize(int device) {
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaDeviceSynchronize());
}

const char* cuda_mem_info(int device, size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  return status(cudaMemGetInfo(free_bytes, total_bytes));
}

const char* cuda_stream_wait_legacy(uintptr_t stream, int device) {
  const DeviceScope scope(device);
  if (scope.error()) return scope.error();
  cudaEvent_t event;
  cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
  if (e != cudaSuccess) return status(e);
  e = cudaEventRecord(event, kStream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), event, 0);
  cudaEventDestroy(event);  // released once the wait has happened
  return status(e);
}

}  // namespace osr
