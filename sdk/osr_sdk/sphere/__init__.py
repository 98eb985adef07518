"""Spherical resampling between equirectangular (ERP) images and tangent-plane views.

Angle conventions (DESIGN.md §4): ERP pixel (x, y) of a W×H image has its centre at
lon = ((x + 0.5) / W)·360° − 180°, lat = 90° − ((y + 0.5) / H)·180°; longitude grows to the
right (east), latitude up (north). Longitude wraps at ±180° and rows continue across the poles.
Views are gnomonic (tangent-plane) projections: pixel (i, j) of a P×P patch of field of view F
has its centre at x = ((j + 0.5)/P·2 − 1)·tan(F/2) (east), y = (1 − (i + 0.5)/P·2)·tan(F/2) (north).

Layouts: ERP images are (H, W, C), patches (N, C, P, P), all float32. numpy arrays run on the
multithreaded CPU kernels, DLPack arrays on a CUDA device (torch, CuPy, ...) on the CUDA kernels
without leaving the GPU; results come back as the same kind of array.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence, get_args

import numpy as np

from osr_sdk.errors import InputError
from osr_sdk.sphere import _arrays
from osr_sdk.sphere._arrays import _spherical
from osr_sdk.sphere._reference import BLEND_CODES, INTERP_CODES
from osr_sdk.sphere.layout import TangentLayout, check_erp_hw, tangent_layout

Interp = Literal["nearest", "bilinear", "bicubic"]
Blend = Literal["feather", "uniform"]

__all__ = [
    "Interp",
    "Blend",
    "TangentLayout",
    "tangent_layout",
    "erp_to_tangent",
    "tangent_to_erp",
    "ErpMerger",
    "erp_to_perspective",
    "cuda_available",
]


def cuda_available() -> bool:
    """True when the CUDA kernels were built and a CUDA device is visible."""
    return _spherical.has_cuda() and _spherical.cuda_device_count() > 0


def _choice(name: str, value: str, options: type) -> str:
    if value not in get_args(options):
        raise InputError(f"{name} must be one of {', '.join(get_args(options))}; got {value!r}")
    return value


def _check_erp(erp: Any) -> int | None:
    device = _arrays.cuda_device(erp)
    if device is None:
        erp = _arrays.as_host_array(erp, "erp", 3)
    else:
        _arrays.check_device_array(erp, "erp", 3)
    check_erp_hw(int(erp.shape[0]), int(erp.shape[1]))
    return device


def _sample(erp: Any, views: np.ndarray, out_h: int, out_w: int, interp: str, out: Any = None) -> Any:
    """Run the view-sampling kernel on erp's device; returns (N, C, out_h, out_w)."""
    device = _check_erp(erp)
    code = INTERP_CODES[_choice("interp", interp, Interp)]
    shape = (len(views), int(erp.shape[2]), out_h, out_w)
    views = np.ascontiguousarray(views, np.float64)
    if device is None:
        erp = _arrays.as_host_array(erp, "erp", 3)
        result = np.empty(shape, np.float32) if out is None else out
        if not (isinstance(result, np.ndarray) and result.shape == shape and result.dtype == np.float32
                and result.flags.c_contiguous):
            raise InputError(f"out must be a C-contiguous float32 numpy array of shape {shape}")
        _spherical.sample_views_cpu(erp, views, result, code)
        return result
    result = _spherical.DeviceArray(shape, device) if out is None else out
    if out is not None and tuple(out.shape) != shape:
        raise InputError(f"out must have shape {shape}, got {tuple(out.shape)}")
    _spherical.sample_views_cuda(erp, views, result, code)
    return _arrays.like(erp, result) if out is None else out


def erp_to_tangent(
    erp: Any,
    layout: TangentLayout,
    interp: Interp = "bicubic",
    *,
    indices: Sequence[int] | slice | None = None,
    out: Any = None,
) -> Any:
    """Sample the layout's patches from `erp` (H, W, C): returns (N, C, P, P) float32.

    The ERP may have any 2:1 size: sampling an LQ ERP at 1/4 of the layout's size does the ×4
    upsample in the same pass. `indices` picks a subset of the patches (e.g. one batch), so that a
    caller never holds all of them at once; `out` receives the result in place (numpy on the CPU,
    any CUDA DLPack array of the right shape on the GPU).
    """
    views = layout.views if indices is None else layout.views[_index(indices, len(layout))]
    size = layout.patch_size
    return _sample(erp, views, size, size, interp, out)


def _index(indices: Sequence[int] | slice, count: int) -> np.ndarray:
    picked = np.arange(count)[indices] if isinstance(indices, slice) else np.asarray(indices, np.int64).ravel()
    if picked.size == 0 or picked.min() < 0 or picked.max() >= count:
        raise InputError(f"indices must select patches among 0..{count - 1}, got {indices!r}")
    return picked


class ErpMerger:
    """Accumulates tangent patches into an ERP batch by batch, then normalises (`result()`).

    Each output pixel is Σ wᵢ·patchᵢ / Σ wᵢ over the patches covering it; with `blend="feather"`
    the weight falls smoothly to zero over the outer `layout.overlap` of each patch half-width.
    Memory: one (H, W, C + 1) float32 accumulator, whatever the number of patches.
    """

    def __init__(self, layout: TangentLayout, channels: int = 3, blend: Blend = "feather") -> None:
        self.layout = layout
        self.channels = int(channels)
        if not 1 <= self.channels <= 64:
            raise InputError(f"channels must lie in [1, 64], got {channels}")
        self._blend = BLEND_CODES[_choice("blend", blend, Blend)]
        self._acc: Any = None
        self._device: int | None = None
        self._reference: Any = None

    def add(self, patches: Any, indices: Sequence[int] | slice | None = None) -> None:
        """Add patches (n, C, P, P) of the layout; `indices` names which (default: all, in order)."""
        layout = self.layout
        picked = np.arange(len(layout)) if indices is None else _index(indices, len(layout))
        device = _arrays.cuda_device(patches)
        expected = (len(picked), self.channels, layout.patch_size, layout.patch_size)
        if device is None:
            patches = _arrays.as_host_array(patches, "patches", 4)
        else:
            _arrays.check_device_array(patches, "patches", 4)
        if tuple(int(s) for s in patches.shape) != expected:
            raise InputError(f"patches must have shape {expected} for these indices, got {tuple(patches.shape)}")
        if self._acc is None:
            shape = (*layout.out_hw, self.channels + 1)
            if device is None:
                self._acc = np.zeros(shape, np.float32)
            else:
                self._acc = _spherical.DeviceArray(shape, device)
                self._acc.zero_()
            self._device, self._reference = device, patches
        elif device != self._device:
            raise InputError("all patches added to one ErpMerger must be on the same device")
        views = np.ascontiguousarray(layout.views[picked])
        if device is None:
            _spherical.merge_accumulate_cpu(patches, views, self._acc, self._blend, layout.overlap)
        else:
            _spherical.merge_accumulate_cuda(patches, views, self._acc, self._blend, layout.overlap)

    def result(self) -> Any:
        """The merged (H, W, C) ERP; pixels no patch covered are 0."""
        if self._acc is None:
            raise InputError("no patches were added to this ErpMerger")
        shape = (*self.layout.out_hw, self.channels)
        if self._device is None:
            out = np.empty(shape, np.float32)
            _spherical.merge_finalize_cpu(self._acc, out)
            return out
        out = _spherical.DeviceArray(shape, self._device)
        _spherical.merge_finalize_cuda(self._acc, out)
        return _arrays.like(self._reference, out)


def tangent_to_erp(patches: Any, layout: TangentLayout, blend: Blend = "feather") -> Any:
    """Merge all of a layout's patches (N, C, P, P) into an (H, W, C) ERP (see `ErpMerger`)."""
    merger = ErpMerger(layout, channels=int(patches.shape[1]) if len(patches.shape) == 4 else 3, blend=blend)
    merger.add(patches)
    return merger.result()


def erp_to_perspective(
    erp: Any,
    fov_deg: float | tuple[float, float],
    yaw_deg: float,
    pitch_deg: float,
    out_hw: tuple[int, int],
    interp: Interp = "bilinear",
) -> Any:
    """One perspective (pinhole) view of an ERP (H, W, C): returns (h, w, C) float32.

    py360convert's `e2p` conventions: `yaw_deg` turns right (east) from the ERP centre,
    `pitch_deg` up, `fov_deg` is the horizontal and vertical field of view (one number for both,
    or a (horizontal, vertical) pair), all in degrees; no roll. Pixel centres sit at the centres of
    an out_hw grid spanning the field of view (py360convert places its first and last samples on
    the field's edges instead).
    """
    h_fov, v_fov = (fov_deg, fov_deg) if np.isscalar(fov_deg) else tuple(fov_deg)  # type: ignore[misc]
    for name, value in (("horizontal fov_deg", h_fov), ("vertical fov_deg", v_fov)):
        if not (math.isfinite(value) and 0 < value < 180):
            raise InputError(f"{name} must lie in (0, 180) degrees, got {value}")
    if not (math.isfinite(yaw_deg) and math.isfinite(pitch_deg) and -90 <= pitch_deg <= 90):
        raise InputError(f"yaw_deg must be finite and pitch_deg in [-90, 90], got {yaw_deg}, {pitch_deg}")
    out_h, out_w = (int(v) for v in out_hw)
    if not (1 <= out_h <= 16384 and 1 <= out_w <= 16384):
        raise InputError(f"out_hw must lie in [1, 16384] on each side, got {tuple(out_hw)}")
    lon = (yaw_deg + 180.0) % 360.0 - 180.0
    view = np.array([[math.radians(lon), math.radians(pitch_deg),
                      math.tan(math.radians(h_fov) / 2), math.tan(math.radians(v_fov) / 2)]])
    patch = _sample(erp, view, out_h, out_w, interp)[0]
    if isinstance(patch, np.ndarray):
        return np.ascontiguousarray(patch.transpose(1, 2, 0))
    return patch.permute(1, 2, 0) if hasattr(patch, "permute") else patch.transpose(1, 2, 0)
