"""Quality of a model bundle against bicubic (issue 5): WS-PSNR / WS-SSIM on a 360° photo and
PSNR / SSIM on planar sets, every LQ made by the project's degradation with a fixed seed.

- ERP: `pannellum_examplepano.jpg` (4096×2048 ground truth) → `degrade_erp(seed)` → 1024×512 LQ →
  bicubic ×4 and `osr_sdk.upscale()` → WS-PSNR / WS-SSIM against the ground truth.
- Planar: Set14 and BSD100 (cropped to multiples of 4) → `degrade(seed=index)` → bicubic and the
  model (planar tiles) → PSNR / SSIM.
Targets: the model ≥ bicubic + 1.0 dB (WS-)PSNR and ≥ bicubic + 0.03 (WS-)SSIM.

Bicubic is the Keys (a = −0.75) ×4 upsample the model itself starts from (`osr_sdk.tiling`).
The evaluation data stay in ../shared/data (never in the repository, never in training).

Usage:  python benchmarks/quality.py [--model BUNDLE] [--data ../shared/data] [--max-planar N]
                                     [--bicubic-only] [--providers cpu]
Needs the [export] extra (the degradation pipeline). Writes benchmarks/results/quality-*.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions, write_result  # noqa: E402

from osr_sdk.metrics import psnr, ssim, ws_psnr, ws_ssim  # noqa: E402
from osr_sdk.tiling import bicubic_upscale  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ERP_PHOTO = "erp/pannellum_examplepano.jpg"
PLANAR_SETS = ("Set14", "BSD100")
TARGET_DB, TARGET_SSIM = 1.0, 0.03


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def evaluate(name: str, hq: np.ndarray, lq: np.ndarray, upscaler, erp: bool) -> dict:
    """Scores of bicubic and (when given) the model on one image."""
    metric_psnr, metric_ssim = (ws_psnr, ws_ssim) if erp else (psnr, ssim)
    row: dict = {"image": name, "hq_hw": list(hq.shape[:2]), "lq_hw": list(lq.shape[:2])}
    bic = bicubic_upscale(lq, 4)
    row["bicubic"] = {"psnr": metric_psnr(bic, hq), "ssim": metric_ssim(bic, hq)}
    if upscaler is not None:
        start = time.perf_counter()
        sr = upscaler.upscale(lq, projection="erp" if erp else "planar")
        row["seconds"] = time.perf_counter() - start
        row["model"] = {"psnr": metric_psnr(sr, hq), "ssim": metric_ssim(sr, hq)}
        row["gain"] = {k: row["model"][k] - row["bicubic"][k] for k in ("psnr", "ssim")}
    return row


def summarise(rows: list[dict]) -> dict:
    """Mean scores and gains over rows, and whether the targets are met."""
    out = {"images": len(rows), "bicubic": {k: float(np.mean([r["bicubic"][k] for r in rows])) for k in ("psnr", "ssim")}}
    if rows and "model" in rows[0]:
        out["model"] = {k: float(np.mean([r["model"][k] for r in rows])) for k in ("psnr", "ssim")}
        out["gain"] = {k: out["model"][k] - out["bicubic"][k] for k in ("psnr", "ssim")}
        out["meets_target"] = out["gain"]["psnr"] >= TARGET_DB and out["gain"]["ssim"] >= TARGET_SSIM
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the embedded default model)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--providers", default="cpu", help="execution providers, e.g. cuda,cpu")
    parser.add_argument("--max-planar", type=int, default=None, help="at most this many images per planar set")
    parser.add_argument("--seed", type=int, default=0, help="degradation seed of the ERP photo")
    parser.add_argument("--bicubic-only", action="store_true", help="score bicubic alone (no model)")
    args = parser.parse_args()

    from osr_export.degradation import degrade, degrade_erp

    upscaler = None
    model_name = None
    if not args.bicubic_only:
        import osr_sdk

        upscaler = osr_sdk.Upscaler(args.model, providers=args.providers.split(","))
        model_name = upscaler.bundle.manifest.name
    payload: dict = {"benchmark": "quality", "machine": machine(),
                     "versions": versions("osr-sdk", "numpy", "onnxruntime", "torch"),
                     "model": model_name, "providers": args.providers, "seed": args.seed,
                     "targets": {"psnr_gain_db": TARGET_DB, "ssim_gain": TARGET_SSIM}}

    hq = load_rgb(args.data / ERP_PHOTO)
    lq = degrade_erp(hq, seed=args.seed)
    erp_row = evaluate(ERP_PHOTO, hq, lq, upscaler, erp=True)
    payload["erp"] = {"metric": "WS-PSNR / WS-SSIM", **erp_row, "summary": summarise([erp_row])}
    print(f"{ERP_PHOTO}: {erp_row}")
    payload["planar"] = {}
    for set_name in PLANAR_SETS:
        rows = []
        paths = sorted((args.data / "sr" / set_name).glob("*.png"))[: args.max_planar]
        for index, path in enumerate(paths):
            img = load_rgb(path)
            img = img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]
            rows.append(evaluate(path.name, img, degrade(img, seed=index), upscaler, erp=False))
        payload["planar"][set_name] = {"metric": "PSNR / SSIM (RGB)", "summary": summarise(rows), "images": rows}
        print(f"{set_name}: {payload['planar'][set_name]['summary']}")
    print(f"wrote {write_result('quality', payload)}")


if __name__ == "__main__":
    main()
