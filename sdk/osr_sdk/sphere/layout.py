"""Tangent-plane patch layouts covering the sphere (DESIGN.md §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from osr_sdk.errors import InputError

#: Widest field of view a patch may have: past it, gnomonic patches stretch too much.
MAX_FOV_DEG = 120.0


def check_erp_hw(height: int, width: int, what: str = "ERP") -> None:
    """Raise InputError unless (height, width) is a usable 2:1 ERP size (±1 px on the width)."""
    if height < 2 or width < 4:
        raise InputError(f"{what} must be at least 2×4 pixels, got {height}×{width} (H×W)")
    if abs(width - 2 * height) > 1:
        raise InputError(
            f"{what} must have a 2:1 aspect (width = 2 × height ± 1), got {height}×{width} (H×W); "
            "use projection='planar' for non-360° images"
        )


@dataclass(frozen=True)
class TangentLayout:
    """Tangent patches covering an ERP of size `out_hw`.

    Attributes:
        centers_deg: (N, 2) longitude, latitude of each patch centre in degrees (lon in [-180, 180),
            east positive; lat in [-90, 90], north positive).
        fov_deg: (N,) field of view of each (square) patch in degrees.
        patch_size: P, pixels per patch side.
        out_hw: (H, W) of the output ERP the layout is made for.
        overlap: fraction of the patch half-width used as the feathering ramp at each edge.
    """

    centers_deg: np.ndarray
    fov_deg: np.ndarray
    patch_size: int
    out_hw: tuple[int, int]
    overlap: float
    _views: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        centers = np.asarray(self.centers_deg, np.float64).reshape(-1, 2)
        fov = np.broadcast_to(np.asarray(self.fov_deg, np.float64), (len(centers),)).copy()
        if len(centers) == 0:
            raise InputError("a TangentLayout needs at least one patch")
        if not (np.all(np.isfinite(centers)) and np.all(np.isfinite(fov))):
            raise InputError("patch centres and fields of view must be finite")
        if np.any(np.abs(centers[:, 1]) > 90):
            raise InputError("patch centre latitudes must lie in [-90, 90] degrees")
        if np.any(fov <= 0) or np.any(fov > MAX_FOV_DEG):
            raise InputError(f"patch fields of view must lie in (0, {MAX_FOV_DEG:g}] degrees, got {fov.min():g}..{fov.max():g}")
        if not 8 <= int(self.patch_size) <= 8192:
            raise InputError(f"patch_size must lie in [8, 8192], got {self.patch_size}")
        if not 0 < self.overlap <= 0.5:
            raise InputError(f"overlap must lie in (0, 0.5], got {self.overlap}")
        check_erp_hw(*self.out_hw, what="the output ERP")
        for name, value in (("centers_deg", centers), ("fov_deg", fov)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "out_hw", (int(self.out_hw[0]), int(self.out_hw[1])))
        object.__setattr__(self, "patch_size", int(self.patch_size))
        tan_half = np.tan(np.radians(fov) / 2)
        views = np.column_stack([np.radians(centers), tan_half, tan_half])
        views.setflags(write=False)
        object.__setattr__(self, "_views", views)

    def __len__(self) -> int:
        return len(self.centers_deg)

    @property
    def views(self) -> np.ndarray:
        """(N, 4) float64 rows (lon0_rad, lat0_rad, tan_half_x, tan_half_y), the kernels' view format."""
        return self._views


def _ring_spacing(lat_c: float, lat_lo: float, lat_hi: float, core: float) -> float:
    """Largest longitude spacing (rad) of patches on the ring at lat_c whose cores cover the band."""
    lats = np.linspace(lat_lo, lat_hi, 17)

    def covered(spacing: float) -> bool:
        dlon = np.linspace(0, spacing / 2, 9)[:, None]
        cos_c = math.sin(lat_c) * np.sin(lats) + math.cos(lat_c) * np.cos(lats) * np.cos(dlon)
        if np.any(cos_c <= 0):
            return False
        x = np.cos(lats) * np.sin(dlon) / cos_c
        y = (math.cos(lat_c) * np.sin(lats) - math.sin(lat_c) * np.cos(lats) * np.cos(dlon)) / cos_c
        return bool(np.all(np.abs(x) <= core) and np.all(np.abs(y) <= core))

    lo, hi = 0.0, 2 * math.pi
    if covered(hi):
        return hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if covered(mid) else (lo, mid)
    return lo


def _rings(core: float, n_rings: int) -> list[tuple[float, int]] | None:
    """(latitude, patch count) of each ring between the polar caps, or None if they cannot cover."""
    cap = math.atan(core)  # the polar patch's core covers colatitudes up to this
    band = (math.pi - 2 * cap) / n_rings
    if band / 2 >= cap:
        return None
    rings = []
    for k in range(n_rings):
        lat_lo = -math.pi / 2 + cap + k * band
        lat_hi = lat_lo + band
        lat_c = (lat_lo + lat_hi) / 2
        spacing = _ring_spacing(lat_c, lat_lo, lat_hi, core)
        if spacing <= 0:
            return None
        rings.append((lat_c, math.ceil(2 * math.pi / spacing - 1e-9)))
    return rings


def tangent_layout(
    out_h: int, out_w: int, patch_size: int = 512, overlap: float = 0.25
) -> TangentLayout:
    """Tangent patches (square, `patch_size` px) covering an `out_h`×`out_w` ERP.

    Patch pixel density matches the ERP's equator density (tan(F/2) = π·P/W), so a 512 px patch of
    a 4096-wide ERP spans ≈42.9°. Centres lie on latitude rings plus one patch at each pole; each
    ring holds ∝ cos(lat) patches, as few as keep every ERP pixel inside the *core* of some patch,
    the square |u|, |v| ≤ 1 − overlap where the feather weight is 1. The outer `overlap` fraction of
    the half-width is the feathering ramp, so no pixel depends on a patch's edge alone.
    """
    check_erp_hw(out_h, out_w, what="the output ERP")
    if not 8 <= patch_size <= 8192:
        raise InputError(f"patch_size must lie in [8, 8192], got {patch_size}")
    if not 0 < overlap <= 0.5:
        raise InputError(f"overlap must lie in (0, 0.5], got {overlap}")
    tan_half = math.pi * patch_size / out_w
    fov = math.degrees(2 * math.atan(tan_half))
    if fov > MAX_FOV_DEG:
        largest = int(out_w * math.tan(math.radians(MAX_FOV_DEG) / 2) / math.pi)
        raise InputError(
            f"patch_size {patch_size} is too large for a {out_w}-pixel-wide ERP (field of view {fov:.0f}° > "
            f"{MAX_FOV_DEG:g}°): use patch_size ≤ {largest}"
        )
    core = tan_half * (1 - overlap)
    cap = math.atan(core)
    best: list[tuple[float, int]] | None = None
    first = max(1, math.ceil((math.pi - 2 * cap) / (2 * cap)))
    for n_rings in range(first, first + 4):
        rings = _rings(core, n_rings)
        if rings is not None and (best is None or sum(n for _, n in rings) < sum(n for _, n in best)):
            best = rings
    if best is None:  # pragma: no cover - the search always finds rings for overlap <= 0.5
        raise InputError(f"no layout found for overlap {overlap}")
    centers = [(0.0, 90.0)]
    for k, (lat_c, count) in enumerate(reversed(best)):
        stagger = 0.5 * (k % 2)  # alternate rings are offset by half a spacing
        for i in range(count):
            lon = -180.0 + (i + stagger) * 360.0 / count
            centers.append((lon, math.degrees(lat_c)))
    centers.append((0.0, -90.0))
    return TangentLayout(
        centers_deg=np.array(centers), fov_deg=np.full(len(centers), fov), patch_size=patch_size,
        out_hw=(out_h, out_w), overlap=overlap,
    )
