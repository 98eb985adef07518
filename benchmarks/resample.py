"""Spherical resampling benchmark (issue 2): a 1024×512 LQ ERP → all tangent patches of the
4096×2048 layout (bicubic, ×4 upsample in the same pass) → merge back into a 4096×2048 ERP.

Timed on the same work, in one run:
  sample: the extension (CPU kernels), the float64 numpy reference, py360convert's `e2p` looped
          over the same patches (its OpenCV fast path when OpenCV is installed);
  merge:  the extension (CPU kernels), the float64 numpy reference (py360convert has no
          tangent→ERP merge);
  and, when torch sees a CUDA device and the CUDA kernels are built: the CUDA kernels, timed with
  CUDA events, against a plain PyTorch implementation (grid_sample per patch + accumulate).

Usage:  python benchmarks/resample.py [--repeats 5] [--out-h 2048] [--patch-size 512] [--no-reference]
Writes benchmarks/results/resample-<host>-<time>.json and a PNG bar chart beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, time_call, versions, write_result  # noqa: E402

from osr_sdk import sphere  # noqa: E402
from osr_sdk.sphere import _reference as ref  # noqa: E402


def test_erp(height: int, width: int) -> np.ndarray:
    """A deterministic, textured LQ ERP (the shipped sample photo, resized if needed)."""
    from PIL import Image

    sample = Path(sphere.__file__).resolve().parents[1] / "data" / "sample_erp.jpg"
    img = Image.open(sample).convert("RGB").resize((width, height), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255


def bench_cpu(lq: np.ndarray, layout: sphere.TangentLayout, repeats: int, reference: bool) -> dict:
    results: dict[str, dict] = {"sample": {}, "merge": {}}
    patches = sphere.erp_to_tangent(lq, layout)
    results["sample"]["extension_cpu"] = time_call(lambda: sphere.erp_to_tangent(lq, layout, out=patches), repeats)
    results["merge"]["extension_cpu"] = time_call(lambda: sphere.tangent_to_erp(patches, layout), repeats)
    try:
        import py360convert
        from py360convert import utils as p360_utils

        size = layout.patch_size

        def e2p_all() -> None:
            for (lon, lat), fov in zip(layout.centers_deg, layout.fov_deg):
                py360convert.e2p(lq, fov_deg=fov, u_deg=lon, v_deg=lat, out_hw=(size, size), mode="bicubic")

        name = "py360convert_e2p_opencv" if p360_utils.cv2 is not None else "py360convert_e2p_scipy"
        results["sample"][name] = time_call(e2p_all, max(1, repeats // 2))
    except ImportError:
        print("py360convert not installed: skipping it", file=sys.stderr)
    if reference:
        size = layout.patch_size
        print("timing the float64 numpy reference (slow)...", file=sys.stderr)
        results["sample"]["numpy_reference"] = time_call(
            lambda: ref.sample_views(lq, layout.views, size, size, "bicubic"), 1, warmup=0)
        results["merge"]["numpy_reference"] = time_call(
            lambda: ref.tangent_to_erp(patches, layout.views, layout.out_hw, "feather", layout.overlap), 1, warmup=0)
        # the kernels compute the same function as the reference (recorded, not assumed)
        results["merge"]["max_abs_error_vs_reference"] = float(np.max(np.abs(
            sphere.tangent_to_erp(patches, layout)
            - ref.tangent_to_erp(patches, layout.views, layout.out_hw, "feather", layout.overlap))))
    return results


def bench_cuda(lq: np.ndarray, layout: sphere.TangentLayout, repeats: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not (torch.cuda.is_available() and sphere.cuda_available()):
        return None
    import torch.nn.functional as F

    def cuda_time(fn, repeats: int) -> dict:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return {"median_s": float(np.median(times)), "min_s": min(times), "repeats": repeats, "all_s": times}

    lq_gpu = torch.from_numpy(lq).cuda()
    patches = sphere.erp_to_tangent(lq_gpu, layout)
    out = torch.empty_like(patches)
    res = {
        "sample": {"extension_cuda": cuda_time(lambda: sphere.erp_to_tangent(lq_gpu, layout, out=out), repeats)},
        "merge": {"extension_cuda": cuda_time(lambda: sphere.tangent_to_erp(patches, layout), repeats)},
    }
    # The natural PyTorch merge: for each patch, grid_sample it at every ERP pixel and accumulate.
    height, width = layout.out_hw
    lon, lat = (torch.from_numpy(a).cuda() for a in ref.erp_lonlat(height, width))
    lat_g, lon_g = torch.meshgrid(lat, lon, indexing="ij")
    views = torch.from_numpy(layout.views).cuda()

    def feather(t: torch.Tensor) -> torch.Tensor:
        ramp = ((1 - t.abs()) / layout.overlap).clamp(0, 1)
        return ramp * ramp * (3 - 2 * ramp)

    def torch_merge() -> torch.Tensor:
        acc = torch.zeros(3, height, width, device="cuda")
        wsum = torch.zeros(height, width, device="cuda")
        for n in range(len(layout)):
            lon0, lat0, tx, ty = views[n]
            dlon = lon_g - lon0
            cos_c = torch.sin(lat0) * torch.sin(lat_g) + torch.cos(lat0) * torch.cos(lat_g) * torch.cos(dlon)
            u = torch.cos(lat_g) * torch.sin(dlon) / cos_c / tx
            v = (torch.cos(lat0) * torch.sin(lat_g) - torch.sin(lat0) * torch.cos(lat_g) * torch.cos(dlon)) / cos_c / ty
            inside = (cos_c > 0) & (u.abs() < 1) & (v.abs() < 1)
            w = torch.where(inside, feather(u) * feather(v), torch.zeros_like(u)).float()
            grid = torch.stack([u, -v], -1).float()[None]
            val = F.grid_sample(patches[n : n + 1], grid, mode="bilinear", align_corners=False, padding_mode="border")[0]
            acc += val * w
            wsum += w
        return acc / wsum.clamp_min(1e-12)

    res["merge"]["pytorch_grid_sample"] = cuda_time(torch_merge, max(1, repeats // 2))
    res["sample"]["pytorch_grid_sample_note"] = "not timed: grid_sample sampling is DESIGN.md §9's 0.97 ms figure"
    return res


def ratios(section: dict, fast: str) -> dict[str, float]:
    base = section.get(fast)
    if not isinstance(base, dict):
        return {}
    return {f"{name}_over_{fast}": entry["median_s"] / base["median_s"]
            for name, entry in section.items() if isinstance(entry, dict) and name != fast}


def plot(payload: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, step in zip(axes, ("sample", "merge")):
        entries = {k: v["median_s"] * 1000 for part in ("cpu", "cuda") if payload.get(part)
                   for k, v in payload[part][step].items() if isinstance(v, dict)}
        names = list(entries)
        ax.barh(names, [entries[n] for n in names], color="tab:blue")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("median time (ms, log scale)")
        ax.set_title(f"{step}: {payload['work'][step]}")
        for i, n in enumerate(names):
            ax.text(entries[n], i, f" {entries[n]:.1f}", va="center", fontsize=8)
    fig.suptitle(f"osr_sdk spherical resampling on {payload['machine']['cpu']}"
                 + (f" + {payload['machine']['gpu']['name']}" if payload["machine"].get("gpu") else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-h", type=int, default=2048, help="output ERP height (width = 2×)")
    parser.add_argument("--patch-size", type=int, default=512)
    parser.add_argument("--no-reference", action="store_true", help="skip the slow float64 numpy reference")
    args = parser.parse_args()

    out_h, out_w = args.out_h, 2 * args.out_h
    layout = sphere.tangent_layout(out_h, out_w, patch_size=args.patch_size)
    lq = test_erp(out_h // 4, out_w // 4)
    payload = {
        "benchmark": "resample",
        "machine": machine(),
        "versions": versions("osr-sdk", "numpy", "py360convert", "opencv-python-headless", "torch"),
        "work": {
            "sample": f"{lq.shape[1]}×{lq.shape[0]} LQ → {len(layout)} bicubic patches of {args.patch_size}²",
            "merge": f"{len(layout)} patches → {out_w}×{out_h} ERP (feather)",
            "patches": len(layout),
            "fov_deg": float(layout.fov_deg[0]),
        },
    }
    payload["cpu"] = bench_cpu(lq, layout, args.repeats, not args.no_reference)
    payload["cuda"] = bench_cuda(lq, layout, max(args.repeats, 20))
    payload["ratios"] = {
        "sample_cpu": ratios(payload["cpu"]["sample"], "extension_cpu"),
        "merge_cpu": ratios(payload["cpu"]["merge"], "extension_cpu"),
    }
    if payload["cuda"]:
        payload["ratios"]["merge_cuda"] = ratios(payload["cuda"]["merge"], "extension_cuda")
    path = write_result("resample", payload)
    plot(payload, path.with_suffix(".png"))
    for part in ("cpu", "cuda"):
        for step, entries in (payload[part] or {}).items():
            for name, entry in entries.items():
                if isinstance(entry, dict):
                    print(f"{part:4s} {step:6s} {name:28s} {entry['median_s'] * 1000:10.2f} ms")
    for name, values in payload["ratios"].items():
        for k, v in values.items():
            print(f"ratio {name}: {k} = {v:.1f}×")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
