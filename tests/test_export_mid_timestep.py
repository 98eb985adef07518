"""The degradation function and the mid-timestep (SNR matching) tool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from osr_export import cli
from osr_export.degradation import degrade
from osr_export.errors import ExportError
from osr_export.mid_timestep import compute_mid_timestep, snr_match


def _image(h: int = 128, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(xx / 5.0), np.cos(yy / 7.0), np.sin((xx + yy) / 3.0)], -1) * 100 + 128
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def test_degrade_shape_dtype_and_determinism() -> None:
    hq = _image()
    lq = degrade(hq, seed=1)
    assert lq.shape == (32, 24, 3) and lq.dtype == np.uint8
    assert np.array_equal(lq, degrade(hq, seed=1))
    assert not np.array_equal(lq, degrade(hq, seed=2))
    assert degrade(hq, seed=1, scale=2).shape == (64, 48, 3)
    assert degrade(hq[:13, :9], seed=0).shape == (3, 2, 3)


def test_degrade_degrades() -> None:
    """Against a clean area downscale, the LQ images are blurred/noisy/compressed: lower PSNR."""
    hq = _image(256, 256)
    clean = hq.reshape(64, 4, 64, 4, 3).mean((1, 3))
    errs = [np.abs(degrade(hq, seed=s).astype(np.float64) - clean).mean() for s in range(8)]
    assert min(errs) > 1.0


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8, 4), np.uint8), [[0]]])
def test_degrade_refuses_bad_input(bad: object) -> None:
    with pytest.raises(ExportError, match="uint8 H×W×3"):
        degrade(bad, seed=0)  # type: ignore[arg-type]


def test_snr_match_finds_the_matching_timestep() -> None:
    alphas = np.linspace(0.999, 0.001, 1000)
    signal, noise = np.array([2.0, 3.0]), np.array([2.0, 3.0])
    t = 400
    lq_snr = np.full(2, alphas[t] / (1 - alphas[t]))
    best, cost = snr_match(alphas, signal, noise, lq_snr)
    assert best == t and cost.shape == (1000,) and cost[t] == pytest.approx(0.0, abs=1e-9)


def test_mid_timestep_cli(export_tiny_model: tuple[Path, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    base, _ = export_tiny_model
    hq = tmp_path / "hq"
    hq.mkdir()
    for i in range(2):
        Image.fromarray(_image(96, 80, seed=i)).save(hq / f"{i}.png")
    (hq / "notes.txt").write_text("not an image")
    out = tmp_path / "t.json"
    assert cli.main(["mid-timestep", "--hq", str(hq), "--base", str(base), "--json", str(out)]) == 0
    assert "t* = " in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert 0 <= data["timestep"] < 1000 and len(data["cost"]) == 1000
    assert data["images"] == ["0.png", "1.png"] and len(data["lq_snr"]) == 2
    assert data["timestep"] == int(np.argmin(data["cost"]))
    again = compute_mid_timestep(hq, base)
    assert again.timestep == data["timestep"]  # seeded


def test_mid_timestep_errors(export_tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = export_tiny_model
    with pytest.raises(ExportError, match="does not exist"):
        compute_mid_timestep(tmp_path / "nope", base)
    with pytest.raises(ExportError, match="holds no images"):
        compute_mid_timestep(tmp_path, base)
