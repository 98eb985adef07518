"""Latency baselines for `osr-sdk bench` (issue 6, item 3): the same model outside ONNX Runtime.

Built with random weights from `osr_export.synthetic`'s configs ("full": the SD2.1-base UNet and
VAE; "tiny": the same structure with small widths) or `osr_export.train.MODEL_SIZES["edge"]`
("edge": the embedded default model's architecture), fp16 on CUDA, fp32 on the CPU:

1. one-step, PyTorch eager (diffusers), the way OMGSR's reference code runs it: VAE encode
   (posterior sample × 0.18215) → UNet at t* = 273 with a constant (1, 77, D) prompt embedding →
   x0 = (z − √(1−ᾱ)·ε̂)/√ᾱ → VAE decode → clamp → AdaIN colour fix; per stage and per tile,
   for each batch size (CUDA events on the GPU);
2. the same with `torch.compile` (each stage compiled), where it works (errors are recorded);
3. plain bicubic ×4 (`torch.nn.functional.interpolate`) of one tile and of the whole LQ ERP;
4. a multi-step sampler with a VAE round trip per step (OmniSSR's scheme): one step = UNet +
   VAE decode + VAE encode per tangent patch; K steps are measured and the per-step cost is
   extrapolated to 200 steps × 18 patches (labelled as an extrapolation; it leaves out OmniSSR's
   ERP-side data-consistency and re-projection, so it is a lower bound).

Usage:  python benchmarks/latency_baselines.py [--size full|edge|tiny] [--batch-sizes 1,4] [--repeats 10]
                                               [--warmup 2] [--no-compile] [--omnissr-steps 3]
Writes benchmarks/results/latency-baselines-<host>-<UTC>.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, versions, write_result

try:
    import osr_export  # noqa: F401
except ImportError:  # a source checkout without `pip install`
    sys.path[1:1] = [str(ROOT / "export"), str(ROOT / "runtime")]

import torch

T_STAR = 273
ALPHA_BAR = 0.635743  # SD2.1-base scaled_linear betas at t* = 273
OMNISSR_STEPS, OMNISSR_PATCHES = 200, 18


class Timer:
    """Times a callable: CUDA events on the GPU (device time), perf_counter on the CPU (ms)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return out, start.elapsed_time(end)
        begin = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - begin) * 1e3


def build_models(size: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, torch.Tensor]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from osr_export.synthetic import unet_config, vae_config
    from osr_export.train import MODEL_SIZES

    torch.manual_seed(0)
    configs = ((MODEL_SIZES[size].unet_config(), MODEL_SIZES[size].vae_config()) if size == "edge"
               else (unet_config(size), vae_config(size)))
    unet = UNet2DConditionModel.from_config(configs[0]).to(device, dtype).eval()  # type: ignore[arg-type]
    vae = AutoencoderKL.from_config(configs[1]).to(device, dtype).eval()  # type: ignore[arg-type]
    prompt = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    return unet, vae, prompt


def stage_functions(unet: Any, vae: Any, prompt: torch.Tensor) -> dict[str, Callable[..., torch.Tensor]]:
    """The one-step model as OMGSR's reference runs it, split into three stages."""
    from osr_export.onestep import adain_color_fix

    sf = float(vae.config.scaling_factor)
    a, b = math.sqrt(ALPHA_BAR), math.sqrt(1.0 - ALPHA_BAR)

    def encode(lq: torch.Tensor) -> torch.Tensor:
        return vae.encode(lq * 2 - 1).latent_dist.sample() * sf

    def denoise(z: torch.Tensor) -> torch.Tensor:
        eps = unet(z, T_STAR, encoder_hidden_states=prompt.expand(z.shape[0], -1, -1)).sample
        return (z - b * eps) / a

    def decode(x0: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        sr = (vae.decode(x0 / sf).sample.clamp(-1, 1) + 1) / 2
        return adain_color_fix(sr, lq)

    return {"encoder": encode, "unet": denoise, "decoder": decode}


def time_onestep(fns: dict[str, Callable[..., torch.Tensor]], timer: Timer, lq: torch.Tensor, repeats: int,
                 warmup: int) -> dict[str, Any]:
    """Median ms per stage for one batch, and per tile."""

    def once() -> dict[str, float]:
        z, t_enc = timer(lambda: fns["encoder"](lq))
        x0, t_unet = timer(lambda: fns["unet"](z))
        _, t_dec = timer(lambda: fns["decoder"](x0, lq))
        return {"encoder": t_enc, "unet": t_unet, "decoder": t_dec}

    for _ in range(warmup):
        once()
    runs = [once() for _ in range(repeats)]
    n = lq.shape[0]
    batch = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    per_tile = {k: v / n for k, v in batch.items()}
    per_tile["total"] = sum(per_tile.values())
    return {"batch_size": n, "batch_ms": batch, "per_tile_ms": per_tile, "all_ms": runs}


def time_fn(timer: Timer, fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, Any]:
    for _ in range(warmup):
        fn()
    runs = [timer(fn)[1] for _ in range(repeats)]
    return {"median_ms": statistics.median(runs), "min_ms": min(runs), "all_ms": runs}


def peak_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "edge", "tiny"), default="full",
                        help="SD2.1-base size, the default model's (edge), or tiny widths")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    parser.add_argument("--tile", type=int, default=None, help="tile size in px (default: 64 tiny, else 512)")
    parser.add_argument("--batch-sizes", default="1,4", help="one-step batch sizes (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default %(default)s)")
    parser.add_argument("--omnissr-steps", type=int, default=3, help="multi-step sampler steps measured (K)")
    parser.add_argument("--omnissr-batch", type=int, default=1, help="patches per call in the multi-step sampler")
    parser.add_argument("--lq-height", type=int, default=None,
                        help="LQ ERP height for the bicubic job (default: 64 tiny, else 512)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tile = args.tile or (64 if args.size == "tiny" else 512)
    lq_height = args.lq_height or (64 if args.size == "tiny" else 512)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    timer = Timer(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    result: dict[str, Any] = {
        "benchmark": "latency-baselines",
        "machine": machine(),
        "versions": versions("osr-sdk", "torch", "diffusers", "numpy"),
        "device": {"torch_device": str(device), "dtype": str(dtype).replace("torch.", ""),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "settings": {"size": args.size, "tile_hw": [tile, tile], "batch_sizes": batch_sizes,
                     "repeats": args.repeats, "warmup": args.warmup, "t_star": T_STAR, "alpha_bar": ALPHA_BAR,
                     "weights": "random (architecture only)", "timing": "CUDA events" if device.type == "cuda"
                     else "perf_counter"},
    }
    print(f"{args.size} model, {dtype!s} on {device}, tile {tile}², batch sizes {batch_sizes}")
    unet, vae, prompt = build_models(args.size, device, dtype)
    result["params_m"] = {"unet": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
                          "vae_encoder": round(sum(p.numel() for p in vae.encoder.parameters()) / 1e6, 1),
                          "vae_decoder": round(sum(p.numel() for p in vae.decoder.parameters()) / 1e6, 1)}
    fns = stage_functions(unet, vae, prompt)

    def tiles(n: int) -> torch.Tensor:
        return torch.rand(n, 3, tile, tile, generator=gen).to(device, dtype)

    with torch.inference_mode():
        # 1. eager
        result["eager"] = []
        for n in batch_sizes:
            reset_peak(device)
            run = time_onestep(fns, timer, tiles(n), args.repeats, args.warmup)
            run["peak_device_mib"] = peak_memory(device)
            result["eager"].append(run)
            print(f"eager    batch {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in run["per_tile_ms"].items())
                  + " ms per tile")
        # 2. torch.compile
        if args.no_compile:
            result["compile"] = {"skipped": "--no-compile"}
        else:
            compiled = {k: torch.compile(f, mode=args.compile_mode, dynamic=False) for k, f in fns.items()}
            runs = []
            try:
                for n in batch_sizes:
                    reset_peak(device)
                    begin = time.perf_counter()
                    run = time_onestep(compiled, timer, tiles(n), args.repeats, max(args.warmup, 2))
                    run["warmup_and_compile_s"] = time.perf_counter() - begin
                    run["peak_device_mib"] = peak_memory(device)
                    runs.append(run)
                    print(f"compile  batch {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in run["per_tile_ms"].items())
                          + " ms per tile")
                result["compile"] = {"mode": args.compile_mode, "runs": runs}
            except Exception as exc:  # noqa: BLE001  (torch.compile failures are a result, not a crash)
                result["compile"] = {"mode": args.compile_mode, "runs": runs, "error": f"{type(exc).__name__}: {exc}"}
                print(f"torch.compile failed: {type(exc).__name__}: {exc}")
        # 3. bicubic
        lq_tile = torch.rand(1, 3, tile // 4, tile // 4, generator=gen).to(device, dtype)
        lq_erp = torch.rand(1, 3, lq_height, 2 * lq_height, generator=gen).to(device, dtype)
        result["bicubic"] = {
            "tile": {"in_hw": [tile // 4] * 2, "out_hw": [tile, tile], **time_fn(
                timer, lambda: torch.nn.functional.interpolate(lq_tile, scale_factor=4, mode="bicubic"),
                args.repeats, args.warmup)},
            "erp": {"in_hw": [lq_height, 2 * lq_height], "out_hw": [4 * lq_height, 8 * lq_height], **time_fn(
                timer, lambda: torch.nn.functional.interpolate(lq_erp, scale_factor=4, mode="bicubic"),
                args.repeats, args.warmup)},
        }
        print(f"bicubic  tile {result['bicubic']['tile']['median_ms']:.3f} ms, "
              f"ERP {result['bicubic']['erp']['median_ms']:.3f} ms")
        # 4. OmniSSR-style multi-step sampler: UNet + VAE decode + VAE encode per step and patch
        sf = float(vae.config.scaling_factor)
        lq = tiles(args.omnissr_batch)
        z = fns["encoder"](lq)
        t_ = torch.full((args.omnissr_batch,), 500, device=device)

        def step(z: torch.Tensor) -> torch.Tensor:
            eps = unet(z, t_, encoder_hidden_states=prompt.expand(z.shape[0], -1, -1)).sample
            x0 = vae.decode((z - eps) / sf).sample.clamp(-1, 1)  # to pixels (data consistency would act here)
            return vae.encode(x0).latent_dist.sample() * sf  # back to the latent

        for _ in range(max(args.warmup, 1)):
            step(z)
        steps = []
        for _ in range(args.omnissr_steps):
            z, ms = timer(lambda z=z: step(z))
            steps.append(ms)
        per_step_per_patch = statistics.median(steps) / args.omnissr_batch
        total_s = per_step_per_patch * OMNISSR_STEPS * OMNISSR_PATCHES / 1e3
        result["omnissr_style"] = {
            "scheme": "per step and patch: UNet + VAE decode + VAE encode (no ERP data-consistency or re-projection)",
            "patch_hw": [tile, tile], "batch": args.omnissr_batch, "steps_measured": args.omnissr_steps,
            "step_ms_all": steps, "per_step_per_patch_ms": per_step_per_patch,
            "extrapolation": {"steps": OMNISSR_STEPS, "patches": OMNISSR_PATCHES, "seconds": total_s,
                              "note": f"EXTRAPOLATED: {args.omnissr_steps} measured steps × "
                                      f"{OMNISSR_STEPS}/{args.omnissr_steps} × {OMNISSR_PATCHES} patches; "
                                      "a lower bound for OmniSSR"},
        }
        print(f"OmniSSR-style: {per_step_per_patch:.1f} ms per step and patch (measured, {args.omnissr_steps} steps); "
              f"extrapolated to {OMNISSR_STEPS} steps × {OMNISSR_PATCHES} patches: {total_s:.1f} s")

    best = min(result["eager"], key=lambda r: r["per_tile_ms"]["total"])
    result["per_tile_ms"] = {"eager": {**best["per_tile_ms"], "batch_size": best["batch_size"]}}
    compiled_runs = result["compile"].get("runs") if isinstance(result["compile"], dict) else None
    if compiled_runs:
        cbest = min(compiled_runs, key=lambda r: r["per_tile_ms"]["total"])
        result["per_tile_ms"]["compile"] = {**cbest["per_tile_ms"], "batch_size": cbest["batch_size"]}
    result["per_tile_ms"]["bicubic"] = {"total": result["bicubic"]["tile"]["median_ms"], "batch_size": 1}
    path = _write(args.out_dir, result)
    print(f"wrote {path}")
    return result, path


def _write(out_dir: Path, payload: dict[str, Any]) -> Path:
    import _common

    _common.RESULTS = Path(out_dir)  # write_result reads the folder from its module
    return write_result("latency-baselines", payload)


if __name__ == "__main__":
    main()
