"""Training of the small one-step model (`osr_export.train`) and its export to a bundle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

from osr_export.train import (
    MODEL_SIZES,
    OneStepTrainModel,
    TrainConfig,
    alpha_bar,
    find_images,
    train,
)
from PIL import Image


def _write_images(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        yy, xx = np.mgrid[0:72, 0:88]
        img = np.stack([np.sin(xx / (3 + i)), np.cos(yy / 5), np.sin((xx + yy) / 7)], -1) * 100 + 128
        img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def test_alpha_bar_matches_sd21() -> None:
    assert abs(alpha_bar(273) - 0.635743) < 1e-6  # DESIGN.md §3


def test_find_images_excludes_evaluation_sets(tmp_path: Path) -> None:
    for rel in ("sr/Set14/a.png", "sr/BSD100/b.png", "sr/Kodak24/k.png", "sr/McMaster/m.png", "sr/Set5/s.png",
                "sr/T91/c.bmp", "erp/pannellum_examplepano.jpg",
                "erp/other.jpg", "sr/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images([tmp_path])]
    assert found == ["erp/other.jpg", "sr/T91/c.bmp"]


def test_train_resume_and_export(tmp_path: Path) -> None:
    from osr_export.pipeline import ExportOptions, export_bundle

    data = _write_images(tmp_path / "data")
    config = TrainConfig(data=(str(data),), out=str(tmp_path / "run"), size="tiny", crop=32, batch_size=2,
                         max_steps=3, warmup_steps=1, workers=0, log_every=1, checkpoint_every=2, device="cpu")
    first = train(config)
    assert first.step == 3 and first.finished
    log = tmp_path / "run" / "log.jsonl"
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert [e["step"] for e in lines] == [1, 2, 3]
    assert all(np.isfinite(e["loss"]) and {"l1", "ssim", "latent", "recon", "kl", "lr"} <= set(e) for e in lines)

    # resume: the step count and the log continue
    second = train(replace(config, max_steps=5))
    assert second.step == 5 and second.finished
    assert [json.loads(s)["step"] for s in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    # a time limit of 0 stops at once, keeping the checkpoint's step
    assert train(replace(config, max_steps=9, time_limit_s=0.0)).step == 5

    model = second.model_dir
    assert {p.name for p in model.iterdir()} >= {"unet", "vae", "scheduler", "prompt_embedding.safetensors"}
    result = export_bundle(model, None, tmp_path / "bundle",
                           ExportOptions(prompt_embedding=model / "prompt_embedding.safetensors",
                                         validation_sizes=((1, 32, 32),), name="tiny-trained"))
    m = result.manifest
    assert m.timestep == 273 and abs(m.alpha_bar - alpha_bar(273)) < 1e-7 and m.name == "tiny-trained"
    assert m.sources["lora"] is None and m.sources["prompt_embedding"]["kind"] == "file"
    assert max(m.validation["fp32"]["max_rel_err"].values()) <= 1e-4


def test_train_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from osr_export.cli import main

    data = _write_images(tmp_path / "data", n=1)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--size", "tiny", "--crop", "32",
            "--batch-size", "1", "--max-steps", "2", "--workers", "0", "--log-every", "1", "--device", "cpu",
            "--w-ssim", "0", "--prompt", "zero"]
    assert main(args) == 0
    assert "step 2/2 finished" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["size"] == "tiny" and saved["prompt"] == "zero" and saved["w_ssim"] == 0.0
    assert saved["exclude"] == ["Set5", "Set14", "BSD100", "Kodak24", "McMaster", "pannellum_examplepano.jpg"]
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 1


def test_edge_size_fits_the_bundle_budget() -> None:
    model = OneStepTrainModel(MODEL_SIZES["edge"], 273)
    params = sum(p.numel() for p in model.parameters())
    assert params * 2 <= 18e6  # fp16 bytes, under the 20 MB bundle limit with room for the folded constants


def test_batch_repeats_resume_and_warm_start(tmp_path: Path) -> None:
    """With batch_repeats=2 a run resumed at an odd step logs the same losses as an uninterrupted
    one; `init` warm-starts from a model/ folder (the same weights, so the same first loss)."""
    from osr_export.errors import ExportError

    data = _write_images(tmp_path / "data")
    config = TrainConfig(data=(str(data),), out=str(tmp_path / "a"), size="tiny", crop=32, batch_size=2,
                         batch_repeats=2, max_steps=6, workers=0, log_every=1, device="cpu")
    whole = train(config)
    train(replace(config, out=str(tmp_path / "b"), max_steps=3))
    resumed = train(replace(config, out=str(tmp_path / "b")))
    assert whole.step == resumed.step == 6

    def losses(run: str) -> list[float]:
        return [json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]

    assert losses("a") == losses("b")
    assert len(set(losses("a"))) == 6  # the flips/rotations make the repeated batches differ
    # warm start: the saved weights give the loss the trained model had, not a fresh model's
    probe = replace(config, out=str(tmp_path / "c"), max_steps=1, batch_repeats=1, lr=1e-12)
    fresh = train(probe).last_losses["loss"]
    warm = train(replace(probe, out=str(tmp_path / "d"), init=str(tmp_path / "a" / "model"))).last_losses["loss"]
    assert warm != pytest.approx(fresh, rel=1e-3)
    with pytest.raises(ExportError, match="cannot warm-start"):
        train(replace(probe, out=str(tmp_path / "e"), init=str(tmp_path / "missing")))
