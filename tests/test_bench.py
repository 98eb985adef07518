"""Latency tooling (issue 6): `osr-sdk bench`, `osr-export bundle --random-weights`, the baselines script.

One tiny random-weight bundle (32 px patches) is exported through the CLI and benchmarked on the CPU
at a tiny size; the GPU runs of the same commands are in benchmarks/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def random_tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`osr-export bundle --random-weights tiny` (the real export path), 32 px patches, fp32."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from osr_export.cli import main

    out = tmp_path_factory.mktemp("bench") / "bundle"
    assert main(["bundle", "--random-weights", "tiny", "--out", str(out), "--patch-size", "32", "--device", "cpu"]) == 0
    return out


def test_random_weights_export_records_its_source(random_tiny_bundle: Path) -> None:
    from osr_runtime import load_bundle

    m = load_bundle(random_tiny_bundle).manifest  # verifies hashes after the manifest rewrite
    assert m.sources["random_weights"] == "tiny"
    assert m.name == "random-tiny-fp32" and m.patch_size == 32
    assert not any(p.name.startswith(".osr-random-") for p in random_tiny_bundle.parent.iterdir())


def test_random_weights_excludes_base_and_lora(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from osr_export.cli import main

    assert main(["bundle", "--random-weights", "tiny", "--base", str(tmp_path), "--out", str(tmp_path / "b")]) == 1
    assert "--random-weights" in capsys.readouterr().err
    assert main(["bundle", "--out", str(tmp_path / "b")]) == 1
    assert "needs --base" in capsys.readouterr().err


def test_session_run_with_stage_times_matches_run(random_tiny_bundle: Path) -> None:
    from osr_runtime import Session

    session = Session(random_tiny_bundle, ["cpu"])
    lq = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    seconds: dict[str, float] = {}
    sr = session.run(lq, seconds=seconds)
    np.testing.assert_allclose(sr, session.run(lq), rtol=1e-5, atol=1e-6)
    assert set(seconds) == {"encoder", "unet", "decoder"} and all(s > 0 for s in seconds.values())


def test_bench_cli_writes_json_and_plot(random_tiny_bundle: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from osr_sdk.bench import GRAPH_STAGES, JOB_STAGES
    from osr_sdk.cli import main

    out = tmp_path / "results"
    code = main(["bench", str(random_tiny_bundle), "--providers", "cpu", "--batch-sizes", "1,2",
                 "--repeats", "1", "--warmup", "1", "--lq-height", "16", "--out-dir", str(out)])
    assert code == 0
    screen = capsys.readouterr().out
    assert "per tile (ms)" in screen and "decoder (+colour fix)" in screen
    (json_path,) = out.glob("bench-*.json")
    result = json.loads(json_path.read_text())
    assert {"device", "per_tile_ms", "erp_job_s", "machine", "versions", "settings", "runs"} <= set(result)
    assert result["device"]["provider"] == "CPUExecutionProvider" and result["device"]["kind"] == "cpu"
    tile = result["per_tile_ms"]
    assert tile["batch_size"] in (1, 2) and tile["total"] == pytest.approx(sum(tile[s] for s in GRAPH_STAGES))
    assert result["erp_job_s"] > 0
    assert result["erp_job"]["lq_hw"] == [16, 32] and result["erp_job"]["out_hw"] == [64, 128]
    assert [r["batch_size"] for r in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert set(JOB_STAGES) <= set(run["job_stages_s"]) and run["job_stages_s"]["transfer"] == 0
        assert run["peak_host_rss_mib"] > 0 and run["peak_device_used_mib"] is None
    assert any("colour fix" in note for note in result["notes"])
    pngs = list(out.glob("bench-*.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert pngs == []
    else:
        assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_keeps_tile_figures_when_the_job_fails(random_tiny_bundle: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A whole-job failure (as the H100 run's non-finite fp16 output) still writes the JSON with the
    tile figures and the error, and the CLI exits 1."""
    import osr_sdk.bench
    from osr_sdk.cli import main
    from osr_sdk.errors import InputError

    def failing_job(*_args: object) -> dict[str, float]:
        raise InputError("patches contains NaN or Inf values")

    monkeypatch.setattr(osr_sdk.bench, "_job_stages", failing_job)
    out = tmp_path / "results"
    code = main(["bench", str(random_tiny_bundle), "--providers", "cpu", "--batch-sizes", "1", "--repeats", "1",
                 "--warmup", "0", "--lq-height", "16", "--out-dir", str(out), "--no-plot"])
    assert code == 1
    assert "whole job failed" in capsys.readouterr().out
    result = json.loads(next(out.glob("bench-*.json")).read_text())
    assert result["per_tile_ms"]["total"] > 0 and result["erp_job_s"] is None
    assert result["erp_job"]["error"] == result["runs"][0]["job_error"] == "InputError: patches contains NaN or Inf values"


def test_bench_rejects_bad_arguments(random_tiny_bundle: Path, tmp_path: Path) -> None:
    from osr_sdk.bench import run_bench
    from osr_sdk.errors import InputError

    with pytest.raises(InputError, match="batch sizes"):
        run_bench(random_tiny_bundle, providers=["cpu"], batch_sizes=[0], out_dir=tmp_path)
    with pytest.raises(InputError, match="repeats"):
        run_bench(random_tiny_bundle, providers=["cpu"], repeats=0, out_dir=tmp_path)


def test_latency_baselines_tiny_cpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "latency_baselines.py"), "--size", "tiny", "--device", "cpu",
         "--repeats", "1", "--warmup", "1", "--batch-sizes", "1", "--tile", "32", "--lq-height", "16",
         "--no-compile", "--omnissr-steps", "1", "--out-dir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = tmp_path.glob("latency-baselines-*.json")
    result = json.loads(path.read_text())
    assert result["per_tile_ms"]["eager"]["total"] > 0
    assert result["compile"] == {"skipped": "--no-compile"}
    assert result["bicubic"]["erp"]["out_hw"] == [64, 128]
    extrapolation = result["omnissr_style"]["extrapolation"]
    assert extrapolation["steps"] == 200 and extrapolation["patches"] == 18
    assert "EXTRAPOLATED" in extrapolation["note"]
