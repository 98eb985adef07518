"""Pick the one-step mid-timestep t* by OMGSR's SNR matching (DESIGN.md §3).

For every HQ image x_H: degrade it (`osr_export.degradation.degrade`), bring the LQ back to the HQ
size (bicubic), and encode both with the base VAE (posterior mean × scaling): z_H, z_L. The LQ
latent is z_H plus a degradation "noise", with

    SNR_L = ‖z_H‖² / ‖z_L − z_H‖²,

and the noisy HQ latent at t, z_t = √ᾱ_t·z_H + √(1−ᾱ_t)·ε (ε a seeded Gaussian sample), has

    SNR_H(t) = ᾱ_t·‖z_H‖² / ((1−ᾱ_t)·‖ε‖²).

t* minimises the mean over images of |SNR_H(t) − SNR_L|.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from osr_export.degradation import degrade
from osr_export.errors import ExportError
from osr_export.loading import Sources, load_schedule, load_vae

__all__ = ["IMAGE_SUFFIXES", "MidTimestepResult", "compute_mid_timestep", "snr_match"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class MidTimestepResult:
    """t*, its ᾱ, the per-image LQ SNRs and the matching cost of every timestep."""

    timestep: int
    alpha_bar: float
    images: tuple[str, ...]
    lq_snr: tuple[float, ...]
    cost: tuple[float, ...]  # mean |SNR_H(t) − SNR_L| for t = 0 .. T−1

    def to_dict(self) -> dict[str, object]:
        return {"timestep": self.timestep, "alpha_bar": self.alpha_bar, "images": list(self.images),
                "lq_snr": list(self.lq_snr), "cost": list(self.cost)}


def snr_match(alphas_cumprod: np.ndarray, signal: np.ndarray, noise: np.ndarray,
              lq_snr: np.ndarray) -> tuple[int, np.ndarray]:
    """argmin_t mean_i |ᾱ_t·signal_i / ((1−ᾱ_t)·noise_i) − lq_snr_i| and the cost of every t."""
    ab = np.asarray(alphas_cumprod, np.float64)[:, None]
    snr_h = ab * signal[None, :] / ((1.0 - ab) * noise[None, :])
    cost = np.abs(snr_h - lq_snr[None, :]).mean(axis=1)
    return int(np.argmin(cost)), cost


def compute_mid_timestep(hq_dir: str | os.PathLike[str], base: str | os.PathLike[str], *, scale: int = 4,
                         seed: int = 0, crop: int = 512, max_images: int | None = None, device: str = "auto",
                         progress: Callable[[str], None] | None = None) -> MidTimestepResult:
    """t* for the base model at ``base`` from the HQ images in ``hq_dir`` (see the module doc).

    Each image is centre-cropped to at most ``crop`` pixels a side, a multiple of 8·``scale``.
    Image i is degraded with seed ``seed + i``.
    """
    hq_dir, base = Path(hq_dir), Path(base)
    if not hq_dir.is_dir():
        raise ExportError(f"HQ image folder {hq_dir} does not exist")
    paths = sorted(p for p in hq_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if max_images is not None:
        paths = paths[:max_images]
    if not paths:
        raise ExportError(f"{hq_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    multiple = 8 * scale
    if crop < multiple:
        raise ExportError(f"crop must be at least {multiple} for scale {scale}, got {crop}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    schedule = load_schedule(base)
    vae = load_vae(base, Sources(base)).to(dev)
    gen = torch.Generator().manual_seed(seed)
    signal, noise, lq_snr = [], [], []
    with torch.no_grad():
        for i, path in enumerate(paths):
            if progress is not None:
                progress(path.name)
            hq = _load_crop(path, crop, multiple)
            lq = degrade(hq, seed=seed + i, scale=scale)
            lq_up = np.asarray(Image.fromarray(lq).resize((hq.shape[1], hq.shape[0]), Image.Resampling.BICUBIC))
            z_h = _encode(vae, hq, dev)
            z_l = _encode(vae, lq_up, dev)
            eps = torch.randn(z_h.shape, generator=gen, dtype=torch.float64)
            s = float((z_h**2).sum())
            signal.append(s)
            noise.append(float((eps**2).sum()))
            lq_snr.append(s / max(float(((z_l - z_h) ** 2).sum()), 1e-12))
    t_star, cost = snr_match(np.array(schedule.alphas_cumprod), np.array(signal), np.array(noise),
                             np.array(lq_snr))
    return MidTimestepResult(timestep=t_star, alpha_bar=schedule.alpha_bar(t_star),
                             images=tuple(p.name for p in paths), lq_snr=tuple(lq_snr),
                             cost=tuple(float(c) for c in cost))


def _load_crop(path: Path, crop: int, multiple: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise ExportError(f"cannot read image {path}: {exc}") from exc
    h = min(crop, rgb.shape[0]) // multiple * multiple
    w = min(crop, rgb.shape[1]) // multiple * multiple
    if h == 0 or w == 0:
        raise ExportError(f"{path} ({rgb.shape[1]}×{rgb.shape[0]}) is smaller than {multiple} pixels")
    top, left = (rgb.shape[0] - h) // 2, (rgb.shape[1] - w) // 2
    return np.ascontiguousarray(rgb[top : top + h, left : left + w])


def _encode(vae: object, image: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.tensor(image).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1.0
    mean = vae.encode(x).latent_dist.mean  # type: ignore[attr-defined]
    return (mean * vae.config.scaling_factor).double().cpu()  # type: ignore[attr-defined]
