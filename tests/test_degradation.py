"""The Real-ESRGAN second-order degradation (`osr_export.degradation`)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")

from osr_export.degradation import (
    DEFAULT_CONFIG,
    KERNEL_FAMILIES,
    DegradationConfig,
    Kernel,
    PassConfig,
    degrade,
    degrade_erp,
    sample_kernel,
    sample_sinc_kernel,
)
from osr_export.errors import ExportError


def _image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(xx / 4.0), np.cos(yy / 6.0), np.sin((xx + yy) / 3.0)], -1) * 100 + 128
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_defaults_are_real_esrgan() -> None:
    c = DEFAULT_CONFIG
    assert c.first.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and c.first.sinc_prob == 0.1
    assert c.first.blur_sigma == (0.2, 3.0) and c.second.blur_sigma == (0.2, 1.5) and c.second.blur_prob == 0.8
    assert c.first.resize_prob == (0.2, 0.7, 0.1) and c.second.resize_prob == (0.3, 0.4, 0.3)
    assert c.first.noise_sigma == (1.0, 30.0) and c.second.poisson_scale == (0.05, 2.5)
    assert c.final_sinc_prob == 0.8 and c.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
    with pytest.raises(AttributeError):
        c.final_sinc_prob = 0.5  # type: ignore[misc]  # frozen


def test_determinism_and_sizes() -> None:
    hq = _image()
    lq = degrade(hq, seed=3)
    assert lq.shape == (24, 32, 3) and lq.dtype == np.uint8
    assert np.array_equal(lq, degrade(hq, seed=3))
    assert not np.array_equal(lq, degrade(hq, seed=4))
    assert degrade(hq, seed=3, scale=2).shape == (48, 64, 3)
    assert degrade(hq[:13, :9].copy(), seed=0).shape == (3, 2, 3)  # tiny inputs (a 21-tap kernel)
    assert degrade(hq[:, ::-1], seed=1).shape == (24, 32, 3)  # non-contiguous views


@pytest.mark.parametrize("family", [*KERNEL_FAMILIES, "sinc"])
def test_kernel_families_normalised_and_shaped(family: str) -> None:
    k = Kernel(family, 13, 21, sigma=(2.0, 0.8), theta=0.4, beta=1.7, omega=math.pi / 2)
    plain = k.render()
    assert plain.shape == (21, 21) and plain.dtype == np.float32
    assert abs(float(plain.sum()) - 1.0) < 1e-5
    assert np.all(plain[:, :4] == 0) and np.all(plain[:4] == 0)  # support 13 zero-padded to 21
    iso = family in ("iso", "generalized_iso", "plateau_iso", "sinc")
    kk = Kernel(family, 21, 21, sigma=(2.0, 2.0) if iso else (2.0, 0.8), theta=0.0 if iso else 0.4,
                beta=1.7, omega=math.pi / 2).render()
    assert np.allclose(kk, kk[::-1, ::-1], atol=1e-7)  # point symmetric
    if iso:
        assert np.allclose(kk, kk.T, atol=1e-7)
    else:
        assert not np.allclose(kk, kk.T, atol=1e-4)
    wide = k.render(x_stretch=2.5)
    assert wide.shape == (21, 51) and abs(float(wide.sum()) - 1.0) < 1e-5


def test_sinc_rings_and_sampling_is_seeded() -> None:
    k = sample_sinc_kernel(np.random.default_rng(0), 21, 21, (math.pi / 5, math.pi / 5)).render()
    assert k.min() < 0  # ringing: negative lobes
    p = PassConfig()
    draws = [sample_kernel(np.random.default_rng(s), p) for s in range(300)]
    assert draws[:5] == [sample_kernel(np.random.default_rng(s), p) for s in range(5)]
    families = {d.family for d in draws}
    assert families == {*KERNEL_FAMILIES, "sinc"}
    assert all(7 <= d.support <= 21 and d.support % 2 and d.size == 21 for d in draws)
    assert all(0.2 <= s <= 3.0 for d in draws if d.family != "sinc" for s in d.sigma)


def _only(stage: str) -> DegradationConfig:
    """A config that keeps one kind of degradation and switches the others off (JPEG at 100)."""
    off = PassConfig(blur_prob=0.0, resize_prob=(0.0, 0.0, 1.0), gaussian_noise_prob=1.0, noise_sigma=(0.0, 0.0),
                     jpeg_quality=(100, 100))
    if stage == "gaussian":
        first = replace(off, noise_sigma=(20.0, 20.0))
    elif stage == "poisson":
        first = replace(off, gaussian_noise_prob=0.0, poisson_scale=(3.0, 3.0))
    elif stage == "jpeg":
        first = replace(off, jpeg_quality=(10, 10))
    elif stage == "blur":
        first = replace(off, blur_prob=1.0, blur_sigma=(3.0, 3.0))
    else:
        first = off
    return DegradationConfig(first=first, second=off, final_sinc_prob=0.0, final_jpeg_quality=(100, 100))


@pytest.mark.parametrize("stage", ["gaussian", "poisson", "jpeg", "blur"])
def test_each_stage_changes_the_image(stage: str) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    hq = np.clip(np.stack([np.sin(xx / 9.0), np.cos(yy / 11.0), np.sin((xx + yy) / 13.0)], -1) * 60 + 128, 0, 255)
    hq = hq.astype(np.uint8)
    clean = degrade(hq, seed=0, scale=1, config=_only("none")).astype(np.float64)
    assert np.abs(clean - hq).mean() < 1.5  # everything off: nearly the identity (JPEG at 100, 4:2:0)
    busy = _image(64, 64)
    clean = degrade(busy, seed=0, scale=1, config=_only("none")).astype(np.float64)
    out = degrade(busy, seed=0, scale=1, config=_only(stage)).astype(np.float64)
    assert np.abs(out - clean).mean() > 2.0


def test_gray_noise_is_the_same_in_every_channel() -> None:
    gray = replace(_only("gaussian").first, gray_noise_prob=1.0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    out = degrade(flat, seed=0, scale=1, config=replace(_only("none"), first=gray)).astype(int)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2 and out[..., 0].std() > 5


def test_defaults_degrade() -> None:
    hq = _image(128, 128)
    clean = hq.reshape(32, 4, 32, 4, 3).mean((1, 3))
    errs = [np.abs(degrade(hq, seed=s).astype(np.float64) - clean).mean() for s in range(6)]
    assert min(errs) > 1.0


def test_degrade_erp() -> None:
    erp = _image(64, 128)
    lq = degrade_erp(erp, seed=5)
    assert lq.shape == (16, 32, 3) and np.array_equal(lq, degrade_erp(erp, seed=5))
    with pytest.raises(ExportError, match="2:1"):
        degrade_erp(_image(64, 100), seed=0)
    # blur only: on the equator row band it matches the planar blur; toward the poles it is wider
    blur = _only("blur")
    flat = degrade(erp, seed=1, scale=1, config=blur).astype(np.float64)
    sphere = degrade_erp(erp, seed=1, scale=1, config=blur, bands=64).astype(np.float64)
    rows = slice(28, 36)
    cols = slice(20, 108)  # away from the ±180° seam, where the ERP wraps and the planar reflects
    assert np.abs(sphere[rows, cols] - flat[rows, cols]).mean() < 1.0
    assert np.abs(sphere[2:8] - flat[2:8]).mean() > 2.0
    # the seam: a wrapped ERP gives the same result as the unwrapped one, rolled
    rolled = degrade_erp(np.roll(erp, 32, axis=1), seed=1, scale=1, config=blur, bands=64).astype(np.float64)
    assert np.abs(np.roll(sphere, 32, axis=1) - rolled).mean() < 0.5  # (rounding, then JPEG at 100)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), [[0]]])
def test_refuses_bad_input(bad: object) -> None:
    with pytest.raises(ExportError, match="uint8 H×W×3"):
        degrade(bad, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="uint8 H×W×3"):
        degrade_erp(bad, seed=0)  # type: ignore[arg-type]
