"""Quality metrics for ERP images: WS-PSNR and WS-SSIM (DESIGN.md §5).

Both weight each row by the area it covers on the sphere, w(i) = cos((i + 0.5 − H/2)·π/H), so the
stretched polar rows of an equirectangular image count as little as they cover.

Inputs are (H, W) or (H, W, C) arrays of the same shape. uint8 images are on a 0..255 scale;
floating-point images on 0..1 unless `max_value` says otherwise; the constants (255² in the PSNR,
C1 = (0.01·255)², C2 = (0.03·255)² in the SSIM) scale with `max_value`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from osr_sdk.errors import InputError

__all__ = ["ws_psnr", "ws_ssim", "psnr", "ssim", "row_weights"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def row_weights(height: int) -> np.ndarray:
    """WS weights w(i) = cos((i + 0.5 − H/2)·π/H) of the H rows of an ERP."""
    return np.cos((np.arange(height) + 0.5 - height / 2) * np.pi / height)


def _prepare(a: np.ndarray, b: np.ndarray, max_value: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3) or a.size == 0:
        raise InputError(f"images must be non-empty (H, W) or (H, W, C) arrays, got shape {a.shape}")
    for x in (a, b):
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise InputError(f"images must be integer or floating-point arrays, got {x.dtype}")
    if max_value is None:
        if a.dtype != b.dtype:
            raise InputError(f"images must share a dtype when max_value is not given, got {a.dtype} and {b.dtype}")
        if a.dtype == np.uint8:
            max_value = 255.0
        elif np.issubdtype(a.dtype, np.floating):
            max_value = 1.0
        else:
            raise InputError(f"give max_value for {a.dtype} images")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        raise InputError("images contain NaN or Inf values")
    if a64.ndim == 2:
        a64, b64 = a64[..., None], b64[..., None]
    return a64, b64, float(max_value)


def ws_psnr(a: np.ndarray, b: np.ndarray, max_value: float | None = None) -> float:
    """Weighted-to-spherically-uniform PSNR in dB (inf for identical images).

    WMSE = Σ w·(a − b)² / Σ w over all pixels and channels; WS-PSNR = 10·log10(max² / WMSE).
    """
    return _psnr(a, b, max_value, row_weights)


def psnr(a: np.ndarray, b: np.ndarray, max_value: float | None = None) -> float:
    """Plain PSNR in dB over all pixels and channels, for planar images (no border crop)."""
    return _psnr(a, b, max_value, np.ones)


def _psnr(a: np.ndarray, b: np.ndarray, max_value: float | None, weights: Callable[[int], np.ndarray]) -> float:
    a64, b64, peak = _prepare(a, b, max_value)
    w = weights(a64.shape[0])[:, None, None]
    wmse = float(np.sum(w * (a64 - b64) ** 2) / (np.sum(w) * a64.shape[1] * a64.shape[2]))
    return float("inf") if wmse == 0 else float(10 * np.log10(peak**2 / wmse))


def _gaussian_window() -> np.ndarray:
    k = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    g = np.exp(-(k**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of the (H, W) image x with the 1-D window g on both axes."""
    n = len(g)
    rows = sum(g[k] * x[k : x.shape[0] - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[:, k : x.shape[1] - n + 1 + k] for k in range(n))


def ws_ssim(a: np.ndarray, b: np.ndarray, max_value: float | None = None) -> float:
    """Weighted-to-spherically-uniform SSIM.

    Per channel: SSIM map with an 11×11 Gaussian window (σ = 1.5) over the valid region (5 px
    trimmed on each side), weighted by the WS row weights of the trimmed height; then the mean over
    channels.
    """
    return _ssim(a, b, max_value, row_weights)


def ssim(a: np.ndarray, b: np.ndarray, max_value: float | None = None) -> float:
    """Plain SSIM (the same window and constants as `ws_ssim`, every row weighted alike), for planar images."""
    return _ssim(a, b, max_value, np.ones)


def _ssim(a: np.ndarray, b: np.ndarray, max_value: float | None, weights: Callable[[int], np.ndarray]) -> float:
    a64, b64, peak = _prepare(a, b, max_value)
    if min(a64.shape[:2]) < SSIM_WINDOW:
        raise InputError(f"WS-SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {a64.shape[:2]}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = _gaussian_window()
    w = weights(a64.shape[0] - SSIM_WINDOW + 1)[:, None]
    scores = []
    for ch in range(a64.shape[2]):
        x, y = a64[..., ch], b64[..., ch]
        mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
        var_x = _filter_valid(x * x, g) - mu_x**2
        var_y = _filter_valid(y * y, g) - mu_y**2
        cov = _filter_valid(x * y, g) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        scores.append(np.sum(w * ssim_map) / (np.sum(w) * ssim_map.shape[1]))
    return float(np.mean(scores))
