"""A seeded second-order degradation (Real-ESRGAN style): HQ image → LQ image ``scale``× smaller.

Each of two passes applies, with Real-ESRGAN's probabilities and ranges:

1. blur: an isotropic or (probability 0.3) anisotropic, rotated Gaussian kernel (odd size
   7–21, σ in [0.2, 3] first pass, [0.2, 1.5] second; the second pass blurs with probability 0.8);
2. resize: up, down or keep (probabilities 0.2/0.7/0.1, then 0.3/0.4/0.3), by a factor in
   [0.15, 1.5] then [0.3, 1.2], with area, bilinear or bicubic interpolation;
3. noise: Gaussian (σ in [1, 30] then [1, 25], of 255) or Poisson (scale in [0.05, 3] then
   [0.05, 2.5]) with probability 1/2 each, grey (the same in every channel) with probability 0.4;
4. JPEG at quality 30–95 (Pillow).

Then the image is resized to ``(H // scale, W // scale)`` and JPEG-compressed once more, in a
random order. (Real-ESRGAN's generalized/plateau kernels and sinc filters are left out.) Every
random choice comes from ``numpy.random.default_rng(seed)``: the same image and seed always give
the same LQ image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from osr_export.errors import ExportError

__all__ = ["FIRST", "SECOND", "DegradationParams", "degrade"]


@dataclass(frozen=True)
class DegradationParams:
    """The ranges of one degradation pass (Real-ESRGAN's defaults)."""

    blur_prob: float
    blur_sigma: tuple[float, float]
    aniso_prob: float
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_sigma: tuple[float, float]  # of 255
    poisson_scale: tuple[float, float]
    gray_noise_prob: float
    jpeg_quality: tuple[int, int]


FIRST = DegradationParams(1.0, (0.2, 3.0), 0.3, (0.2, 0.7, 0.1), (0.15, 1.5), 0.5, (1.0, 30.0),
                          (0.05, 3.0), 0.4, (30, 95))
SECOND = DegradationParams(0.8, (0.2, 1.5), 0.3, (0.3, 0.4, 0.3), (0.3, 1.2), 0.5, (1.0, 25.0),
                           (0.05, 2.5), 0.4, (30, 95))
_KERNEL_SIZES = tuple(range(7, 22, 2))
_RESIZE_MODES = ("area", "bilinear", "bicubic")


def degrade(hq: np.ndarray, seed: int, scale: int = 4) -> np.ndarray:
    """Degrade ``hq`` (uint8, H×W×3) into an LQ image (uint8, (H//scale)×(W//scale)×3)."""
    if not isinstance(hq, np.ndarray) or hq.dtype != np.uint8 or hq.ndim != 3 or hq.shape[2] != 3:
        got = f"{hq.dtype} {hq.shape}" if isinstance(hq, np.ndarray) else type(hq).__name__
        raise ExportError(f"degrade() needs a uint8 H×W×3 array, got {got}")
    if scale < 1 or hq.shape[0] < scale or hq.shape[1] < scale:
        raise ExportError(f"cannot degrade a {hq.shape[1]}×{hq.shape[0]} image by ×{scale}")
    rng = np.random.default_rng(seed)
    out_hw = (hq.shape[0] // scale, hq.shape[1] // scale)
    img = torch.tensor(hq).permute(2, 0, 1)[None].float() / 255.0  # (1,3,H,W)
    for params in (FIRST, SECOND):
        img = _one_pass(img, params, rng, scale, hq.shape[:2])
    if rng.random() < 0.5:
        img = _jpeg(_resize_to(img, out_hw, rng), rng, FIRST.jpeg_quality)
    else:
        img = _resize_to(_jpeg(img, rng, FIRST.jpeg_quality), out_hw, rng)
    return _to_uint8(img)


def _one_pass(img: torch.Tensor, p: DegradationParams, rng: np.random.Generator, scale: int,
              hq_hw: tuple[int, int]) -> torch.Tensor:
    if rng.random() < p.blur_prob:
        img = _blur(img, _gaussian_kernel(rng, p))
    img = _random_resize(img, p, rng, hq_hw, scale)
    img = _noise(img, p, rng)
    return _jpeg(img, rng, p.jpeg_quality)


def _gaussian_kernel(rng: np.random.Generator, p: DegradationParams) -> np.ndarray:
    size = int(rng.choice(_KERNEL_SIZES))
    sx = rng.uniform(*p.blur_sigma)
    if rng.random() < p.aniso_prob:
        sy = rng.uniform(*p.blur_sigma)
        theta = rng.uniform(-math.pi, math.pi)
    else:
        sy, theta = sx, 0.0
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sx**2, sy**2]) @ rot.T
    inv = np.linalg.inv(cov)
    ax = np.arange(size) - size // 2
    xx, yy = np.meshgrid(ax, ax)
    grid = np.stack([xx, yy], -1).astype(np.float64)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", grid, inv, grid))
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    k = kernel.shape[0]
    pad = k // 2
    mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
    weight = torch.from_numpy(kernel)[None, None].repeat(3, 1, 1, 1)
    return F.conv2d(F.pad(img, (pad, pad, pad, pad), mode=mode), weight, groups=3)


def _interp(img: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(img, size=hw, mode="area")
    return F.interpolate(img, size=hw, mode=mode, align_corners=False)


def _random_resize(img: torch.Tensor, p: DegradationParams, rng: np.random.Generator,
                   hq_hw: tuple[int, int], scale: int) -> torch.Tensor:
    kind = rng.choice(3, p=list(p.resize_prob))
    factor = [rng.uniform(1.0, p.resize_range[1]), rng.uniform(p.resize_range[0], 1.0), 1.0][kind]
    # never below the final LQ size's quarter, so tiny inputs keep at least a few pixels
    h = max(round(img.shape[-2] * factor), max(1, hq_hw[0] // (4 * scale)))
    w = max(round(img.shape[-1] * factor), max(1, hq_hw[1] // (4 * scale)))
    return _interp(img, (h, w), str(rng.choice(_RESIZE_MODES))).clamp(0, 1)


def _noise(img: torch.Tensor, p: DegradationParams, rng: np.random.Generator) -> torch.Tensor:
    gray = rng.random() < p.gray_noise_prob
    arr = img.numpy()
    if rng.random() < p.gaussian_noise_prob:
        sigma = rng.uniform(*p.noise_sigma) / 255.0
        shape = (1, 1, *arr.shape[2:]) if gray else arr.shape
        noise = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    else:
        scale = rng.uniform(*p.poisson_scale)
        base = arr.mean(axis=1, keepdims=True) if gray else arr
        levels = 2.0 ** math.ceil(math.log2(max(len(np.unique(np.round(base * 255))), 2)))
        noise = ((rng.poisson(np.clip(base, 0, 1) * levels) / levels - base) * scale).astype(np.float32)
    return torch.from_numpy(np.clip(arr + noise, 0.0, 1.0).astype(np.float32))


def _jpeg(img: torch.Tensor, rng: np.random.Generator, quality: tuple[int, int]) -> torch.Tensor:
    q = int(rng.integers(quality[0], quality[1] + 1))
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as decoded:
        arr = np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _resize_to(img: torch.Tensor, hw: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    return _interp(img, hw, str(rng.choice(_RESIZE_MODES))).clamp(0, 1)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    arr = img[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return np.ascontiguousarray((arr * 255.0 + 0.5).astype(np.uint8))
