"""Private compiled kernels of osr_sdk.sphere (built from cpp_ext/ by CMakeLists.txt).

Conventions shared by every kernel:
- ERP images are (H, W, C) float32, C-contiguous, pixel (x, y) centred at
  lon = ((x + 0.5) / W) * 2pi - pi, lat = pi/2 - ((y + 0.5) / H) * pi.
- A *view* is one row of a (N, 4) float64 array: (lon0_rad, lat0_rad, tan_half_x, tan_half_y).
  View pixel (i, j) of an (h, w) view has its centre at gnomonic
  x = ((j + 0.5) / w * 2 - 1) * tan_half_x (east), y = (1 - (i + 0.5) / h * 2) * tan_half_y (north).
- Patches are (N, C, h, w) float32, C-contiguous.
- interp: 0 nearest, 1 bilinear, 2 bicubic (Keys, a = -0.75). Columns wrap modulo W; a row index
  r < 0 reads row -1 - r and r >= H reads row 2H - 1 - r, each at column c + W // 2 (mod W).
- blend: 0 uniform (weight 1 inside the view), 1 feather (w = s(u) * s(v) with
  s(t) = smoothstep(clamp((1 - |t|) / feather, 0, 1)), u = x / tan_half_x, v = y / tan_half_y);
  weight 0 where cos c <= 0 or |u| >= 1 or |v| >= 1. The patch is sampled bilinearly at
  (u, v), clamping indices to the patch.
- The accumulator is (H, W, C + 1) float32: channels 0..C-1 hold sum(w * value), channel C holds sum(w).
- threads: 0 = all hardware threads.
- synchronize, cuda_mem_info and DeviceArray raise RuntimeError without a visible CUDA device or
  without the CUDA kernels, ValueError for a device id out of range.
- *_cuda functions take objects implementing __dlpack__ / __dlpack_device__ on a CUDA device
  (float32, C-contiguous); they run on that device's legacy default stream, asynchronously.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

def has_cuda() -> bool:
    """True when the module was built with the CUDA kernels."""

def cuda_device_count() -> int:
    """Number of CUDA devices visible (0 without a driver or GPU, or without CUDA kernels)."""

def synchronize(device: int) -> None:
    """Wait for all work on a CUDA device (cudaDeviceSynchronize); RuntimeError on a CUDA error."""

def cuda_mem_info(device: int) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device's memory (cudaMemGetInfo)."""

def sample_views_cpu(
    erp: npt.NDArray[np.float32],
    views: npt.NDArray[np.float64],
    out: npt.NDArray[np.float32],
    interp: int,
    threads: int = 0,
) -> None:
    """Fill out (N, C, h, w) with the views sampled from erp (H, W, C)."""

def merge_accumulate_cpu(
    patches: npt.NDArray[np.float32],
    views: npt.NDArray[np.float64],
    acc: npt.NDArray[np.float32],
    blend: int,
    feather: float,
    threads: int = 0,
) -> None:
    """Add the weighted patches (N, C, h, w) into the accumulator acc (H, W, C + 1)."""

def merge_finalize_cpu(
    acc: npt.NDArray[np.float32], out: npt.NDArray[np.float32], threads: int = 0
) -> None:
    """out (H, W, C) = acc[..., :C] / acc[..., C]; 0 where the weight sum is 0."""

class DeviceArray:
    """A float32, C-contiguous array in CUDA device memory (cudaMalloc), exported by DLPack."""

    def __init__(self, shape: tuple[int, ...], device: int = 0) -> None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def device(self) -> int: ...
    @property
    def ptr(self) -> int: ...
    def zero_(self) -> None: ...
    def copy_from_host(self, array: npt.NDArray[np.float32]) -> None:
        """Copy in a float32, C-contiguous numpy array of the same shape (cudaMemcpy)."""
    def to_host(self) -> npt.NDArray[np.float32]:
        """A new float32 numpy array holding the contents (cudaMemcpy; waits for queued work)."""
    def __dlpack__(self, stream: int | None = None, **kwargs: Any) -> Any: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...

def sample_views_cuda(erp: Any, views: npt.NDArray[np.float64], out: Any, interp: int) -> None: ...
def merge_accumulate_cuda(
    patches: Any, views: npt.NDArray[np.float64], acc: Any, blend: int, feather: float
) -> None: ...
def merge_finalize_cuda(acc: Any, out: Any) -> None: ...
def count_nonfinite_cuda(x: Any) -> int:
    """Number of NaN or Inf elements of a float32 CUDA array (synchronises)."""
