// pybind11 bindings of osr_sdk._spherical (spec: sdk/osr_sdk/_spherical.pyi). Each function
// validates its arguments (ValueError / TypeError naming the function and the bad value), fills
// a parameter struct of sphere.h and launches the CPU or CUDA kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "dlpack.h"
#include "sphere.h"

namespace py = pybind11;

namespace {

#ifndef OSR_WITH_CUDA
constexpr const char* kNoCuda =
    "osr_sdk._spherical was built without CUDA kernels (nvcc was not found or OSR_CUDA=OFF); "
    "rebuild with the CUDA toolkit installed to use the *_cuda functions";
#endif

template <typename... A>
std::string cat(const A&... a) {
  std::ostringstream s;
  (s << ... << a);
  return s.str();
}

[[noreturn]] void value_error(const char* fn, const std::string& msg) {
  throw py::value_error(cat(fn, ": ", msg));
}

[[noreturn]] void type_error(const char* fn, const std::string& msg) {
  throw py::type_error(cat(fn, ": ", msg));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::string type_name(const py::handle& obj) { return Py_TYPE(obj.ptr())->tp_name; }

// A float32, C-contiguous array in host (numpy) or CUDA (DLPack) memory.
struct F32 {
  float* data = nullptr;
  std::vector<int64_t> shape;
  int device = -1;  // CUDA device id, -1 for host memory
  py::object keep;  // the array, or the DLPack capsule (its destructor releases the producer)

  int64_t size() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  int dim(int d) const { return static_cast<int>(shape[d]); }
};

// ndim < 0: any rank.
void check_ndim(const char* fn, const char* name, const F32& a, int ndim, const char* layout) {
  if (ndim >= 0 && a.shape.size() != static_cast<size_t>(ndim))
    value_error(fn,
                cat(name, " must be ", ndim, "-D ", layout, ", got shape ", shape_str(a.shape)));
  for (int64_t s : a.shape)
    if (s > INT_MAX) value_error(fn, cat(name, " is too large: shape ", shape_str(a.shape)));
}

F32 host_f32(const char* fn, const char* name, const py::object& obj, int ndim,
             const char* layout, bool writable) {
  if (!py::isinstance<py::array>(obj))
    type_error(fn, cat(name, " must be a numpy.ndarray of float32, got ", type_name(obj)));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!py::isinstance<py::array_t<float>>(obj))
    type_error(fn, cat(name, " must have dtype float32, got ", std::string(py::str(a.dtype()))));
  F32 r;
  r.shape.assign(a.shape(), a.shape() + a.ndim());
  check_ndim(fn, name, r, ndim, layout);
  if (!(a.flags() & py::array::c_style))
    value_error(fn, cat(name, " must be C-contiguous (use numpy.ascontiguousarray)"));
  if (writable && !a.writeable()) value_error(fn, cat(name, " must be writeable"));
  r.data = static_cast<float*>(const_cast<void*>(a.data()));
  r.keep = a;
  return r;
}

// views: float64 (N, 4) rows (lon0, lat0, tan_half_x, tan_half_y), returned C-contiguous.
py::array_t<double> host_views(const char* fn, const py::object& obj) {
  if (!py::isinstance<py::array>(obj))
    type_error(fn, cat("views must be a numpy.ndarray of float64, got ", type_name(obj)));
  if (!py::isinstance<py::array_t<double>>(obj))
    type_error(fn, cat("views must have dtype float64, got ",
                       std::string(py::str(py::reinterpret_borrow<py::array>(obj).dtype()))));
  auto v = py::array_t<double, py::array::c_style>::ensure(obj);
  std::vector<int64_t> shape(v.shape(), v.shape() + v.ndim());
  if (v.ndim() != 2 || v.shape(1) != 4 || v.shape(0) > INT_MAX)
    value_error(fn, cat("views must have shape (N, 4) (lon0, lat0, tan_half_x, tan_half_y), got ",
                        shape_str(shape)));
  const double* d = v.data();
  for (int64_t n = 0; n < v.shape(0); ++n) {
    const double* r = d + 4 * n;
    const std::string row =
        cat("views[", n, "] = (", r[0], ", ", r[1], ", ", r[2], ", ", r[3], ")");
    if (!(std::isfinite(r[0]) && std::isfinite(r[1]) && std::isfinite(r[2]) && std::isfinite(r[3])))
      value_error(fn, row + " is not finite");
    if (!(std::fabs(r[1]) <= osr::kPi / 2))
      value_error(fn, row + ": lat0 must lie in [-pi/2, pi/2] (radians)");
    if (!(r[2] > 0 && r[3] > 0)) value_error(fn, row + ": tan_half_x and tan_half_y must be > 0");
  }
  return v;
}

void check_threads(const char* fn, int threads) {
  if (threads < 0)
    value_error(fn, cat("threads must be >= 0 (0 = all hardware threads), got ", threads));
}

// Outputs may not share memory with inputs: kernels read the one while writing the other.
void check_disjoint(const char* fn, const F32& a, const char* an, const F32& b, const char* bn) {
  const char *a0 = reinterpret_cast<const char*>(a.data), *a1 = a0 + 4 * a.size();
  const char *b0 = reinterpret_cast<const char*>(b.data), *b1 = b0 + 4 * b.size();
  if (a0 < b1 && b0 < a1) value_error(fn, cat(an, " and ", bn, " must not share memory"));
}

osr::SampleParams sample_params(const char* fn, const F32& erp, const py::array_t<double>& views,
                                const F32& out, int interp) {
  if (interp < osr::kNearest || interp > osr::kBicubic)
    value_error(fn, cat("interp must be 0 (nearest), 1 (bilinear) or 2 (bicubic), got ", interp));
  const int N = static_cast<int>(views.shape(0));
  if (erp.size() == 0)
    value_error(fn, cat("erp must not be empty, got shape ", shape_str(erp.shape)));
  if (out.shape[0] != N || out.shape[1] != erp.shape[2] || out.shape[2] < 1 || out.shape[3] < 1)
    value_error(fn, cat("out must have shape (N, C, h, w) with N = ", N, " (views) and C = ",
                        erp.shape[2], " (erp channels), h, w >= 1, got ", shape_str(out.shape)));
  check_disjoint(fn, erp, "erp", out, "out");
  return {erp.data, erp.dim(0), erp.dim(1), erp.dim(2), views.data(), N,
          out.data, out.dim(2), out.dim(3), interp};
}

osr::MergeParams merge_params(const char* fn, const F32& patches, const py::array_t<double>& views,
                              const F32& acc, int blend, double feather) {
  if (blend != osr::kUniform && blend != osr::kFeather)
    value_error(fn, cat("blend must be 0 (uniform) or 1 (feather), got ", blend));
  if (blend == osr::kFeather && !(std::isfinite(feather) && feather > 0))
    value_error(fn, cat("feather must be a finite number > 0 with blend=1, got ", feather));
  const int N = static_cast<int>(views.shape(0));
  if (patches.shape[0] != N || patches.shape[1] < 1 || patches.shape[2] < 1 || patches.shape[3] < 1)
    value_error(fn, cat("patches must have shape (N, C, h, w) with N = ", N,
                        " (views) and C, h, w >= 1, got ", shape_str(patches.shape)));
  if (acc.shape[0] < 1 || acc.shape[1] < 1 || acc.shape[2] != patches.shape[1] + 1)
    value_error(fn, cat("acc must have shape (H, W, C + 1) with C = ", patches.shape[1],
                        " (patch channels) and H, W >= 1, got ", shape_str(acc.shape)));
  check_disjoint(fn, patches, "patches", acc, "acc");
  return {patches.data, N, patches.dim(1), patches.dim(2), patches.dim(3), views.data(),
          acc.data, acc.dim(0), acc.dim(1), blend, feather};
}

osr::FinalizeParams finalize_params(const char* fn, const F32& acc, const F32& out) {
  if (acc.shape[2] < 2)
    value_error(fn,
                cat("acc must have shape (H, W, C + 1) with C >= 1, got ", shape_str(acc.shape)));
  if (out.shape[0] != acc.shape[0] || out.shape[1] != acc.shape[1] ||
      out.shape[2] != acc.shape[2] - 1)
    value_error(fn, cat("out must have shape (H, W, C) = ",
                        shape_str({acc.shape[0], acc.shape[1], acc.shape[2] - 1}),
                        " to match acc ", shape_str(acc.shape), ", got ", shape_str(out.shape)));
  check_disjoint(fn, acc, "acc", out, "out");
  return {acc.data, out.data, acc.dim(0), acc.dim(1), out.dim(2)};
}

// ----------------------------------------------------------------------------------- CPU

void sample_views_cpu(const py::object& erp_o, const py::object& views_o, const py::object& out_o,
                      int interp, int threads) {
  const char* fn = "sample_views_cpu";
  const F32 erp = host_f32(fn, "erp", erp_o, 3, "(H, W, C)", false);
  const auto views = host_views(fn, views_o);
  const F32 out = host_f32(fn, "out", out_o, 4, "(N, C, h, w)", true);
  check_threads(fn, threads);
  const osr::SampleParams p = sample_params(fn, erp, views, out, interp);
  py::gil_scoped_release nogil;
  osr::sample_views_cpu(p, threads);
}

void merge_accumulate_cpu(const py::object& patches_o, const py::object& views_o,
                          const py::object& acc_o, int blend, double feather, int threads) {
  const char* fn = "merge_accumulate_cpu";
  const F32 patches = host_f32(fn, "patches", patches_o, 4, "(N, C, h, w)", false);
  const auto views = host_views(fn, views_o);
  const F32 acc = host_f32(fn, "acc", acc_o, 3, "(H, W, C + 1)", true);
  check_threads(fn, threads);
  const osr::MergeParams p = merge_params(fn, patches, views, acc, blend, feather);
  py::gil_scoped_release nogil;
  osr::merge_accumulate_cpu(p, threads);
}

void merge_finalize_cpu(const py::object& acc_o, const py::object& out_o, int threads) {
  const char* fn = "merge_finalize_cpu";
  const F32 acc = host_f32(fn, "acc", acc_o, 3, "(H, W, C + 1)", false);
  const F32 out = host_f32(fn, "out", out_o, 3, "(H, W, C)", true);
  check_threads(fn, threads);
  const osr::FinalizeParams p = finalize_params(fn, acc, out);
  py::gil_scoped_release nogil;
  osr::merge_finalize_cpu(p, threads);
}

// ----------------------------------------------------------------------------------- CUDA

#ifdef OSR_WITH_CUDA
F32 cuda_f32(const char* fn, const char* name, const py::object& obj, int ndim,
             const char* layout) {
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
    type_error(fn, cat(name, " must be a CUDA array implementing __dlpack__ (a torch.Tensor, a "
                             "DeviceArray, ...), got ", type_name(obj)));
  const auto dev = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
  if (dev.first != kDLCUDA)
    type_error(fn, cat(name, " must be on a CUDA device (DLPack device type ", int(kDLCUDA),
                       "), got device type ", dev.first,
                       dev.first == kDLCPU ? " (CPU): use the *_cpu function" : ""));
  // stream=1: the producer orders its pending work before the legacy default stream, ours.
  py::object cap = obj.attr("__dlpack__")(py::arg("stream") = 1);
  if (!PyCapsule_IsValid(cap.ptr(), kDLTensorCapsuleName))
    type_error(fn, cat(name, ".__dlpack__() did not return a 'dltensor' capsule"));
  const DLTensor& t =
      static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), kDLTensorCapsuleName))
          ->dl_tensor;
  if (t.device.device_type != kDLCUDA || t.device.device_id != dev.second)
    type_error(fn, cat(name, ".__dlpack__() gave a tensor on DLPack device (", t.device.device_type,
                       ", ", t.device.device_id, "), not the (", dev.first, ", ", dev.second,
                       ") that __dlpack_device__() announced"));
  if (t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1)
    type_error(fn, cat(name, " must have dtype float32, got DLPack dtype (code ", int(t.dtype.code),
                       ", bits ", int(t.dtype.bits), ", lanes ", t.dtype.lanes, ")"));
  F32 r;
  r.shape.assign(t.shape, t.shape + t.ndim);
  check_ndim(fn, name, r, ndim, layout);
  if (t.strides) {
    int64_t expected = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (t.shape[d] != 1 && t.strides[d] != expected)
        value_error(fn, cat(name, " must be C-contiguous (call .contiguous()), got shape ",
                            shape_str(r.shape), " with strides ",
                            shape_str(std::vector<int64_t>(t.strides, t.strides + t.ndim))));
      expected *= t.shape[d];
    }
  }
  r.data = reinterpret_cast<float*>(static_cast<char*>(t.data) + t.byte_offset);
  r.device = t.device.device_id;
  r.keep = cap;
  return r;
}

void check_same_device(const char* fn, const F32& a, const char* an, const F32& b, const char* bn) {
  if (a.device != b.device)
    value_error(fn, cat(an, " is on CUDA device ", a.device, " but ", bn, " on device ", b.device));
}

void check_cuda(const char* fn, const char* err) {
  if (err) throw std::runtime_error(cat(fn, ": CUDA error: ", err));
}

// RuntimeError without any visible device, ValueError for a device id out of range.
void check_device(const char* fn, int device) {
  const int count = osr::cuda_device_count();
  if (count == 0)
    throw std::runtime_error(cat(fn, ": no CUDA device is visible (no GPU or driver)"));
  if (device < 0 || device >= count)
    value_error(fn, cat("device must be in [0, ", count, "), got ", device));
}

void sample_views_cuda(const py::object& erp_o, const py::object& views_o, const py::object& out_o,
                       int interp) {
  const char* fn = "sample_views_cuda";
  const F32 erp = cuda_f32(fn, "erp", erp_o, 3, "(H, W, C)");
  const auto views = host_views(fn, views_o);
  const F32 out = cuda_f32(fn, "out", out_o, 4, "(N, C, h, w)");
  check_same_device(fn, erp, "erp", out, "out");
  check_cuda(fn, osr::cuda_sample_views(sample_params(fn, erp, views, out, interp), erp.device));
}

void merge_accumulate_cuda(const py::object& patches_o, const py::object& views_o,
                           const py::object& acc_o, int blend, double feather) {
  const char* fn = "merge_accumulate_cuda";
  const F32 patches = cuda_f32(fn, "patches", patches_o, 4, "(N, C, h, w)");
  const auto views = host_views(fn, views_o);
  const F32 acc = cuda_f32(fn, "acc", acc_o, 3, "(H, W, C + 1)");
  check_same_device(fn, patches, "patches", acc, "acc");
  check_cuda(fn, osr::cuda_merge_accumulate(merge_params(fn, patches, views, acc, blend, feather),
                                            acc.device));
}

void merge_finalize_cuda(const py::object& acc_o, const py::object& out_o) {
  const char* fn = "merge_finalize_cuda";
  const F32 acc = cuda_f32(fn, "acc", acc_o, 3, "(H, W, C + 1)");
  const F32 out = cuda_f32(fn, "out", out_o, 3, "(H, W, C)");
  check_same_device(fn, acc, "acc", out, "out");
  check_cuda(fn, osr::cuda_merge_finalize(finalize_params(fn, acc, out), acc.device));
}

uint64_t count_nonfinite_cuda(const py::object& x_o) {
  const char* fn = "count_nonfinite_cuda";
  const F32 x = cuda_f32(fn, "x", x_o, -1, "");
  uint64_t count = 0;
  const char* err;
  {
    py::gil_scoped_release nogil;  // it waits for the stream
    err = osr::cuda_count_nonfinite(x.data, x.size(), x.device, &count);
  }
  check_cuda(fn, err);
  return count;
}
#else
[[noreturn]] void no_cuda(const char* fn) { throw std::runtime_error(cat(fn, ": ", kNoCuda)); }
#endif

// ----------------------------------------------------------------------------------- DeviceArray

struct DeviceArray {
  void* ptr = nullptr;
  std::vector<int64_t> shape;
  int device = 0;
  size_t bytes = 0;

  DeviceArray(std::vector<int64_t> shape_, int device_)
      : shape(std::move(shape_)), device(device_) {
    const char* fn = "DeviceArray";
#ifdef OSR_WITH_CUDA
    int64_t n = 1;
    for (int64_t s : shape) {
      if (s < 0) value_error(fn, cat("shape must have dims >= 0, got ", shape_str(shape)));
      if (s > 0 && n > (INT64_MAX / 4) / s)
        value_error(fn, cat("shape is too large: ", shape_str(shape)));
      n *= s;
    }
    check_device(fn, device);
    bytes = static_cast<size_t>(n) * sizeof(float);
    if (bytes) check_cuda(fn, osr::cuda_alloc(&ptr, bytes, device));
#else
    no_cuda(fn);
#endif
  }
  ~DeviceArray() {
#ifdef OSR_WITH_CUDA
    if (ptr) osr::cuda_free(ptr, device);
#endif
  }
  void zero() {
#ifdef OSR_WITH_CUDA
    if (bytes) check_cuda("DeviceArray.zero_", osr::cuda_zero(ptr, bytes, device));
#endif
  }
  // array: float32, C-contiguous, of exactly this shape; synchronous cudaMemcpy to the device.
  void copy_from_host(const py::object& obj) {
    const char* fn = "DeviceArray.copy_from_host";
    if (!py::isinstance<py::array>(obj))
      type_error(fn, cat("array must be a numpy.ndarray of float32, got ", type_name(obj)));
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!py::isinstance<py::array_t<float>>(obj))
      type_error(fn, cat("array must have dtype float32, got ", std::string(py::str(a.dtype()))));
    const std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
    if (got != shape)
      value_error(fn, cat("array must have the DeviceArray's shape ", shape_str(shape), ", got ",
                          shape_str(got)));
    if (!(a.flags() & py::array::c_style))
      value_error(fn, "array must be C-contiguous (use numpy.ascontiguousarray)");
#ifdef OSR_WITH_CUDA
    const char* err;
    {
      py::gil_scoped_release nogil;  // `a` keeps the host buffer alive
      err = osr::cuda_copy_to_device(ptr, a.data(), bytes, device);
    }
    check_cuda(fn, err);
#else
    no_cuda(fn);
#endif
  }
  // A new float32 numpy array of this shape (cudaMemcpy: waits for the queued work).
  py::array_t<float> to_host() const {
    const char* fn = "DeviceArray.to_host";
    py::array_t<float> out(shape);
#ifdef OSR_WITH_CUDA
    const char* err;
    {
      py::gil_scoped_release nogil;
      err = osr::cuda_copy_to_host(out.mutable_data(), ptr, bytes, device);
    }
    check_cuda(fn, err);
#else
    no_cuda(fn);
#endif
    return out;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

// ----------------------------------------------------------------------------------- device

void synchronize(int device) {
  const char* fn = "synchronize";
#ifdef OSR_WITH_CUDA
  check_device(fn, device);
  const char* err;
  {
    py::gil_scoped_release nogil;
    err = osr::cuda_synchronize(device);
  }
  check_cuda(fn, err);
#else
  (void)device;
  no_cuda(fn);
#endif
}

std::pair<size_t, size_t> cuda_mem_info(int device) {
  const char* fn = "cuda_mem_info";
  size_t free_bytes = 0, total_bytes = 0;
#ifdef OSR_WITH_CUDA
  check_device(fn, device);
  check_cuda(fn, osr::cuda_mem_info(device, &free_bytes, &total_bytes));
#else
  (void)device;
  no_cuda(fn);
#endif
  return {free_bytes, total_bytes};
}

// What a DeviceArray's DLPack capsule owns: the tensor description and a reference to the array.
struct ExportCtx {
  DLManagedTensor managed;
  std::vector<int64_t> shape, strides;
  PyObject* owner;
};

void export_deleter(DLManagedTensor* self) {
  auto* ctx = static_cast<ExportCtx*>(self->manager_ctx);
  const PyGILState_STATE gil = PyGILState_Ensure();  // consumers may free from any thread
  Py_DECREF(ctx->owner);
  delete ctx;
  PyGILState_Release(gil);
}

void capsule_destructor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, kDLTensorCapsuleName)) return;  // consumed: the consumer frees
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed =
      static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kDLTensorCapsuleName));
  managed->deleter(managed);
  PyErr_Restore(type, value, traceback);
}

py::object device_array_dlpack(const py::object& self, const py::object& stream,
                               const py::kwargs& kwargs) {
  const char* fn = "DeviceArray.__dlpack__";
  auto& a = self.cast<DeviceArray&>();
  for (auto item : kwargs) {
    const std::string key = py::str(item.first);
    if (key == "dl_device") {
      if (!item.second.is_none() &&
          item.second.cast<std::pair<int, int>>() != std::make_pair(int(kDLCUDA), a.device))
        throw py::buffer_error(cat(fn, ": cannot export to another device"));
    } else if (key == "copy") {
      if (!item.second.is_none() && item.second.cast<bool>())
        throw py::buffer_error(cat(fn, ": copy=True is not supported"));
    } else if (key != "max_version") {  // we always return a legacy (unversioned) capsule
      type_error(fn, cat("unexpected keyword argument '", key, "'"));
    }
  }
  // Our writes go to the legacy default stream; a consumer on another stream waits for them.
  // stream None / 1 / 0: legacy default stream, -1: no synchronisation wanted.
  if (!stream.is_none()) {
    const auto s = stream.cast<int64_t>();
    if (s < -1) value_error(fn, cat("invalid stream ", s));
#ifdef OSR_WITH_CUDA
    if (s > 1) check_cuda(fn, osr::cuda_stream_wait_legacy(static_cast<uintptr_t>(s), a.device));
#endif
  }
  auto* ctx = new ExportCtx;
  ctx->shape = a.shape;
  ctx->strides.resize(a.shape.size());
  int64_t stride = 1;
  for (size_t d = a.shape.size(); d-- > 0;) {
    ctx->strides[d] = stride;
    stride *= a.shape[d];
  }
  Py_INCREF(self.ptr());
  ctx->owner = self.ptr();
  DLTensor& t = ctx->managed.dl_tensor;
  t.data = a.ptr;
  t.device = {kDLCUDA, a.device};
  t.ndim = static_cast<int32_t>(a.shape.size());
  t.dtype = {kDLFloat, 32, 1};
  t.shape = ctx->shape.data();
  t.strides = ctx->strides.data();
  t.byte_offset = 0;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = export_deleter;
  PyObject* capsule = PyCapsule_New(&ctx->managed, kDLTensorCapsuleName, capsule_destructor);
  if (!capsule) {
    export_deleter(&ctx->managed);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(capsule);
}

}  // namespace

PYBIND11_MODULE(_spherical, m) {
  m.doc() = "Private compiled kernels of osr_sdk.sphere (see _spherical.pyi).";

  m.def("has_cuda", [] {
#ifdef OSR_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the module was built with the CUDA kernels.");
  m.def("cuda_device_count", [] {
#ifdef OSR_WITH_CUDA
    return osr::cuda_device_count();
#else
    return 0;
#endif
  }, "Number of CUDA devices visible (0 without a driver or GPU, or without CUDA kernels).");

  m.def("synchronize", &synchronize, py::arg("device"),
        "Wait for all work on a CUDA device (cudaDeviceSynchronize).");
  m.def("cuda_mem_info", &cuda_mem_info, py::arg("device"),
        "(free, total) bytes of a CUDA device's memory (cudaMemGetInfo).");

  m.def("sample_views_cpu", &sample_views_cpu, py::arg("erp"), py::arg("views"), py::arg("out"),
        py::arg("interp"), py::arg("threads") = 0,
        "Fill out (N, C, h, w) with the views sampled from erp (H, W, C).");
  m.def("merge_accumulate_cpu", &merge_accumulate_cpu, py::arg("patches"), py::arg("views"),
        py::arg("acc"), py::arg("blend"), py::arg("feather"), py::arg("threads") = 0,
        "Add the weighted patches (N, C, h, w) into the accumulator acc (H, W, C + 1).");
  m.def("merge_finalize_cpu", &merge_finalize_cpu, py::arg("acc"), py::arg("out"),
        py::arg("threads") = 0,
        "out (H, W, C) = acc[..., :C] / acc[..., C]; 0 where the weight sum is 0.");

  py::class_<DeviceArray>(m, "DeviceArray",
                          "A float32, C-contiguous array in CUDA device memory (cudaMalloc), "
                          "exported by DLPack.")
      .def(py::init<std::vector<int64_t>, int>(), py::arg("shape"), py::arg("device") = 0)
      .def_property_readonly("shape",
                             [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
      .def_property_readonly("device", [](const DeviceArray& a) { return a.device; })
      .def_property_readonly(
          "ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.ptr); })
      .def("zero_", &DeviceArray::zero,
           "Fill with zeros (asynchronously, on the legacy default stream).")
      .def("copy_from_host", &DeviceArray::copy_from_host, py::arg("array"),
           "Copy in a float32, C-contiguous numpy array of the same shape (cudaMemcpy).")
      .def("to_host", &DeviceArray::to_host,
           "A new float32 numpy array holding the contents (cudaMemcpy; waits for queued work).")
      .def("__dlpack__", &device_array_dlpack, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) {
        return py::make_tuple(int(kDLCUDA), a.device);
      });

#ifdef OSR_WITH_CUDA
  m.def("sample_views_cuda", &sample_views_cuda, py::arg("erp"), py::arg("views"), py::arg("out"),
        py::arg("interp"));
  m.def("merge_accumulate_cuda", &merge_accumulate_cuda, py::arg("patches"), py::arg("views"),
        py::arg("acc"), py::arg("blend"), py::arg("feather"));
  m.def("merge_finalize_cuda", &merge_finalize_cuda, py::arg("acc"), py::arg("out"));
  m.def("count_nonfinite_cuda", &count_nonfinite_cuda, py::arg("x"),
        "Number of NaN or Inf elements of a float32 CUDA array (synchronises).");
#else
  for (const char* fn : {"sample_views_cuda", "merge_accumulate_cuda", "merge_finalize_cuda",
                         "count_nonfinite_cuda"})
    m.def(fn, [fn](const py::args&, const py::kwargs&) { no_cuda(fn); }, kNoCuda);
#endif
}
