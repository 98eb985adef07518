"""Shared helpers of the benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import datetime as _dt
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from osr_runtime.nvml import Nvml
from osr_sdk.bench import machine_info, versions  # noqa: F401  (versions: for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """The machine the benchmark ran on: CPU, cores, OS, Python, and GPU 0 (via NVML) when present."""
    with Nvml(0) as nvml:
        return machine_info(nvml.info())


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Wall-clock seconds of fn(): median, min and all repeats, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats, "all_s": times}


def write_result(prefix: str, payload: dict[str, Any]) -> Path:
    """Write payload as benchmarks/results/<prefix>-<host>-<UTC timestamp>.json; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    host = payload.get("machine", {}).get("host", "host").replace(" ", "_")
    path = RESULTS / f"{prefix}-{host}-{stamp}.json"
    payload = {"created_utc": stamp, **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
