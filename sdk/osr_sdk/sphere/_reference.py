"""Float64 numpy reference of the spherical resampling kernels.

Slow and plain on purpose: the same formulas as cpp_ext/ (see `osr_sdk/_spherical.pyi` for the
conventions), written once more so that tests and benchmarks can check the kernels against it.
"""

from __future__ import annotations

import numpy as np

from osr_sdk._bicubic import keys_weights

INTERP_CODES = {"nearest": 0, "bilinear": 1, "bicubic": 2}
BLEND_CODES = {"uniform": 0, "feather": 1}


def erp_lonlat(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Longitude (W,) and latitude (H,) in radians of the ERP pixel centres."""
    lon = (np.arange(width) + 0.5) / width * 2 * np.pi - np.pi
    lat = np.pi / 2 - (np.arange(height) + 0.5) / height * np.pi
    return lon, lat


def gnomonic_forward(
    lon: np.ndarray, lat: np.ndarray, lon0: float, lat0: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tangent-plane (x east, y north) of (lon, lat) about (lon0, lat0), and cos c (valid where > 0)."""
    dlon = lon - lon0
    cos_c = np.sin(lat0) * np.sin(lat) + np.cos(lat0) * np.cos(lat) * np.cos(dlon)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.cos(lat) * np.sin(dlon) / cos_c
        y = (np.cos(lat0) * np.sin(lat) - np.sin(lat0) * np.cos(lat) * np.cos(dlon)) / cos_c
    return x, y, cos_c


def gnomonic_inverse(
    x: np.ndarray, y: np.ndarray, lon0: float, lat0: float
) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) in radians of tangent-plane points (x, y) about (lon0, lat0); lon not wrapped."""
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    safe = np.where(rho > 0, rho, 1.0)
    sin_lat = np.cos(c) * np.sin(lat0) + y * np.sin(c) * np.cos(lat0) / safe
    lat = np.where(rho > 0, np.arcsin(np.clip(sin_lat, -1.0, 1.0)), lat0)
    lon = lon0 + np.arctan2(
        x * np.sin(c), rho * np.cos(lat0) * np.cos(c) - y * np.sin(lat0) * np.sin(c)
    )
    return lon, lat


def view_grid(height: int, width: int, tan_half_x: float, tan_half_y: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic (x, y) of the pixel centres of an (height, width) view, each (height, width)."""
    gx = ((np.arange(width) + 0.5) / width * 2 - 1) * tan_half_x
    gy = (1 - (np.arange(height) + 0.5) / height * 2) * tan_half_y
    return np.meshgrid(gx, gy)


def fetch(erp: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """ERP values at integer (rows, cols): columns wrap, rows past a pole continue on the far side."""
    height, width = erp.shape[:2]
    above, below = rows < 0, rows >= height
    rows = np.where(above, -1 - rows, np.where(below, 2 * height - 1 - rows, rows))
    cols = np.where(above | below, cols + width // 2, cols) % width
    return erp[rows, cols]


def interpolate(erp: np.ndarray, xe: np.ndarray, ye: np.ndarray, interp: str) -> np.ndarray:
    """Sample erp (H, W, C) at continuous pixel coordinates (pixel centres at integers): (..., C)."""
    if interp == "nearest":
        return fetch(erp, np.floor(ye + 0.5).astype(np.int64), np.floor(xe + 0.5).astype(np.int64))
    x0, y0 = np.floor(xe), np.floor(ye)
    tx, ty = (xe - x0)[..., None], (ye - y0)[..., None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    if interp == "bilinear":
        top = fetch(erp, y0, x0) * (1 - tx) + fetch(erp, y0, x0 + 1) * tx
        bottom = fetch(erp, y0 + 1, x0) * (1 - tx) + fetch(erp, y0 + 1, x0 + 1) * tx
        return top * (1 - ty) + bottom * ty
    if interp == "bicubic":
        wx, wy = keys_weights(tx), keys_weights(ty)
        out = 0.0
        for i in range(4):
            row = sum(wx[j] * fetch(erp, y0 + i - 1, x0 + j - 1) for j in range(4))
            out = out + wy[i] * row
        return out
    raise ValueError(f"unknown interp {interp!r}")


def sample_views(
    erp: np.ndarray, views: np.ndarray, out_h: int, out_w: int, interp: str = "bicubic"
) -> np.ndarray:
    """Reference of `_spherical.sample_views_cpu`: (N, C, out_h, out_w) float64."""
    erp = np.asarray(erp, np.float64)
    height, width, channels = erp.shape
    out = np.empty((len(views), channels, out_h, out_w))
    for n, (lon0, lat0, tan_x, tan_y) in enumerate(np.asarray(views, np.float64)):
        gx, gy = view_grid(out_h, out_w, tan_x, tan_y)
        lon, lat = gnomonic_inverse(gx, gy, lon0, lat0)
        xe = (lon + np.pi) / (2 * np.pi) * width - 0.5
        ye = (np.pi / 2 - lat) / np.pi * height - 0.5
        out[n] = np.moveaxis(interpolate(erp, xe, ye, interp), -1, 0)
    return out


def feather_weight(t: np.ndarray, feather: float) -> np.ndarray:
    """Smoothstep ramp from 0 at |t| = 1 to 1 at |t| <= 1 - feather."""
    s = np.clip((1 - np.abs(t)) / feather, 0.0, 1.0)
    return s * s * (3 - 2 * s)


def merge_accumulate(
    patches: np.ndarray,
    views: np.ndarray,
    acc: np.ndarray,
    blend: str = "feather",
    feather: float = 0.25,
) -> None:
    """Reference of `_spherical.merge_accumulate_cpu`: adds into acc (H, W, C + 1) float64."""
    height, width = acc.shape[:2]
    _, channels, ph, pw = patches.shape
    lon, lat = erp_lonlat(height, width)
    for patch, (lon0, lat0, tan_x, tan_y) in zip(np.asarray(patches, np.float64), views):
        # Only rows within the corner's angular distance of the centre can be inside the view.
        reach = np.arctan(np.hypot(tan_x, tan_y))
        rows = np.nonzero(np.abs(lat - lat0) <= reach + 1e-9)[0]
        if rows.size == 0:
            continue
        lon_g, lat_g = np.meshgrid(lon, lat[rows])
        x, y, cos_c = gnomonic_forward(lon_g, lat_g, lon0, lat0)
        u, v = x / tan_x, y / tan_y
        inside = (cos_c > 0) & (np.abs(u) < 1) & (np.abs(v) < 1)
        u, v = np.where(inside, u, 0.0), np.where(inside, v, 0.0)
        if blend == "feather":
            weight = feather_weight(u, feather) * feather_weight(v, feather)
        elif blend == "uniform":
            weight = np.ones_like(u)
        else:
            raise ValueError(f"unknown blend {blend!r}")
        weight = np.where(inside, weight, 0.0)
        # Bilinear read of the patch with indices clamped into it.
        px, py = (u + 1) / 2 * pw - 0.5, (1 - v) / 2 * ph - 0.5
        x0, y0 = np.floor(px), np.floor(py)
        tx, ty = px - x0, py - y0
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)

        def read(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            return patch[:, np.clip(r, 0, ph - 1), np.clip(c, 0, pw - 1)]

        value = (read(y0, x0) * (1 - tx) + read(y0, x0 + 1) * tx) * (1 - ty) + (
            read(y0 + 1, x0) * (1 - tx) + read(y0 + 1, x0 + 1) * tx
        ) * ty
        acc[rows, :, :channels] += np.moveaxis(value * weight, 0, -1)
        acc[rows, :, channels] += weight


def merge_finalize(acc: np.ndarray) -> np.ndarray:
    """Reference of `_spherical.merge_finalize_cpu`: acc[..., :C] / acc[..., C], 0 where no weight."""
    weight = acc[..., -1:]
    return np.where(weight > 0, acc[..., :-1] / np.where(weight > 0, weight, 1.0), 0.0)


def tangent_to_erp(
    patches: np.ndarray, views: np.ndarray, out_hw: tuple[int, int], blend: str = "feather", feather: float = 0.25
) -> np.ndarray:
    """Reference merge of all patches into an (H, W, C) float64 ERP."""
    acc = np.zeros((*out_hw, patches.shape[1] + 1))
    merge_accumulate(patches, views, acc, blend, feather)
    return merge_finalize(acc)
