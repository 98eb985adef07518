"""A seeded second-order degradation (Real-ESRGAN): HQ image → LQ image ``scale``× smaller.

The pipeline of Real-ESRGAN (Wang et al. 2021, ``RealESRGANModel.feed_data`` with the options of
``train_realesrgan_x4plus.yml``); every range and probability is a documented default of
`DegradationConfig`. Each of two passes (`PassConfig` ``first`` then ``second``):

1. blur (always in the first pass, with probability 0.8 in the second) with a 21×21 kernel of
   odd support 7–21 (zero-padded to 21), drawn from (`KERNEL_FAMILIES`, probabilities 0.45 / 0.25
   / 0.12 / 0.03 / 0.12 / 0.03): isotropic Gaussian, anisotropic rotated Gaussian, generalized
   Gaussian (iso/aniso, shape β in [0.5, 4]), plateau (iso/aniso, β in [1, 2]), or, with
   probability 0.1 instead, a sinc (circular low-pass, "ringing") filter, cut-off ω in [π/3, π]
   (support < 13) or [π/5, π]; σ in [0.2, 3] (first pass) or [0.2, 1.5] (second);
2. resize up / down / keep (probabilities 0.2 / 0.7 / 0.1, then 0.3 / 0.4 / 0.3) by a factor in
   [0.15, 1.5] (of the current size) then [0.3, 1.2] (of the final LQ size), with area, bilinear
   or bicubic interpolation;
3. noise: Gaussian (σ in [1, 30] then [1, 25], of 255) or Poisson (scale in [0.05, 3] then
   [0.05, 2.5]) with probability 1/2 each, grey (the same in every channel) with probability 0.4;
4. JPEG at quality 30–95 (Pillow, 4:2:0).

Then, in a random order (1/2 each): [resize to ``(H // scale, W // scale)``, final sinc filter,
JPEG] or [JPEG, resize, final sinc filter]; the final sinc filter (ω in [π/3, π]) is applied with
probability 0.8, otherwise it is the identity. The result is rounded to uint8.

Every random choice comes from ``numpy.random.default_rng(seed)`` (no global state): the same
image, seed and config always give the same LQ image. `degrade` treats its input as a planar
image (a photo or a tangent-plane patch of a 360° image). `degrade_erp` is the 360° variant for
equirectangular images: the blur kernels are drawn exactly as in `degrade` but are applied on the
sphere (a kernel's horizontal axis is stretched by 1/cos(latitude) row band by row band, the
image wraps around at ±180° and continues across the poles), so an ERP degraded by it has about
the same angular blur at every latitude, as a tangent patch degraded by `degrade` has, instead of
a blur that shrinks in angle toward the poles (``max_stretch`` caps the widening near the
poles). Resize, noise and JPEG act on the stored pixels (as a camera or codec does on the ERP it
writes) and are the same as in `degrade`.

Needs numpy, Pillow and torch (convolutions, interpolation, ``torch.special.bessel_j1``).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from osr_export.errors import ExportError

__all__ = [
    "KERNEL_FAMILIES",
    "RESIZE_MODES",
    "DegradationConfig",
    "Kernel",
    "PassConfig",
    "degrade",
    "degrade_erp",
    "sample_kernel",
    "sample_sinc_kernel",
]

KernelFamily = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso",
                       "sinc"]
#: the blur kernel families drawn by `PassConfig.kernel_prob` (sinc is drawn by `PassConfig.sinc_prob`)
KERNEL_FAMILIES: tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                                    "plateau_aniso")
ResizeMode = Literal["area", "bilinear", "bicubic"]
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class PassConfig:
    """The ranges and probabilities of one degradation pass (defaults: Real-ESRGAN's first pass)."""

    blur_prob: float = 1.0
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # over KERNEL_FAMILIES
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape
    betap_range: tuple[float, float] = (1.0, 2.0)  # plateau shape
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # of 255
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


#: Real-ESRGAN's second pass
SECOND_PASS = PassConfig(blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_prob=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
                         noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))


@dataclass(frozen=True)
class DegradationConfig:
    """The whole second-order degradation (defaults: Real-ESRGAN x4plus)."""

    first: PassConfig = field(default_factory=PassConfig)
    second: PassConfig = SECOND_PASS
    kernel_sizes: tuple[int, ...] = tuple(range(7, 22, 2))  # odd supports; padded to the largest
    final_sinc_prob: float = 0.8
    final_jpeg_quality: tuple[int, int] = (30, 95)


DEFAULT_CONFIG = DegradationConfig()


# ---------------------------------------------------------------------------------------------
# kernels


@dataclass(frozen=True)
class Kernel:
    """A sampled blur kernel: its family and parameters, rendered on any grid by `render`.

    ``support`` is the odd size it was drawn with; ``size`` the size it is rendered at (the
    support zero-padded, as Real-ESRGAN pads every kernel to 21). ``sigma``, ``theta`` (radians)
    and ``beta`` describe the Gaussian-family kernels, ``omega`` (radians per pixel) the sinc.
    """

    family: str
    support: int
    size: int
    sigma: tuple[float, float] = (1.0, 1.0)
    theta: float = 0.0
    beta: float = 1.0
    omega: float = math.pi

    def render(self, x_stretch: float = 1.0) -> np.ndarray:
        """The normalised (sum 1) float32 kernel, ``size`` rows; with ``x_stretch`` > 1 the kernel
        is widened horizontally by that factor (the width grows to the next odd size)."""
        half_h = self.size // 2
        half_w = math.ceil(half_h * x_stretch - 1e-9)
        sup_h = self.support // 2
        sup_w = sup_h * x_stretch
        ys = np.arange(-half_h, half_h + 1, dtype=np.float64)
        xs = np.arange(-half_w, half_w + 1, dtype=np.float64)
        xx, yy = np.meshgrid(xs / x_stretch, ys)
        if self.family == "sinc":
            kernel = _sinc(self.omega, xx, yy)
        else:
            kernel = self._gaussian_family(xx, yy)
        inside = (np.abs(yy) <= sup_h + 1e-9) & (np.abs(xx * x_stretch) <= sup_w + 1e-9)
        kernel = np.where(inside, kernel, 0.0)
        return (kernel / kernel.sum()).astype(np.float32)

    def _gaussian_family(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.theta), math.sin(self.theta)
        rot = np.array([[c, -s], [s, c]])
        cov = rot @ np.diag([self.sigma[0] ** 2, self.sigma[1] ** 2]) @ rot.T
        inv = np.linalg.inv(cov)
        grid = np.stack([xx, yy], -1)
        q = np.einsum("...i,ij,...j->...", grid, inv, grid)  # d^T Σ^-1 d
        if self.family.startswith("generalized"):
            return np.exp(-0.5 * np.power(q, self.beta))
        if self.family.startswith("plateau"):
            return 1.0 / (np.power(q, self.beta) + 1.0)
        return np.exp(-0.5 * q)


def _sinc(omega: float, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Real-ESRGAN's circular low-pass kernel ω·J1(ω r)/(2π r), ω²/(4π) at r = 0."""
    r = np.hypot(xx, yy)
    j1 = torch.special.bessel_j1(torch.from_numpy(omega * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = omega * j1 / (2.0 * math.pi * r)
    return np.where(r < 1e-12, omega**2 / (4.0 * math.pi), kernel)


def sample_sinc_kernel(rng: np.random.Generator, support: int, size: int,
                       omega_range: tuple[float, float] | None = None) -> Kernel:
    """A sinc kernel; ω from ``omega_range`` or Real-ESRGAN's ([π/3, π] below 13 px, else [π/5, π])."""
    if omega_range is None:
        omega_range = (math.pi / 3, math.pi) if support < 13 else (math.pi / 5, math.pi)
    return Kernel("sinc", support, size, omega=float(rng.uniform(*omega_range)))


def sample_kernel(rng: np.random.Generator, p: PassConfig, sizes: tuple[int, ...] = DEFAULT_CONFIG.kernel_sizes
                  ) -> Kernel:
    """One blur kernel of a pass, drawn as Real-ESRGAN's ``RealESRGANDataset`` draws it."""
    size = max(sizes)
    support = int(rng.choice(sizes))
    if rng.random() < p.sinc_prob:
        return sample_sinc_kernel(rng, support, size)
    family = KERNEL_FAMILIES[int(rng.choice(len(KERNEL_FAMILIES), p=_normalised(p.kernel_prob)))]
    sx = float(rng.uniform(*p.blur_sigma))
    if family.endswith("aniso"):
        sy = float(rng.uniform(*p.blur_sigma))
        theta = float(rng.uniform(-math.pi, math.pi))
    else:
        sy, theta = sx, 0.0
    beta = 1.0
    if family.startswith(("generalized", "plateau")):
        lo, hi = p.betag_range if family.startswith("generalized") else p.betap_range
        beta = float(rng.uniform(lo, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, hi))
    return Kernel(family, support, size, (sx, sy), theta, beta)


def _normalised(prob: tuple[float, ...]) -> list[float]:
    total = float(sum(prob))
    return [float(x) / total for x in prob]


# ---------------------------------------------------------------------------------------------
# the pipeline


def _check(hq: object, scale: int) -> None:
    if not isinstance(hq, np.ndarray) or hq.dtype != np.uint8 or hq.ndim != 3 or hq.shape[2] != 3:
        got = f"{hq.dtype} {hq.shape}" if isinstance(hq, np.ndarray) else type(hq).__name__
        raise ExportError(f"degrade() needs a uint8 H×W×3 array, got {got}")
    if scale < 1 or hq.shape[0] < scale or hq.shape[1] < scale:
        raise ExportError(f"cannot degrade a {hq.shape[1]}×{hq.shape[0]} image by ×{scale}")


def degrade(hq: np.ndarray, seed: int, scale: int = 4, config: DegradationConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Degrade ``hq`` (uint8, H×W×3; a planar image or a tangent patch) into an LQ image
    (uint8, (H//scale)×(W//scale)×3) with Real-ESRGAN's second-order pipeline, seeded by ``seed``."""
    _check(hq, scale)
    return _run(hq, np.random.default_rng(seed), scale, config, _blur_planar)


def degrade_erp(hq_erp: np.ndarray, seed: int, scale: int = 4, config: DegradationConfig = DEFAULT_CONFIG,
                *, bands: int = 32, max_stretch: float = 8.0) -> np.ndarray:
    """`degrade` for an equirectangular image (2:1, uint8 H×W×3): the same random draws, but each
    blur is applied on the sphere (kernel widened by 1/cos(lat), at most ``max_stretch``, in
    ``bands`` latitude bands; wrap at ±180°, continuation across the poles)."""
    _check(hq_erp, scale)
    if hq_erp.shape[1] != 2 * hq_erp.shape[0]:
        raise ExportError(f"degrade_erp() needs a 2:1 equirectangular image, got {hq_erp.shape[1]}×{hq_erp.shape[0]}")
    if bands < 1 or max_stretch < 1.0:
        raise ExportError(f"bands must be >= 1 and max_stretch >= 1, got {bands}, {max_stretch}")

    def blur(img: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        return _blur_erp(img, kernel, bands, max_stretch)

    return _run(hq_erp, np.random.default_rng(seed), scale, config, blur)


def _run(hq: np.ndarray, rng: np.random.Generator, scale: int, cfg: DegradationConfig,
         blur: Callable[[torch.Tensor, Kernel], torch.Tensor]) -> np.ndarray:
    h, w = hq.shape[:2]
    out_hw = (h // scale, w // scale)
    img = torch.from_numpy(hq.astype(np.float32)).permute(2, 0, 1)[None] / 255.0  # (1,3,H,W), a copy
    for i, p in enumerate((cfg.first, cfg.second)):
        # 1. blur
        if rng.random() < p.blur_prob:
            img = blur(img, sample_kernel(rng, p, cfg.kernel_sizes))
        # 2. random resize (the second pass relative to the final LQ size, as Real-ESRGAN does)
        kind = int(rng.choice(3, p=_normalised(p.resize_prob)))
        factor = [rng.uniform(1.0, p.resize_range[1]), rng.uniform(p.resize_range[0], 1.0), 1.0][kind]
        ref = img.shape[-2:] if i == 0 else out_hw
        hw = (max(1, int(ref[0] * factor)), max(1, int(ref[1] * factor)))
        img = _interp(img, hw, RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))])
        # 3. noise, 4. JPEG
        img = _noise(img, p, rng)
        img = _jpeg(img, rng, p.jpeg_quality)
    # final: resize to the LQ size + sinc filter, and JPEG, in a random order
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    if rng.random() < cfg.final_sinc_prob:
        sinc = sample_sinc_kernel(rng, int(rng.choice(cfg.kernel_sizes)), max(cfg.kernel_sizes),
                                  (math.pi / 3, math.pi))
    else:
        sinc = None
    jpeg_first = rng.random() >= 0.5
    if jpeg_first:
        img = _jpeg(img, rng, cfg.final_jpeg_quality)
    img = _interp(img, out_hw, mode)
    if sinc is not None:
        img = blur(img, sinc)
    if not jpeg_first:
        img = _jpeg(img, rng, cfg.final_jpeg_quality)
    return _to_uint8(img)


def _conv(padded: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    weight = torch.from_numpy(kernel)[None, None].repeat(padded.shape[1], 1, 1, 1)
    return F.conv2d(padded, weight, groups=padded.shape[1])


def _blur_planar(img: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    k = kernel.render()
    ph, pw = k.shape[0] // 2, k.shape[1] // 2
    mode = "reflect" if ph < img.shape[-2] and pw < img.shape[-1] else "replicate"
    return _conv(F.pad(img, (pw, pw, ph, ph), mode=mode), k).clamp(0.0, 1.0)


def _pole_pad(img: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad ``rows`` rows above and below an ERP: past a pole the sphere continues on the far
    side (rows mirrored, longitude turned by 180°). Rows beyond the image height repeat."""
    h, w = img.shape[-2:]
    rows_in = min(rows, h)
    top = torch.roll(img[..., :rows_in, :].flip(-2), w // 2, dims=-1)
    bottom = torch.roll(img[..., h - rows_in:, :].flip(-2), w // 2, dims=-1)
    out = torch.cat([top, img, bottom], dim=-2)
    if rows > rows_in:
        out = F.pad(out, (0, 0, rows - rows_in, rows - rows_in), mode="replicate")
    return out


def _blur_erp(img: torch.Tensor, kernel: Kernel, bands: int, max_stretch: float) -> torch.Tensor:
    h, w = img.shape[-2:]
    ph = kernel.size // 2
    padded = _pole_pad(img, ph)
    edges = np.linspace(0, h, min(bands, h) + 1).round().astype(int)
    out = torch.empty_like(img)
    for y0, y1 in itertools.pairwise(edges):
        if y1 <= y0:
            continue
        # the band's stretch at its row nearest the equator (the widest kernel is not needed)
        lat = [abs(math.pi / 2 - (y + 0.5) / h * math.pi) for y in (y0, y1 - 1)]
        stretch = min(max_stretch, 1.0 / max(math.cos(min(lat)), 1e-6))
        k = kernel.render(stretch)
        pw = k.shape[1] // 2
        band = padded[..., y0: y1 + 2 * ph, :]
        cols = torch.arange(-pw, w + pw) % w  # wrap at ±180° (any kernel width)
        band = band[..., cols]
        res = _conv(band, k)
        out[..., y0:y1, :] = res
    return out.clamp(0.0, 1.0)


def _interp(img: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(img.shape[-2:]) == tuple(hw):
        return img
    if mode == "area":
        return F.interpolate(img, size=hw, mode="area").clamp(0.0, 1.0)
    return F.interpolate(img, size=hw, mode=mode, align_corners=False).clamp(0.0, 1.0)


_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]


def _noise(img: torch.Tensor, p: PassConfig, rng: np.random.Generator) -> torch.Tensor:
    arr = img.numpy()
    if rng.random() < p.gaussian_noise_prob:
        sigma = rng.uniform(*p.noise_sigma) / 255.0
        gray = rng.random() < p.gray_noise_prob
        shape = (1, 1, *arr.shape[2:]) if gray else arr.shape
        noise = rng.normal(0.0, sigma, size=shape)
    else:
        scale = rng.uniform(*p.poisson_scale)
        gray = rng.random() < p.gray_noise_prob
        base = (arr * _GRAY).sum(axis=1, keepdims=True) if gray else arr
        base = np.clip(base, 0.0, 1.0)
        levels = 2.0 ** math.ceil(math.log2(max(len(np.unique(np.round(base * 255))), 2)))
        noise = (rng.poisson(base * levels) / levels - base) * scale
    return torch.from_numpy(np.clip(arr + noise, 0.0, 1.0).astype(np.float32))


def _jpeg(img: torch.Tensor, rng: np.random.Generator, quality: tuple[int, int]) -> torch.Tensor:
    q = int(rng.integers(quality[0], quality[1] + 1))
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as decoded:
        arr = np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    arr = img[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return np.ascontiguousarray((arr * 255.0 + 0.5).astype(np.uint8))

