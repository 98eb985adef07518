"""Peak host memory of whole 360° upscale jobs on the CPU EP (issue 4: the job streams patches).

Each job runs in a fresh subprocess; its peak resident set size is Linux's VmHWM. Jobs:
1024×512 → 4096×2048 and 2048×1024 → 8192×4096 (target ≤ 3 GB), from the shipped sample ERP.

Usage:  python benchmarks/memory.py [--model BUNDLE] [--jobs 512,1024]
Without --model, a tiny random-weight model of the SD2.1-base structure is exported with 512 px
patches (needs the [export] extra): memory then reflects the SDK's streaming, not a large model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions, write_result  # noqa: E402

# Peak RSS from VmHWM: unlike getrusage's ru_maxrss it is not inherited across exec from the parent.
JOB = r"""
import json, sys, time
import numpy as np, PIL.Image
import osr_sdk
from osr_sdk.cli import SAMPLE_ERP

def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

height = int(sys.argv[2])
lq = np.asarray(PIL.Image.open(SAMPLE_ERP).convert("RGB").resize((2 * height, height), PIL.Image.BICUBIC))
before = peak_mib()
up = osr_sdk.Upscaler(sys.argv[1], providers=["cpu"])
start = time.perf_counter()
out, report = up.upscale_with_report(lq)
print(json.dumps({"lq_hw": list(lq.shape[:2]), "out_hw": list(out.shape[:2]), "tiles": report.tiles,
                  "seconds": time.perf_counter() - start, "peak_rss_mib": peak_mib(),
                  "peak_rss_before_job_mib": before}))
"""


def tiny_bundle(folder: Path) -> Path:
    from osr_export.pipeline import ExportOptions, export_bundle
    from osr_export.synthetic import write_base_model, write_omgsr_lora

    base = write_base_model(folder / "base", "tiny", seed=0)
    lora = write_omgsr_lora(base, folder / "lora", seed=1)
    out = folder / "bundle"
    export_bundle(base, lora, out, ExportOptions(patch_size=512, name="tiny-random-512"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: tiny random model)")
    parser.add_argument("--jobs", default="512,1024", help="LQ heights of the jobs (width = 2×)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_bundle(Path(tmp))
        jobs = []
        for height in (int(h) for h in args.jobs.split(",")):
            run = subprocess.run([sys.executable, "-c", JOB, str(model), str(height)],
                                 capture_output=True, text=True, check=True)
            jobs.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(json.dumps(jobs[-1]))
        manifest = json.loads((model / "manifest.json").read_text())
    path = write_result("memory", {
        "benchmark": "memory",
        "machine": machine(),
        "versions": versions("osr-sdk", "numpy", "onnxruntime"),
        "model": {"name": manifest["name"], "patch_size": manifest["patch_size"], "precision": manifest["precision"]},
        "provider": "CPUExecutionProvider",
        "jobs": jobs,
        "target": "peak RSS ≤ 3 GB for 2048×1024 → 8192×4096",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
