"""`osr-sdk bench`: the latency of a bundle's whole 360° job, stage by stage, per batch size.

For each batch size the bundle is loaded once (`Upscaler`, the given providers) and measured three
ways, each after `warmup` calls and as the median of `repeats`:

1. tiles: one batch of random patch-size tiles through encoder → UNet → decoder
   (`Session.run` with `seconds=`), giving the milliseconds per tile of each graph;
2. the job, stage by stage: `Upscaler.upscale_with_report(profile=True)` on a 2:1 LQ ERP file
   (read → ERP→tangent → encoder → UNet → decoder → merge → write; on a GPU also the host↔device
   transfers), summed over the job's batches;
3. the job as a user runs it: `Upscaler.upscale(path, output=...)`, end to end.

Colour fix runs inside the decoder graph: it is part of the decoder's time. On a CUDA provider the
graphs run with device-resident inputs and outputs (IO binding) and each ONNX Runtime run is
synchronous, so a graph's time is its device time plus launch overhead; the sampling and merge
kernels are timed up to `synchronize`. Peak host memory is the process's maximum resident set
(getrusage); peak device memory is the GPU's used memory polled through NVML (the driver's
library, through ctypes) minus what was in use before, when NVML is present.

Results: a table on screen, JSON in the output folder (top-level `device`, `per_tile_ms` at the
best batch size, `erp_job_s`, and everything measured), and a PNG plot when matplotlib is
importable. No torch: this runs on the edge install.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata
import json
import os
import platform
import resource
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from osr_runtime import load_bundle
from osr_runtime.nvml import Nvml
from osr_runtime.session import ProviderSpec

from osr_sdk import sphere
from osr_sdk.errors import InputError, OsrError
from osr_sdk.upscaler import STAGES

__all__ = ["GRAPH_STAGES", "JOB_STAGES", "format_table", "run_bench", "write_plot"]

#: the graphs of a split bundle, in order (colour fix is inside the decoder)
GRAPH_STAGES = ("encoder", "unet", "decoder")
#: the stages of a whole 360° job (`Upscaler` profiled), in order; "transfer" (host↔device copies) is 0 on the CPU
JOB_STAGES = tuple(stage for stage in STAGES if stage != "planar_tiles")
DEFAULT_OUT_DIR = Path("benchmarks") / "results"


# ---------------------------------------------------------------------------------------------
# NVML (the NVIDIA driver's management library), through ctypes: GPU name, driver, memory


class _MemoryPeak:
    """Polls the GPU's used memory in a thread; `peak()` is the maximum since the last `reset()`."""

    def __init__(self, nvml: Nvml, period_s: float = 0.005) -> None:
        self._nvml, self._period = nvml, period_s
        self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if nvml.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _used(self) -> int:
        memory = self._nvml.memory()
        return 0 if memory is None else memory["used"]

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._used())
            time.sleep(self._period)

    def reset(self) -> int:
        """Restart the peak from the memory in use now, and return that."""
        self._max = self._used()
        return self._max

    def peak(self) -> int | None:
        if self._thread is None:
            return None
        return max(self._max, self._used())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ---------------------------------------------------------------------------------------------
# machine and versions


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jetson_model() -> str | None:
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00 \n") or None
    except OSError:
        return None


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (None when absent)."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _versions() -> dict[str, str | None]:
    import onnxruntime as ort

    found = versions("osr-sdk", "numpy", "onnxruntime", "onnxruntime-gpu", "pillow", "tensorrt")
    found["onnxruntime_module"] = ort.__version__
    return found


def machine_info(gpu: dict[str, Any] | None) -> dict[str, Any]:
    """Host, CPU, cores, OS, Python, Jetson board (if any) and the given GPU description."""
    return {
        "host": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "board": _jetson_model(),
        "gpu": gpu,
    }


def _peak_rss_mib() -> float:
    """The process's peak resident set in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


# ---------------------------------------------------------------------------------------------
# measurement


def _median_dicts(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def _repeat(fn: Callable[[], Any], repeats: int, warmup: int) -> list[Any]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


def _make_input(source: Path | None, lq_height: int, folder: Path) -> Path:
    """A 2:1 LQ ERP JPEG of height `lq_height` (the given image or the shipped sample, resized)."""
    from osr_sdk.cli import SAMPLE_ERP

    with PIL.Image.open(source or SAMPLE_ERP) as img:
        lq = img.convert("RGB").resize((2 * lq_height, lq_height), PIL.Image.BICUBIC)
    path = folder / f"lq_{2 * lq_height}x{lq_height}.jpg"
    lq.save(path, quality=95)
    return path


def _job_stages(upscaler: Any, lq_path: Path, out_path: Path) -> dict[str, float]:
    """One whole 360° job through `Upscaler`, profiled: the seconds of each of `JOB_STAGES` and their total."""
    _, report = upscaler.upscale_with_report(lq_path, projection="erp", output=out_path, overwrite=True,
                                             profile=True)
    stages = {stage: report.stage_seconds[stage] for stage in JOB_STAGES}
    return {**stages, "total": sum(stages.values())}


def _bench_batch(bundle: Any, providers: Sequence[ProviderSpec] | None, batch_size: int, lq_path: Path,
                 folder: Path, repeats: int, warmup: int, memory: _MemoryPeak,
                 log: Callable[[str], None]) -> dict[str, Any]:
    from osr_sdk.upscaler import Upscaler

    memory.reset()
    start = time.perf_counter()
    upscaler = Upscaler(bundle, providers=providers, batch_size=batch_size)
    session_s = time.perf_counter() - start
    size = upscaler.patch_size
    rng = np.random.default_rng(0)
    tiles = rng.random((batch_size, 3, size, size), dtype=np.float32)
    # 1. tiles through the graphs
    def tile_run() -> dict[str, float]:
        seconds: dict[str, float] = {}
        upscaler.session.run(tiles, seconds=seconds)  # one batch: the session's batch size is batch_size
        return seconds

    tile_runs = _repeat(tile_run, repeats, warmup)
    batch_ms = {k: v * 1e3 for k, v in _median_dicts(tile_runs).items()}
    per_tile = {k: v / batch_size for k, v in batch_ms.items()}
    per_tile["total"] = sum(per_tile[s] for s in GRAPH_STAGES)
    log(f"  batch {batch_size}: {per_tile['total']:.2f} ms per tile (graphs)")
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "providers_in_use": dict(upscaler.session.providers_in_use),
        "session_create_s": session_s,
        "tile_batch_ms": batch_ms,
        "per_tile_ms": per_tile,
        "tile_all_ms": [{k: v * 1e3 for k, v in r.items()} for r in tile_runs],
        "job_stages_s": None, "job_stages_all_s": None, "job_s": None, "job_error": None,
    }
    try:
        # 2. the job, stage by stage
        out_path = folder / "out_stages.jpg"
        stage_runs = _repeat(lambda: _job_stages(upscaler, lq_path, out_path), repeats, warmup)
        result.update(job_stages_s=_median_dicts(stage_runs), job_stages_all_s=stage_runs)
        # 3. the job end to end, as a user runs it
        job_path = folder / "out_job.jpg"

        def job() -> float:
            begin = time.perf_counter()
            upscaler.upscale(lq_path, output=job_path, overwrite=True)
            return time.perf_counter() - begin

        job_runs = _repeat(job, repeats, warmup)
        result["job_s"] = {"median": statistics.median(job_runs), "min": min(job_runs), "all": job_runs}
        log(f"  batch {batch_size}: whole job {statistics.median(job_runs):.3f} s")
    except OsrError as exc:  # e.g. non-finite model output: keep the tile figures, record why the job failed
        result["job_error"] = f"{type(exc).__name__}: {exc}"
        log(f"  batch {batch_size}: whole job FAILED: {result['job_error']}")
    peak = memory.peak()
    result["peak_host_rss_mib"] = round(_peak_rss_mib(), 1)
    result["peak_device_used_mib"] = None if peak is None else round(peak / 2**20, 1)
    return result


def run_bench(
    bundle: str | os.PathLike[str],
    *,
    providers: Sequence[ProviderSpec] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4),
    repeats: int = 5,
    warmup: int = 1,
    lq_height: int = 512,
    input_path: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    plot: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], Path, Path | None]:
    """Measure `bundle` (see the module docstring); returns (result, JSON path, PNG path or None)."""
    import onnxruntime as ort

    if repeats < 1 or warmup < 0:
        raise InputError(f"repeats must be ≥ 1 and warmup ≥ 0, got {repeats}, {warmup}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputError(f"batch sizes must be ≥ 1, got {list(batch_sizes)}")
    if lq_height < 1:
        raise InputError(f"lq_height must be ≥ 1, got {lq_height}")
    loaded = load_bundle(bundle)
    m = loaded.manifest
    nvml = Nvml(0)
    gpu = nvml.info()
    memory = _MemoryPeak(nvml)
    baseline = memory.reset() if nvml.available else None
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="osr-bench-") as tmp:
            folder = Path(tmp)
            lq_path = _make_input(Path(input_path) if input_path else None, lq_height, folder)
            log(f"bench {m.name} ({m.precision}, patch {m.patch_size}) on a {2 * lq_height}×{lq_height} ERP → "
                f"{2 * lq_height * m.scale}×{lq_height * m.scale}; batch sizes {list(batch_sizes)}, "
                f"{warmup} warm-up, {repeats} repeats")
            for b in batch_sizes:
                runs.append(_bench_batch(loaded, providers, int(b), lq_path, folder, repeats, warmup, memory, log))
                gc.collect()  # free this batch size's sessions before the next
    finally:
        memory.close()
        nvml.close()
    best = min(runs, key=lambda r: r["per_tile_ms"]["total"])
    out_hw = [lq_height * m.scale, 2 * lq_height * m.scale]
    layout = sphere.tangent_layout(*out_hw, patch_size=m.patch_size)
    for r in runs:
        if r["peak_device_used_mib"] is not None and baseline is not None:
            r["peak_device_mib_over_baseline"] = round(r["peak_device_used_mib"] - baseline / 2**20, 1)
    provider = best["providers_in_use"]["unet"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {
        "benchmark": "osr-sdk bench",
        "created_utc": stamp,
        "device": {
            "provider": provider,
            "kind": "gpu" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu",
            "gpu": gpu,
            "cpu": cpu_name(),
            "board": _jetson_model(),
        },
        "per_tile_ms": {**{s: best["per_tile_ms"][s] for s in (*GRAPH_STAGES, "total")},
                        "batch_size": best["batch_size"], "tile_hw": [m.patch_size, m.patch_size]},
        "erp_job_s": best["job_s"]["median"] if best["job_s"] else None,
        "erp_job": {"lq_hw": [lq_height, 2 * lq_height], "out_hw": out_hw, "tiles": len(layout),
                    "batch_size": best["batch_size"], "median_s": (best["job_s"] or {}).get("median"),
                    "min_s": (best["job_s"] or {}).get("min"), "stages_s": best["job_stages_s"],
                    "error": best["job_error"]},
        "machine": machine_info(gpu),
        "versions": _versions(),
        "onnxruntime_providers_available": ort.get_available_providers(),
        "settings": {
            "bundle": str(loaded.path), "name": m.name, "precision": m.precision, "patch_size": m.patch_size,
            "scale": m.scale, "color_fix": m.color_fix, "sources": dict(m.sources),
            "providers": None if providers is None else [p if isinstance(p, str) else [p[0], dict(p[1])]
                                                         for p in providers],
            "batch_sizes": [int(b) for b in batch_sizes], "repeats": repeats, "warmup": warmup,
            "lq_height": lq_height, "input": str(input_path) if input_path else "shipped sample ERP",
        },
        "notes": [
            "colour fix runs inside the decoder graph: it is included in the decoder's time",
            ("per_tile_ms: median over repeats of one batch of random tiles, divided by the batch size; "
             "best batch = lowest total"),
            ("graph times: wall clock of synchronous ONNX Runtime runs; on CUDA with device-resident "
             "inputs/outputs (IO binding), so device time plus launch overhead, transfers excluded"),
            ("job stages: the Upscaler's ERP path step by step (medians per stage); erp_job_s: "
             "Upscaler.upscale(path, output=path) end to end (median)"),
            ("peak_device_used_mib: GPU used memory polled by NVML every 5 ms (whole device); "
             "peak_host_rss_mib: process peak RSS so far (getrusage, monotone over batch sizes)"),
        ],
        "device_used_baseline_mib": None if baseline is None else round(baseline / 2**20, 1),
        "runs": runs,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace(" ", "_")
    base = out / f"bench-{_slug(m.name)}-{host}-{stamp}"
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png_path = write_plot(result, base.with_suffix(".png")) if plot else None
    return result, json_path, png_path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "bundle"


# ---------------------------------------------------------------------------------------------
# reporting


def format_table(result: dict[str, Any]) -> str:
    """The on-screen table: per-tile graph times and job stages for every batch size."""
    runs = result["runs"]
    head = f"{'':22s}" + "".join(f"{'batch ' + str(r['batch_size']):>12s}" for r in runs)
    lines = [f"{result['settings']['name']} ({result['settings']['precision']}) on {result['device']['provider']}"
             + (f", {result['device']['gpu']['name']}" if result["device"]["gpu"] else ""), head,
             "per tile (ms)"]
    for stage in (*GRAPH_STAGES, "total"):
        label = "decoder (+colour fix)" if stage == "decoder" else stage
        lines.append(f"  {label:20s}" + "".join(f"{r['per_tile_ms'][stage]:12.2f}" for r in runs))
    job = result["erp_job"]
    lines.append(f"job {job['lq_hw'][1]}×{job['lq_hw'][0]} → {job['out_hw'][1]}×{job['out_hw'][0]}, "
                 f"{job['tiles']} tiles (s)")
    for stage in (*JOB_STAGES, "total"):
        label = "decoder (+colour fix)" if stage == "decoder" else stage
        lines.append(f"  {label:20s}" + "".join(f"{r['job_stages_s'][stage]:12.3f}" if r["job_stages_s"]
                                                else f"{'failed':>12s}" for r in runs))
    lines.append(f"  {'upscale() end to end':20s}" + "".join(f"{r['job_s']['median']:12.3f}" if r["job_s"]
                                                             else f"{'failed':>12s}" for r in runs))
    lines.append(f"  {'peak host RSS (MiB)':20s}" + "".join(f"{r['peak_host_rss_mib']:12.0f}" for r in runs))
    if any(r["peak_device_used_mib"] is not None for r in runs):
        lines.append(f"  {'peak GPU used (MiB)':20s}"
                     + "".join(f"{r['peak_device_used_mib'] or 0:12.0f}" for r in runs))
    job_text = (f"{result['erp_job_s']:.3f} s" if result["erp_job_s"] is not None
                else f"failed ({result['erp_job']['error']})")
    lines.append(f"best: batch {result['per_tile_ms']['batch_size']}: {result['per_tile_ms']['total']:.2f} ms "
                 f"per tile, whole job {job_text}")
    return "\n".join(lines)


def write_plot(result: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Per-stage latency as stacked bars (per tile; whole job) per batch size; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = result["runs"]
    labels = [f"batch {r['batch_size']}" for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    bottom = np.zeros(len(runs))
    for stage in GRAPH_STAGES:
        values = np.array([r["per_tile_ms"][stage] for r in runs])
        ax1.bar(labels, values, bottom=bottom, label="decoder (+colour fix)" if stage == "decoder" else stage)
        bottom += values
    ax1.set_ylabel("ms per tile")
    ax1.set_title(f"graphs per {result['per_tile_ms']['tile_hw'][0]}² tile")
    ax1.legend()
    bottom = np.zeros(len(runs))
    for stage in JOB_STAGES:  # a failed job (see runs[i]["job_error"]) shows as an empty bar
        values = np.array([r["job_stages_s"][stage] if r["job_stages_s"] else 0.0 for r in runs])
        ax2.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    ax2.plot(labels, [r["job_s"]["median"] if r["job_s"] else np.nan for r in runs], "k^",
             label="upscale() end to end")
    job = result["erp_job"]
    ax2.set_ylabel("seconds")
    ax2.set_title(f"360° job {job['lq_hw'][1]}×{job['lq_hw'][0]} → {job['out_hw'][1]}×{job['out_hw'][0]}")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    gpu = result["device"]["gpu"]
    fig.suptitle(f"{result['settings']['name']} ({result['settings']['precision']}) on "
                 f"{result['device']['provider']}" + (f", {gpu['name']}" if gpu else ""))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
