"""A minimal NVML client (the NVIDIA driver's management library, through ctypes).

Gives a GPU's name, the driver version and its memory without torch or a CUDA toolkit. NVML counts
devices in PCI order, which can differ from CUDA's order under CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

__all__ = ["Nvml"]


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Nvml:
    """NVML for one device; `available` is False without the driver library or the device."""

    def __init__(self, device_id: int = 0) -> None:
        self.available = False
        self._handle = ctypes.c_void_p()
        try:
            self._lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return
        if self._lib.nvmlInit_v2() != 0:
            return
        if self._lib.nvmlDeviceGetHandleByIndex_v2(int(device_id), ctypes.byref(self._handle)) != 0:
            self._lib.nvmlShutdown()
            return
        self.available = True

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _string(self, fn: Callable[..., int], *args: Any) -> str | None:
        buf = ctypes.create_string_buffer(256)
        return buf.value.decode() if fn(*args, buf, ctypes.c_uint(256)) == 0 else None

    def memory(self) -> dict[str, int] | None:
        """{"total", "free", "used"} bytes of the device, or None when unknown."""
        if not self.available:
            return None
        memory = _Memory()
        if self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(memory)) != 0:
            return None
        return {"total": int(memory.total), "free": int(memory.free), "used": int(memory.used)}

    def info(self) -> dict[str, Any] | None:
        """The device's name, driver and CUDA driver versions and memory size, or None."""
        memory = self.memory()
        if memory is None:
            return None
        cuda = ctypes.c_int()
        cuda_ok = self._lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda)) == 0
        return {
            "name": self._string(self._lib.nvmlDeviceGetName, self._handle),
            "driver": self._string(self._lib.nvmlSystemGetDriverVersion),
            "cuda_driver": f"{cuda.value // 1000}.{cuda.value % 1000 // 10}" if cuda_ok else None,
            "memory_gib": round(memory["total"] / 2**30, 1),
        }

    def close(self) -> None:
        if self.available:
            self._lib.nvmlShutdown()
            self.available = False
