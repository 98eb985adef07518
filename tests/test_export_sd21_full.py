"""The real SD2.1-base configuration (865 M-parameter UNet), random weights, exported end to end.

Slow (minutes; ~20 GB of disk): run with ``-m slow``. Runs on a CUDA GPU when there is one (the
torch side of the export), and fits a 24 GiB CPU-only machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd21_full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from osr_export.synthetic import write_base_model, write_omgsr_lora

    root = tmp_path_factory.mktemp("sd21_full")
    base = write_base_model(root / "base", "full", seed=0)
    lora = write_omgsr_lora(base, root / "lora", seed=1)
    return base, lora


def test_full_unet_is_sd21_base_size() -> None:
    from diffusers import UNet2DConditionModel
    from osr_export.synthetic import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("full"))
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(865.9e6, rel=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_full_sd21_base(sd21_full: tuple[Path, Path], tmp_path: Path, precision: str) -> None:
    from osr_export.pipeline import ExportOptions, export_bundle
    from osr_runtime import load_bundle

    base, lora = sd21_full
    options = ExportOptions(precision=precision, validation_sizes=((1, 64, 64), (2, 48, 64)))  # type: ignore[arg-type]
    result = export_bundle(base, lora, tmp_path / "bundle", options)
    m = load_bundle(result.bundle.path).manifest
    v = m.validation
    print(precision, dict(result.seconds), v)
    assert all(e <= 1e-5 for e in v["folds"].values())
    assert max(v["fp32"]["max_rel_err"].values()) <= 1e-4
    unet_files = {f.path: f.size for f in m.files if f.path.startswith("unet")}
    if precision == "fp32":  # 3.5 GB of weights: external data beside the graph
        assert m.graphs["unet"].external_data == ("unet.onnx.data",)
        assert unet_files["unet.onnx.data"] > 3.0e9 and unet_files["unet.onnx"] < 2**31
    else:
        assert m.graphs["unet"].external_data == ()
        assert 1.6e9 < unet_files["unet.onnx"] < 2**31
        assert v["fp16"]["min_psnr_db"] >= 45.0
