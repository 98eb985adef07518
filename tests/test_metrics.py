"""WS-PSNR and WS-SSIM against hand-computed cases (DESIGN.md §5)."""

import math

import numpy as np
import pytest

from osr_sdk.errors import InputError
from osr_sdk.metrics import psnr, row_weights, ssim, ws_psnr, ws_ssim


def _window_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook SSIM of one 11×11 window (Gaussian σ = 1.5) on a 0..255 scale."""
    k = np.arange(11) - 5
    g1 = np.exp(-(k**2) / (2 * 1.5**2))
    g = np.outer(g1, g1) / np.outer(g1, g1).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = (g * x).sum(), (g * y).sum()
    vx, vy = (g * (x - mx) ** 2).sum(), (g * (y - my) ** 2).sum()
    cxy = (g * (x - mx) * (y - my)).sum()
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_row_weights_hand_values():
    w = row_weights(4)
    expected = [math.cos(-3 * math.pi / 8), math.cos(-math.pi / 8), math.cos(math.pi / 8), math.cos(3 * math.pi / 8)]
    np.testing.assert_allclose(w, expected, rtol=1e-15)


def test_ws_psnr_constant_error():
    a = np.full((8, 16, 3), 100, np.uint8)
    b = a + np.uint8(5)
    assert ws_psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)


def test_ws_psnr_error_in_polar_row_counts_less():
    a = np.zeros((4, 8, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # error in the top row only
    w0, w1 = math.cos(3 * math.pi / 8), math.cos(math.pi / 8)
    wmse = 100 * w0 / (2 * w0 + 2 * w1)
    assert ws_psnr(a, b) == pytest.approx(10 * math.log10(255**2 / wmse), abs=1e-12)
    c = a.copy()
    c[1] = 10  # the same error nearer the equator costs more
    assert ws_psnr(a, c) < ws_psnr(a, b)


def test_ws_psnr_float_scale_and_identical():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 12, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (6, 12, 3)).astype(np.uint8)
    assert ws_psnr(a / 255.0, b / 255.0) == pytest.approx(ws_psnr(a, b), abs=1e-9)
    assert ws_psnr(a, a) == float("inf")


def test_ws_ssim_constant_images_closed_form():
    a = np.full((20, 40), 50, np.uint8)
    b = np.full((20, 40), 80, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 50 * 80 + c1) / (50**2 + 80**2 + c1)  # variances are 0: the C2 term is 1
    assert ws_ssim(a, b) == pytest.approx(expected, abs=1e-12)
    assert ws_ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ws_ssim_single_window_direct_formula():
    """An 11×11 image has one valid window: compare with the textbook weighted sums."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (11, 11, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    expected = np.mean([_window_ssim(a[..., ch], b[..., ch]) for ch in range(3)])
    assert ws_ssim(a, b, max_value=255) == pytest.approx(expected, abs=1e-10)


def test_ws_ssim_weights_rows_of_trimmed_height():
    """Structure damaged near the top costs less than the same damage at the equator."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (40, 80)).astype(np.uint8)
    top, mid = a.copy(), a.copy()
    top[5:10] = 0
    mid[18:23] = 0
    assert ws_ssim(a, top) > ws_ssim(a, mid)


@pytest.mark.parametrize(
    "a, b",
    [
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)),
        (np.zeros((4,), np.uint8), np.zeros((4,), np.uint8)),
        (np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8)),
        (np.full((12, 12), np.nan), np.zeros((12, 12))),
        (np.zeros((12, 12), np.uint16), np.zeros((12, 12), np.uint16)),
    ],
)
def test_bad_input_raises(a, b):
    with pytest.raises(InputError):
        ws_psnr(a, b)
    with pytest.raises(InputError):
        ws_ssim(a, b)


def test_ws_ssim_too_small():
    with pytest.raises(InputError, match="at least 11"):
        ws_ssim(np.zeros((8, 16), np.uint8), np.zeros((8, 16), np.uint8))


def test_plain_psnr_and_ssim_weight_rows_alike():
    a = np.zeros((4, 8, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # error in one of four rows: MSE = 100 / 4
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (14, 13)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 25, x.shape), 0, 255)
    windows = [_window_ssim(x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]) for i in range(4) for j in range(3)]
    assert ssim(x, y, max_value=255) == pytest.approx(np.mean(windows), abs=1e-10)
    assert ws_ssim(x, y, max_value=255) != pytest.approx(np.mean(windows), abs=1e-6)  # WS weights rows
