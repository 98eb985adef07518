"""The embedded default model (`sdk/osr_sdk/models/default`) and the README's first command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import osr_sdk
from osr_runtime import load_bundle
from osr_sdk import imageio
from osr_sdk.cli import DEMO_CROP_PX, DEMO_CROPS, main
from osr_sdk.tiling import bicubic_upscale
from osr_sdk.upscaler import default_model_path

SAMPLE = Path(osr_sdk.__file__).resolve().parent / "data" / "sample_erp.jpg"


def _sample() -> np.ndarray:
    return np.asarray(PIL.Image.open(SAMPLE).convert("RGB"))


def _laplacian_std(image: np.ndarray) -> float:
    x = image.astype(np.float32).mean(-1)
    return float((4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]).std())


def test_default_bundle_is_complete_small_and_documented() -> None:
    bundle = load_bundle(default_model_path())  # checks every file's sha256 and the graphs' I/O
    m = bundle.manifest
    assert (m.name, m.scale, m.patch_size, m.precision, m.color_fix) == ("osr-edge-default", 4, 512, "fp16", "wavelet")
    assert sum(f.size for f in m.files) <= 20 * 10**6
    card = (default_model_path().parent / "MODEL_CARD.md").read_text()
    for needle in ("8.53 M", "pannellum_examplepano.jpg", "WS-PSNR", "t* = 273"):
        assert needle in card
    assert _sample().shape == (512, 1024, 3)  # the shipped LQ sample


@pytest.mark.parametrize("name, y, x", [("sky", 20, 440), ("trees", 180, 380), ("rock", 330, 250)])
def test_default_model_denoises_and_stays_faithful(name: str, y: int, x: int) -> None:
    """On 128² crops of the (degraded) sample: the ×4 result, box-downscaled, stays close to the LQ
    (no invented content, no colour shift), and on the flat, noisy sky it carries much less
    high-frequency noise than bicubic (a model that only interpolated would not)."""
    crop = np.ascontiguousarray(_sample()[y:y + 128, x:x + 128])
    sr = osr_sdk.upscale(crop, projection="planar", providers=["cpu"])
    assert sr.shape == (512, 512, 3) and sr.dtype == np.uint8
    down = sr.reshape(128, 4, 128, 4, 3).astype(np.float64).mean((1, 3))
    consistency_db = 10 * np.log10(255**2 / np.mean((down - crop) ** 2))
    assert consistency_db > 24.0, consistency_db  # measured 27.4-31.8 dB
    if name == "sky":
        ratio = _laplacian_std(sr) / _laplacian_std(bicubic_upscale(crop, 4))
        assert ratio < 0.75, ratio  # measured 0.54


def test_demo_writes_result_and_comparison_and_never_overwrites(tmp_path: Path) -> None:
    """`osr-sdk demo` (the README's first command): the 360° job on the shipped sample."""
    out = tmp_path / "out"
    assert main(["demo", "-o", str(out), "-q", "--providers", "cpu"]) == 0
    result, compare = out / "sample_erp_x4.png", out / "sample_erp_compare.jpg"
    img = imageio.read_image(result)
    assert (img.width, img.height) == (4096, 2048)
    sheet = imageio.read_image(compare)
    assert (sheet.width, sheet.height) == (2 * DEMO_CROP_PX + 4, len(DEMO_CROPS) * (DEMO_CROP_PX + 4) - 4)
    # the seam at ±180°: the first and last columns differ no more than neighbouring interior columns
    px = img.pixels
    seam = np.abs(px[:, 0] - px[:, -1]).mean()
    interior = np.abs(px[:, 2047] - px[:, 2048]).mean()
    assert seam < 1.5 * interior + 1e-3, (seam, interior)
    before = result.stat().st_mtime_ns, compare.stat().st_mtime_ns
    assert main(["demo", "-o", str(out), "-q"]) == 2  # exists: refused before any work
    assert (result.stat().st_mtime_ns, compare.stat().st_mtime_ns) == before
