"""Shared fixtures. Export fixtures import torch lazily, so the edge install can collect tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def export_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base, lora): a tiny SD2.1-base-structured model in the diffusers layout, random weights,
    and OMGSR-S-style PEFT adapters (UNet r=32, VAE encoder r=16) in the released layout."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from osr_export.synthetic import write_base_model, write_omgsr_lora

    root = tmp_path_factory.mktemp("export_tiny")
    base = write_base_model(root / "base", "tiny", seed=0)
    lora = write_omgsr_lora(base, root / "lora", seed=1)
    return base, lora


@pytest.fixture(scope="session")
def export_fp32_bundle(export_tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny model exported once, fp32, AdaIN colour fix, prompt from the text encoder."""
    from osr_export.pipeline import ExportOptions, export_bundle

    base, lora = export_tiny_model
    out = tmp_path_factory.mktemp("export_fp32") / "bundle"
    stages: list[str] = []
    result = export_bundle(base, lora, out, ExportOptions(), progress=stages.append)
    result.stages = stages  # type: ignore[attr-defined]
    return result
