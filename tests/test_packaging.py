"""The edge install stays light: no torch on the SDK/runtime path, none in the core dependencies."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft", "onnx")


def test_core_dependencies_have_no_training_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]]
    assert not set(names) & set(HEAVY), names


def test_sdk_and_runtime_import_without_torch():
    code = (
        "import sys, osr_sdk, osr_sdk.upscaler, osr_sdk.cli, osr_sdk.sphere, osr_sdk.metrics, osr_runtime\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
