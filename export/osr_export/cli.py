"""``osr-export``: the export stage's command line (``bundle``, ``mid-timestep`` and ``train``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osr_runtime.bundle import PRECISIONS, Manifest
from osr_runtime.errors import OsrError

__all__ = ["RANDOM_WEIGHTS", "build_parser", "main"]

#: ``--random-weights`` choice -> `osr_export.synthetic` size
RANDOM_WEIGHTS: dict[str, str] = {"sd21-base": "full", "tiny": "tiny"}


def build_parser() -> argparse.ArgumentParser:
    from osr_export.onestep import COLOR_FIXES
    from osr_export.pipeline import ExportOptions

    d = ExportOptions()
    parser = argparse.ArgumentParser(prog="osr-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bundle", help="export a base model + OMGSR-S LoRA into a verified ONNX model bundle")
    b.add_argument("--base", type=Path, default=None, help="base model folder (diffusers layout)")
    b.add_argument("--lora", type=Path, default=None,
                   help="LoRA release folder (unet_lora_adapter/, vae_encoder_lora_adapter/); "
                        "leave out for a model without LoRA (e.g. one made by `osr-export train`)")
    b.add_argument("--random-weights", choices=RANDOM_WEIGHTS, default=None,
                   help="instead of --base/--lora: build the SD2.1-base architecture (sd21-base: full size, "
                        "tiny: small widths) with random weights and OMGSR-S-style LoRA, for latency work")
    b.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    b.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    b.add_argument("--timestep", type=int, default=d.timestep, help="mid-timestep t* (default %(default)s)")
    b.add_argument("--alpha-bar", type=float, default=None, help="ᾱ at t* (default: the scheduler's)")
    b.add_argument("--prompt-embedding", type=Path, default=None,
                   help="safetensors file with one (1, 77, D) tensor (default: encode --prompt)")
    b.add_argument("--prompt", default=d.prompt, help="prompt for the text encoder (default: empty)")
    b.add_argument("--color-fix", choices=COLOR_FIXES, default=d.color_fix)
    b.add_argument("--name", default=None, help="bundle name (default: <lora folder>-<precision>)")
    b.add_argument("--scale", type=int, default=d.scale, help="upscaling factor (default %(default)s)")
    b.add_argument("--patch-size", type=int, default=d.patch_size, help="tile size in pixels (default %(default)s)")
    b.add_argument("--opset", type=int, default=d.opset, help="ONNX opset, >= 17 (default %(default)s)")
    b.add_argument("--optimize", action="store_true",
                   help="run ONNX Runtime's transformer optimizer (model_type unet / vae)")
    b.add_argument("--allow-pickle", action="store_true",
                   help="read pickled .bin/.ckpt/.pt checkpoints with torch.load(weights_only=True)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    b.add_argument("--device", default=d.device, help="torch device: auto, cpu, cuda (default %(default)s)")
    b.add_argument("--seed", type=int, default=d.seed, help="seed of the validation inputs")

    m = sub.add_parser("mid-timestep", help="pick t* by SNR matching on degraded HQ images")
    m.add_argument("--hq", type=Path, required=True, help="folder of HQ images")
    m.add_argument("--base", type=Path, required=True, help="base model folder (its VAE and scheduler)")
    m.add_argument("--scale", type=int, default=4, help="degradation scale (default %(default)s)")
    m.add_argument("--seed", type=int, default=0, help="degradation/noise seed (default %(default)s)")
    m.add_argument("--crop", type=int, default=512, help="centre crop size in pixels (default %(default)s)")
    m.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    m.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default %(default)s)")
    m.add_argument("--json", type=Path, default=None, help="also write the result (costs per t) as JSON")
    _add_train_parser(sub)
    return parser


def _add_train_parser(sub: Any) -> None:
    """``osr-export train``: flags map one to one onto `osr_export.train.TrainConfig`."""
    from osr_export.train import DEFAULT_EXCLUDE, MODEL_SIZES, TrainConfig

    d = TrainConfig(data=(), out="")
    t = sub.add_parser("train", help="train (or resume) the small one-step SR model on folders of images")
    t.add_argument("--data", type=Path, nargs="+", required=True, help="folders (or files) of HQ training images")
    t.add_argument("--out", type=Path, required=True,
                   help="run folder: checkpoint.pt, log.jsonl, model/ (an existing checkpoint is resumed)")
    t.add_argument("--size", choices=sorted(MODEL_SIZES), default=d.size, help="model size (default %(default)s)")
    t.add_argument("--exclude", nargs="*", default=list(DEFAULT_EXCLUDE),
                   help="folder or file names never trained on (default: %(default)s)")
    for flag, kind, help_text in (
        ("--crop", int, "HQ crop size in pixels"), ("--scale", int, "degradation scale"),
        ("--batch-size", int, "crops per step"),
        ("--batch-repeats", int, "optimizer steps per degraded batch (each on a flip/rotation of it)"),
        ("--max-steps", int, "total optimizer steps of the run"),
        ("--lr", float, "peak AdamW learning rate"), ("--weight-decay", float, "AdamW weight decay"),
        ("--warmup-steps", int, "linear warm-up steps before the cosine decay"),
        ("--timestep", int, "mid-timestep t*"), ("--w-l1", float, "pixel L1 weight"),
        ("--w-ssim", float, "1 - SSIM weight"), ("--w-latent", float, "MSE(x0, HQ latent) weight"),
        ("--w-recon", float, "VAE reconstruction L1 weight"), ("--w-kl", float, "KL weight"),
        ("--grad-clip", float, "gradient norm clip"), ("--seed", int, "data and init seed"),
        ("--workers", int, "data loader processes"), ("--log-every", int, "steps between log.jsonl lines"),
        ("--checkpoint-every", int, "steps between checkpoints"),
    ):
        dest = flag[2:].replace("-", "_")
        t.add_argument(flag, type=kind, default=getattr(d, dest), help=f"{help_text} (default %(default)s)")
    t.add_argument("--prompt", choices=("learned", "zero"), default=d.prompt,
                   help="constant prompt embedding: learned or all zeros (default %(default)s)")
    t.add_argument("--time-limit", type=float, default=None, dest="time_limit_s",
                   help="stop (checkpoint and model/ written) after this many seconds; run again to resume")
    t.add_argument("--save-dtype", choices=("fp32", "fp16"), default=d.save_dtype,
                   help="dtype of the weights in model/ (default %(default)s)")
    t.add_argument("--init", default=None,
                   help="warm start from the model/ folder of an earlier run (weights only; fresh optimizer)")
    t.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    t.add_argument("--device", default=d.device, help="torch device: auto, cpu, cuda (default %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bundle":
            return _bundle(args)
        if args.command == "train":
            return _train(args)
        return _mid_timestep(args)
    except OsrError as exc:
        print(f"osr-export: error: {exc}", file=sys.stderr)
        return 1


def _bundle(args: argparse.Namespace) -> int:
    from osr_export.pipeline import ExportOptions

    options = ExportOptions(
        precision=args.precision, timestep=args.timestep, alpha_bar=args.alpha_bar, color_fix=args.color_fix,
        prompt=args.prompt, prompt_embedding=args.prompt_embedding, name=args.name, scale=args.scale,
        patch_size=args.patch_size, opset=args.opset, optimize=args.optimize, allow_pickle=args.allow_pickle,
        overwrite=args.overwrite, device=args.device, seed=args.seed,
    )
    if args.random_weights is not None:
        if args.base is not None or args.lora is not None:
            raise OsrError("--random-weights builds its own base model and LoRA; leave out --base and --lora")
        return _random_bundle(args, options)
    if args.base is None:
        raise OsrError("osr-export bundle needs --base (or --random-weights sd21-base|tiny)")
    return _export(args.base, args.lora, args.out, options)


def _random_bundle(args: argparse.Namespace, options: Any) -> int:
    """Random-weight base model + LoRA in a scratch folder beside --out, then the real export path;
    the manifest's sources record ``random_weights``."""
    import dataclasses
    import tempfile

    from osr_runtime.bundle import load_bundle, write_manifest

    from osr_export.errors import ExportError
    from osr_export.synthetic import write_base_model, write_omgsr_lora

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # fail before minutes of model building
        raise ExportError(f"{out} exists; choose another --out or pass --overwrite")
    if options.name is None:
        options = dataclasses.replace(options, name=f"random-{args.random_weights}-{options.precision}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".osr-random-{args.random_weights}-", dir=out.parent) as tmp:
        print(f"building a random-weight {args.random_weights} model (seed {args.seed}) in {tmp}", file=sys.stderr)
        base = write_base_model(Path(tmp) / "base", RANDOM_WEIGHTS[args.random_weights], seed=args.seed)  # type: ignore[arg-type]
        lora = write_omgsr_lora(base, Path(tmp) / "lora", seed=args.seed + 1)
        code = _export(base, lora, out, options)
    bundle = load_bundle(out)
    sources = {**dict(bundle.manifest.sources), "random_weights": args.random_weights, "random_seed": args.seed}
    write_manifest(out, dataclasses.replace(bundle.manifest, sources=sources))
    load_bundle(out)  # the rewritten manifest still verifies
    return code


def _export(base: Path, lora: Path | None, out: Path, options: Any) -> int:
    from tqdm import tqdm

    from osr_export.pipeline import STAGES, export_bundle

    start = time.perf_counter()
    with tqdm(total=len(STAGES), unit="stage", desc="osr-export", file=sys.stderr) as bar:
        seen: list[str] = []

        def progress(stage: str) -> None:
            if seen:
                bar.update(1)
            seen.append(stage)
            bar.set_postfix_str(stage)

        result = export_bundle(base, lora, out, options, progress=progress)
        bar.update(1)
    print(summary(result.bundle.path, result.manifest, time.perf_counter() - start))
    return 0


def summary(path: Path, m: Manifest, seconds: float) -> str:
    """The final report of ``osr-export bundle``."""
    v = m.validation
    sizes = {f.path: f.size for f in m.files}
    graphs = " | ".join(
        f"{g.file} {sum(sizes.get(n, 0) for n in (g.file, *g.external_data)) / 1e6:.1f} MB" for g in m.graphs.values()
    )
    folds = v.get("folds", {})
    lines = [
        f"bundle   {path}  ({m.name}, {m.precision}, {m.layout} graphs)",
        f"model    t*={m.timestep}  ᾱ={m.alpha_bar:.6f}  ×{m.scale}  patch {m.patch_size}  colour fix {m.color_fix}",
        f"graphs   {graphs}",
        f"folds    max rel err {max(folds.values()) if folds else 0:.2e} (limit {v.get('fold_tolerance', 0):g})",
    ]
    if "fp32" in v:
        errs = ", ".join(f"{k} {e:.2e}" for k, e in v["fp32"]["max_rel_err"].items())
        lines.append(f"fp32     max rel err {errs} (limit {v['fp32']['limit']:g})")
    if "optimized" in v:
        errs = ", ".join(f"{k} {e:.2e}" for k, e in v["optimized"]["max_rel_err"].items())
        lines.append(f"optim.   max rel err {errs}")
    if "fp16" in v:
        lines.append(f"fp16     min PSNR {v['fp16']['min_psnr_db']} dB vs fp32 (limit {v['fp16']['limit_db']:g} dB)")
    lines.append(f"time     {seconds:.1f} s")
    return "\n".join(lines)


def _mid_timestep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from osr_export.mid_timestep import compute_mid_timestep

    with tqdm(unit="image", desc="mid-timestep", file=sys.stderr) as bar:
        result = compute_mid_timestep(args.hq, args.base, scale=args.scale, seed=args.seed, crop=args.crop,
                                      max_images=args.max_images, device=args.device,
                                      progress=lambda _name: bar.update(1))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    snr = sum(result.lq_snr) / len(result.lq_snr)
    print(f"t* = {result.timestep}  (ᾱ = {result.alpha_bar:.6f}) from {len(result.images)} images; "
          f"mean LQ latent SNR {snr:.3f}; cost {result.cost[result.timestep]:.4g}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from osr_export.train import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["data"] = tuple(str(p) for p in args.data)
    values["out"] = str(args.out)
    values["exclude"] = tuple(args.exclude)
    config = TrainConfig(**values)

    def progress(entry: dict[str, float]) -> None:
        print(json.dumps(entry), file=sys.stderr, flush=True)

    result = train(config, progress=progress)
    state = "finished" if result.finished else "stopped (run the same command again to resume)"
    print(f"step {result.step}/{config.max_steps} {state}; model in {result.model_dir}; "
          f"last losses {result.last_losses}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
