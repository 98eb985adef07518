"""Validation and device dispatch of the arrays handed to the spherical kernels.

numpy input runs the CPU kernels; any DLPack-capable array on a CUDA device (a torch or CuPy
tensor, ...) runs the CUDA kernels on its own memory, with results handed back as the same kind
of array (through that library's `from_dlpack`) without a copy through the host.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from osr_sdk.errors import DeviceError, InputError

try:
    from osr_sdk import _spherical
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "osr_sdk was installed without its compiled extension osr_sdk._spherical; "
        "reinstall with `pip install .` from the source tree"
    ) from exc

_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def cuda_device(x: Any) -> int | None:
    """The CUDA device id of a DLPack array on a CUDA device, or None for host arrays."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack_device__"):
        return None
    kind, device = x.__dlpack_device__()
    if kind == _DLPACK_CUDA:
        if not _spherical.has_cuda():
            raise DeviceError(
                "CUDA input given, but osr_sdk._spherical was built without CUDA kernels "
                "(nvcc was not found at install time): pass a numpy array, or reinstall with "
                "OSR_CUDA=ON and the CUDA toolkit present"
            )
        if not 0 <= int(device) < _spherical.cuda_device_count():
            raise DeviceError(f"CUDA device {device} is not visible to osr_sdk (no driver or GPU here?)")
        return int(device)
    if kind == _DLPACK_CPU:
        return None
    raise InputError(f"unsupported DLPack device type {kind}: pass a numpy array or a CUDA array")


def as_host_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """Check a host array (numpy or CPU DLPack) and return it as numpy, without copying."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
        except (TypeError, ValueError, BufferError) as exc:
            raise InputError(f"{name} must be a numpy array, got {type(x).__name__}") from exc
    check_shape_dtype(name, tuple(x.shape), str(x.dtype), ndim)
    if not x.flags.c_contiguous:
        raise InputError(f"{name} must be C-contiguous: pass np.ascontiguousarray({name})")
    if not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or Inf values")
    return x


def check_device_array(x: Any, name: str, ndim: int) -> None:
    """Check a CUDA array's shape, dtype, contiguity and values (the value check synchronises)."""
    shape = tuple(int(s) for s in x.shape)
    dtype = str(getattr(x, "dtype", "float32")).replace("torch.", "")
    check_shape_dtype(name, shape, dtype, ndim)
    contiguous = getattr(x, "is_contiguous", None)
    if contiguous is not None and not contiguous():
        raise InputError(f"{name} must be contiguous: pass {name}.contiguous()")
    if _spherical.count_nonfinite_cuda(x):
        raise InputError(f"{name} contains NaN or Inf values")


def check_shape_dtype(name: str, shape: tuple[int, ...], dtype: str, ndim: int) -> None:
    """Raise InputError unless the array is float32 with `ndim` dimensions and no empty axis."""
    if len(shape) != ndim:
        raise InputError(f"{name} must have {ndim} dimensions, got shape {shape}")
    if dtype != "float32":
        raise InputError(f"{name} must be float32, got {dtype}: convert it with .astype(np.float32)")
    if 0 in shape:
        raise InputError(f"{name} must not be empty, got shape {shape}")


def like(reference: Any, result: Any) -> Any:
    """Hand a CUDA DeviceArray back as the reference array's kind (torch, CuPy, ...) when it has one."""
    module = sys.modules.get(type(reference).__module__.split(".")[0])
    from_dlpack = getattr(module, "from_dlpack", None)
    return from_dlpack(result) if from_dlpack is not None else result
