"""`export_bundle`: base model + OMGSR-S LoRA → folded one-step graphs → verified model bundle.

Reads as numbered steps (see `STAGES`): load → prompt → merge → fold → reference → export →
convert/optimize → validate → write. Every fold is checked against the unfolded model (max
relative error ≤ 1e-5 in fp32); the ONNX graphs are checked with ONNX Runtime's CPU EP against
the torch module (fp32: max relative error ≤ 1e-4; fp16: PSNR ≥ 45 dB against fp32) and the
figures are written into the manifest.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from osr_runtime.bundle import (
    MANIFEST_NAME,
    Bundle,
    GraphSpec,
    Manifest,
    TensorSpec,
    load_bundle,
    write_manifest,
)

from osr_export.errors import ExportError, FoldCheckError, ValidationError
from osr_export.loading import (
    Sources,
    encode_prompt,
    inject_lora,
    load_lora,
    load_prompt_embedding,
    load_schedule,
    load_unet,
    load_vae,
    lora_adapter_dir,
    rel_err,
    to_numpy,
)
from osr_export.onestep import (
    COLOR_FIXES,
    FoldedUNet,
    LatentToX0,
    LqEncoder,
    OneStepSR,
    X0Decoder,
    use_explicit_attention,
)
from osr_export.onnx_io import DEFAULT_OPSET, convert_to_fp16, export_onnx, optimize_onnx

__all__ = ["STAGES", "ExportOptions", "ExportResult", "build_onestep", "export_bundle", "psnr"]

Precision = Literal["fp32", "fp16"]
ColorFix = Literal["adain", "wavelet", "none"]

#: the stages reported to the progress callback, in order
STAGES: tuple[str, ...] = (
    "load base model",
    "prompt embedding",
    "merge LoRA",
    "fold constants",
    "torch reference",
    "export ONNX",
    "convert / optimize",
    "validate (ONNX Runtime)",
    "write bundle",
)

FOLD_TOLERANCE = 1e-5
FP32_TOLERANCE = 1e-4
FP16_MIN_PSNR_DB = 45.0


@dataclass(frozen=True)
class ExportOptions:
    """Knobs of `export_bundle` (the CLI flags of ``osr-export bundle`` map onto these).

    ``timestep`` is t*; ``alpha_bar`` defaults to the scheduler's ᾱ at t*. ``prompt`` is encoded
    by the base model's text encoder unless ``prompt_embedding`` (a safetensors file with one
    (1, 77, D) tensor) is given. ``validation_sizes`` are the (N, H, W) inputs of every check
    (H, W multiples of 8). ``device`` runs the torch side ("auto": CUDA when available).
    """

    precision: Precision = "fp32"
    timestep: int = 273
    alpha_bar: float | None = None
    color_fix: ColorFix = "adain"
    prompt: str = ""
    prompt_embedding: Path | None = None
    name: str | None = None
    scale: int = 4
    patch_size: int = 512
    opset: int = DEFAULT_OPSET
    optimize: bool = False
    allow_pickle: bool = False
    overwrite: bool = False
    device: str = "auto"
    seed: int = 0
    validation_sizes: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (2, 48, 64), (1, 72, 40))
    fold_tolerance: float = FOLD_TOLERANCE
    fp32_tolerance: float = FP32_TOLERANCE
    fp16_min_psnr_db: float = FP16_MIN_PSNR_DB


@dataclass
class ExportResult:
    """What `export_bundle` made: the loaded (re-validated) bundle and the seconds per stage."""

    bundle: Bundle
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest


# ---------------------------------------------------------------------------------------------


def export_bundle(base: str | os.PathLike[str], lora: str | os.PathLike[str] | None,
                  out: str | os.PathLike[str], options: ExportOptions = ExportOptions(),
                  progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export the one-step SR model of ``base`` (diffusers folder) + ``lora`` (OMGSR-S adapter
    folder, or None for the base model alone) into the bundle folder ``out``.

    ``progress`` is called with each stage name of `STAGES` as it starts. The bundle is built in a
    hidden staging folder beside ``out`` and moved into place only once validated.
    """
    base, out = Path(base), Path(out)
    lora = Path(lora) if lora is not None else None
    _check_options(base, lora, out, options)
    report = progress or (lambda _stage: None)
    seconds: dict[str, float] = {}
    device = resolve_device(options.device)
    stage_iter = iter(STAGES)

    @contextmanager
    def stage() -> Iterator[None]:
        name = next(stage_iter)
        report(name)
        start = time.perf_counter()
        yield
        seconds[name] = round(time.perf_counter() - start, 3)

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with _strict_fp32(), torch.no_grad():
            # 1. base model: UNet, VAE, noise schedule
            with stage():
                base_sources = Sources(base)
                schedule = load_schedule(base, base_sources)
                alpha_bar = schedule.alpha_bar(options.timestep)  # also checks t* is in range
                if options.alpha_bar is not None:
                    alpha_bar = options.alpha_bar
                unet = load_unet(base, base_sources, allow_pickle=options.allow_pickle).to(device)
                vae = load_vae(base, base_sources, allow_pickle=options.allow_pickle).to(device)
                scaling_factor = float(vae.config.scaling_factor)
            # 2. the constant prompt embedding
            with stage():
                prompt_source: dict[str, Any]
                if options.prompt_embedding is not None:
                    prompt = load_prompt_embedding(options.prompt_embedding, unet.config.cross_attention_dim,
                                                   allow_pickle=options.allow_pickle)
                    emb_sources = Sources(Path(options.prompt_embedding).parent)
                    emb_sources.add(Path(options.prompt_embedding))
                    prompt_source = {"kind": "file", **emb_sources.to_dict()}
                else:
                    prompt = encode_prompt(base, options.prompt, base_sources, allow_pickle=options.allow_pickle)
                    prompt_source = {"kind": "text_encoder", "prompt": options.prompt}
                prompt = prompt.to(device)
                gc.collect()
            inputs = _validation_inputs(options, vae, device)
            # 3. LoRA merge (each checked), 4. folds (each checked)
            folds: dict[str, float] = {}
            lora_sources = Sources(lora) if lora is not None else None
            with stage():
                if lora is not None and lora_sources is not None:
                    _merge_all(unet, vae, lora, lora_sources, prompt, options, inputs, folds)
            with stage():
                onestep = build_onestep(unet, vae, prompt, options.timestep, alpha_bar, schedule.prediction_type,
                                        options.color_fix, check_inputs=inputs, tolerance=options.fold_tolerance,
                                        report=folds)
                del unet, vae
            # 5. torch reference outputs of every graph on the validation inputs
            with stage():
                refs = _reference(onestep, inputs["lq"])
            # 6. ONNX export of the three graphs (fp32)
            with stage():
                fp32_dir = staging / ".fp32"
                fp32_dir.mkdir()
                graphs = _export_graphs(onestep, inputs["lq"][0], fp32_dir, options.opset)
                del onestep
                gc.collect()
                _empty_cache(device)
            # 7. fp16 conversion and/or ORT transformer optimizer
            with stage():
                final_dir, optimizer_stats = _convert(fp32_dir, staging, graphs, options)
            # 8. validation with ONNX Runtime's CPU EP
            with stage():
                validation = _validate(fp32_dir, final_dir, refs, options)
                validation["folds"] = folds
                validation["fold_tolerance"] = options.fold_tolerance
                if optimizer_stats:
                    validation["optimizer_fusions"] = optimizer_stats
            # 9. manifest, hashes, move into place, reload
            with stage():
                if final_dir != fp32_dir:
                    shutil.rmtree(fp32_dir)
                else:
                    for p in fp32_dir.iterdir():
                        p.rename(staging / p.name)
                    fp32_dir.rmdir()
                for path in staging.rglob("*"):
                    if path.is_file():
                        path.chmod(0o644)  # onnx writes external data owner-only
                manifest = _manifest(options, alpha_bar, schedule.prediction_type, scaling_factor, refs, graphs,
                                     base_sources, lora_sources, prompt_source, validation)
                write_manifest(staging, manifest)
                _replace_folder(staging, out, options.overwrite)
                bundle = load_bundle(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(bundle=bundle, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# steps


def _check_options(base: Path, lora: Path | None, out: Path, o: ExportOptions) -> None:
    if not base.is_dir():
        raise ExportError(f"base model folder {base} does not exist")
    if lora is not None and not lora.is_dir():
        raise ExportError(f"LoRA folder {lora} does not exist")
    if o.precision not in ("fp32", "fp16"):
        raise ExportError(f"precision must be 'fp32' or 'fp16', got {o.precision!r}")
    if o.color_fix not in COLOR_FIXES:
        raise ExportError(f"color_fix must be one of {COLOR_FIXES}, got {o.color_fix!r}")
    if o.timestep < 0:
        raise ExportError(f"timestep must be >= 0, got {o.timestep}")
    if o.alpha_bar is not None and not 0.0 < o.alpha_bar < 1.0:
        raise ExportError(f"alpha_bar must lie in (0, 1), got {o.alpha_bar}")
    if o.scale < 1 or o.patch_size < 8 or o.patch_size % 8:
        raise ExportError(f"scale must be >= 1 and patch_size a multiple of 8, got {o.scale}, {o.patch_size}")
    if o.opset < 17:
        raise ExportError(f"opset {o.opset} is too old; the bundle needs opset >= 17")
    if not o.validation_sizes:
        raise ExportError("validation_sizes must name at least one (N, H, W) input")
    for n, h, w in o.validation_sizes:
        if n < 1 or h < 8 or w < 8 or h % 8 or w % 8:
            raise ExportError(f"validation size {(n, h, w)}: N >= 1 and H, W multiples of 8 are needed")
    if out.exists() and not o.overwrite:
        raise ExportError(f"{out} exists; choose another --out or pass --overwrite")
    if out.exists() and not (out.is_dir() and ((out / MANIFEST_NAME).is_file() or not any(out.iterdir()))):
        raise ExportError(f"{out} exists and is not a model bundle; refusing to overwrite it")


def resolve_device(name: str) -> torch.device:
    """A torch device from "auto" (CUDA when available), "cpu" or "cuda[:N]"; CUDA asked for but absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ExportError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


@contextmanager
def _strict_fp32() -> Iterator[None]:
    """No TF32 on CUDA while checking folds to 1e-5."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _validation_inputs(o: ExportOptions, vae: Any, device: torch.device) -> dict[str, list[torch.Tensor]]:
    """Seeded random LQ images and latents of the validation sizes."""
    gen = torch.Generator().manual_seed(o.seed)
    channels = int(vae.config.latent_channels)
    lq = [torch.rand(n, 3, h, w, generator=gen).to(device) for n, h, w in o.validation_sizes]
    z = [torch.randn(n, channels, h // 8, w // 8, generator=gen).to(device) for n, h, w in o.validation_sizes]
    return {"lq": lq, "z": z}


def _merge_all(unet: Any, vae: Any, lora: Path, sources: Sources, prompt: torch.Tensor, o: ExportOptions,
               inputs: dict[str, list[torch.Tensor]], folds: dict[str, float]) -> None:
    """Merge both OMGSR-S adapters in place, checking each merge on the validation inputs."""
    t = o.timestep

    def run_unet(model: Any) -> list[torch.Tensor]:
        return [model(z, t, encoder_hidden_states=prompt.expand(z.shape[0], -1, -1)).sample for z in inputs["z"]]

    def run_encoder(model: Any) -> list[torch.Tensor]:
        return [model(lq * 2 - 1) for lq in inputs["lq"]]

    unet_adapter = load_lora(lora_adapter_dir(lora, "unet"), unet, sources, allow_pickle=o.allow_pickle)
    vae_adapter = load_lora(lora_adapter_dir(lora, "vae_encoder"), vae.encoder, sources,
                            allow_pickle=o.allow_pickle)
    for key, model_attr, adapter, run in (
        ("lora_merge/unet", None, unet_adapter, run_unet),
        ("lora_merge/vae_encoder", "encoder", vae_adapter, run_encoder),
    ):
        target = unet if model_attr is None else getattr(vae, model_attr)
        peft_model = inject_lora(target, adapter)
        before = run(peft_model.get_base_model())
        merged = peft_model.merge_and_unload()
        if model_attr is not None:
            setattr(vae, model_attr, merged)
        after = run(merged)
        _check(folds, key, after, before, o.fold_tolerance)
        del peft_model, before, after
    gc.collect()


def _check(report: dict[str, float], name: str, outs: list[torch.Tensor], refs: list[torch.Tensor],
           tolerance: float) -> None:
    err = max(rel_err(a, b) for a, b in zip(outs, refs))
    report[name] = err
    if not err <= tolerance:
        raise FoldCheckError(
            f"fold check {name!r} failed: max relative error {err:.3g} > {tolerance:g} (fp32); "
            "the folded model no longer computes what the original did"
        )


def build_onestep(unet: Any, vae: Any, prompt: torch.Tensor, timestep: int, alpha_bar: float,
                  prediction_type: str, color_fix: str, *, check_inputs: dict[str, list[torch.Tensor]],
                  tolerance: float = FOLD_TOLERANCE, report: dict[str, float] | None = None) -> OneStepSR:
    """Fold the (merged) ``unet``/``vae`` into a `OneStepSR`, checking every fold.

    Checks (max relative error ≤ ``tolerance`` on ``check_inputs``): the constant timestep
    embedding, the constant cross-attention K/V (with explicit fp32-softmax attention), and the
    VAE's explicit attention; figures go into ``report``.
    """
    report = report if report is not None else {}
    zs, lqs = check_inputs["z"], check_inputs["lq"]
    # reference: the plain diffusers forward with the prompt as input
    ref_eps = [unet(z, timestep, encoder_hidden_states=prompt.expand(z.shape[0], -1, -1)).sample for z in zs]
    folded = FoldedUNet(unet, timestep, prompt)
    _check(report, "timestep_embedding", [folded(z) for z in zs], ref_eps, tolerance)
    if folded.fold_cross_attention() == 0:
        raise ExportError("the UNet has no cross-attention to fold; is this a text-conditioned UNet?")
    _check(report, "cross_attention_kv", [folded(z) for z in zs], ref_eps, tolerance)
    del ref_eps

    encoder, decoder = LqEncoder(vae), X0Decoder(vae, color_fix)
    x0s = [torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z.device) for z in zs]

    def run_vae() -> list[torch.Tensor]:  # where the attention change acts: before clamp and colour fix
        return [encoder(lq) for lq in lqs] + [decoder.decode(x0) for x0 in x0s]

    ref_vae = run_vae()
    use_explicit_attention(vae)
    _check(report, "vae_attention", run_vae(), ref_vae, tolerance)
    return OneStepSR(encoder, LatentToX0(folded, alpha_bar, prediction_type), decoder).eval()


def _reference(onestep: OneStepSR, lqs: list[torch.Tensor]) -> dict[str, list[np.ndarray]]:
    """The torch module's lq → z → x0 → sr on every validation input (on the CPU, as numpy)."""
    out: dict[str, list[np.ndarray]] = {"lq": [], "z": [], "x0": [], "sr": []}
    for lq in lqs:
        z = onestep.encoder(lq)
        x0 = onestep.unet(z)
        sr = onestep.decoder(x0, lq)
        for key, value in (("lq", lq), ("z", z), ("x0", x0), ("sr", sr)):
            out[key].append(to_numpy(value))
    return out


_GRAPH_IO = {
    "encoder": (("lq",), ("z",)),
    "unet": (("z",), ("x0",)),
    "decoder": (("x0", "lq"), ("sr",)),
}
_DIMS = {
    "lq": {0: "N", 2: "H", 3: "W"},
    "sr": {0: "N", 2: "H", 3: "W"},
    "z": {0: "N", 2: "H/8", 3: "W/8"},
    "x0": {0: "N", 2: "H/8", 3: "W/8"},
}


def _export_graphs(onestep: OneStepSR, lq: torch.Tensor, folder: Path, opset: int) -> dict[str, tuple[str, ...]]:
    """Export encoder/unet/decoder to ``folder``; returns each graph's external data files."""
    z = onestep.encoder(lq)
    x0 = onestep.unet(z)
    modules = {"encoder": (onestep.encoder, (lq,)), "unet": (onestep.unet, (z,)),
               "decoder": (onestep.decoder, (x0, lq))}
    external = {}
    for role, (module, args) in modules.items():
        ins, outs = _GRAPH_IO[role]
        external[role] = export_onnx(module, args, folder / f"{role}.onnx", input_names=ins, output_names=outs,
                                     dynamic_axes={n: _DIMS[n] for n in ins + outs}, opset=opset)
    return external


def _convert(fp32_dir: Path, staging: Path, graphs: dict[str, tuple[str, ...]],
             o: ExportOptions) -> tuple[Path, dict[str, Any]]:
    """ORT optimizer and/or fp16 conversion into ``staging``; returns the folder of final graphs."""
    if o.precision == "fp32" and not o.optimize:
        return fp32_dir, {}
    stats: dict[str, Any] = {}
    scratch = staging / ".optimized"
    for role in graphs:
        src, dst = fp32_dir / f"{role}.onnx", staging / f"{role}.onnx"
        if o.optimize:
            opt = dst if o.precision == "fp32" else scratch / f"{role}.onnx"
            opt.parent.mkdir(exist_ok=True)
            stats[role] = optimize_onnx(src, opt, "unet" if role == "unet" else "vae")
            src = opt
        if o.precision == "fp16":
            convert_to_fp16(src, dst)
        graphs[role] = tuple(p.name for p in staging.glob(f"{role}.onnx.data"))
    shutil.rmtree(scratch, ignore_errors=True)
    return staging, stats


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB of ``a`` against ``b`` (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(peak**2 / mse))


def _np_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    denom = max(float(np.abs(b).max()), 1e-12)
    err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) / denom
    return err if np.isfinite(err) else float("inf")


def _run_graphs(folder: Path, refs: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Each graph on the torch inputs (isolated) and the three chained; one session at a time."""
    results: dict[str, Any] = {}
    chain: dict[str, list[np.ndarray]] = {"z": [], "x0": [], "sr": []}
    for role, (ins, (out_name,)) in _GRAPH_IO.items():
        session = _ort_session(folder / f"{role}.onnx")
        isolated, chained = [], []
        for i in range(len(refs["lq"])):
            feed = {name: refs[name][i] for name in ins}
            isolated.append(session.run(None, feed)[0])
            chain_feed = {name: (refs["lq"][i] if name == "lq" else chain[name][i]) for name in ins}
            chained.append(session.run(None, chain_feed)[0] if role != "encoder" else isolated[-1])
        chain[out_name] = chained
        results[role] = isolated
        del session
    results["chain"] = chain["sr"]
    return results


def _rel_errors(run: dict[str, Any], refs: dict[str, list[np.ndarray]]) -> dict[str, float]:
    targets = {"encoder": "z", "unet": "x0", "decoder": "sr"}
    errs = {role: max(_np_rel_err(a, b) for a, b in zip(run[role], refs[t])) for role, t in targets.items()}
    errs["chain"] = max(_np_rel_err(a, b) for a, b in zip(run["chain"], refs["sr"]))
    return errs


def _validate(fp32_dir: Path, final_dir: Path, refs: dict[str, list[np.ndarray]],
              o: ExportOptions) -> dict[str, Any]:
    """ORT (CPU EP) against the torch module; raises `ValidationError` past the limits.

    The fp32 graphs (always exported first) are checked graph by graph and chained; converted
    or optimized graphs are checked again: fp16 by the PSNR of the chained output.
    """
    import onnxruntime as ort

    v: dict[str, Any] = {
        "provider": "CPUExecutionProvider",
        "onnxruntime": ort.__version__,
        "inputs": [list(x.shape) for x in refs["lq"]],
        "metric": "max|ort - torch| / max|torch| per output (graphs alone and chained); "
                  "fp16: PSNR of the chained sr against the torch fp32 sr, peak 1",
    }
    fp32 = _rel_errors(_run_graphs(fp32_dir, refs), refs)
    v["fp32"] = {"max_rel_err": fp32, "limit": o.fp32_tolerance}
    if not max(fp32.values()) <= o.fp32_tolerance:
        raise ValidationError(
            f"fp32 ONNX graphs differ from the torch module: max relative errors {fp32} "
            f"(limit {o.fp32_tolerance:g})"
        )
    if final_dir == fp32_dir:
        return v
    run = _run_graphs(final_dir, refs)
    if o.precision == "fp32":  # optimized fp32 graphs
        opt = _rel_errors(run, refs)
        v["optimized"] = {"max_rel_err": opt, "limit": o.fp32_tolerance}
        if not max(opt.values()) <= o.fp32_tolerance:
            raise ValidationError(f"the optimized graphs differ from the torch module: {opt}")
        return v
    psnrs = [psnr(a, b) for a, b in zip(run["chain"], refs["sr"])]
    worst = min(psnrs)
    v["fp16"] = {
        "psnr_db": [round(p, 3) if np.isfinite(p) else None for p in psnrs],
        "min_psnr_db": round(worst, 3) if np.isfinite(worst) else None,
        "max_abs_err": max(float(np.abs(a - b).max()) for a, b in zip(run["chain"], refs["sr"])),
        "limit_db": o.fp16_min_psnr_db,
    }
    if not worst >= o.fp16_min_psnr_db:
        raise ValidationError(
            f"fp16 graphs reach only {worst:.2f} dB PSNR against fp32 (limit {o.fp16_min_psnr_db} dB); "
            "export fp32 instead, or check the model for fp16 overflow"
        )
    return v


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("osr-sdk", "torch", "diffusers", "peft", "transformers", "onnx", "onnxruntime", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    from osr_export import __version__

    out["osr_export"] = __version__
    return out


def _manifest(o: ExportOptions, alpha_bar: float, prediction_type: str, scaling: float, refs: dict[str, list[np.ndarray]],
              graphs: dict[str, tuple[str, ...]], base_sources: Sources, lora_sources: Sources | None,
              prompt_source: dict[str, Any], validation: dict[str, Any]) -> Manifest:
    latent_channels = int(refs["z"][0].shape[1])
    shapes = {
        "lq": ("N", 3, "H", "W"), "sr": ("N", 3, "H", "W"),
        "z": ("N", latent_channels, "H/8", "W/8"), "x0": ("N", latent_channels, "H/8", "W/8"),
    }
    specs = {}
    for role, (ins, outs) in _GRAPH_IO.items():
        specs[role] = GraphSpec(
            file=f"{role}.onnx",
            inputs=tuple(TensorSpec(n, "float32", shapes[n]) for n in ins),
            outputs=tuple(TensorSpec(n, "float32", shapes[n]) for n in outs),
            opset=o.opset,
            external_data=graphs[role],
        )
    name = o.name or f"{(lora_sources.root if lora_sources else base_sources.root).resolve().name}-{o.precision}"
    return Manifest(
        name=name,
        scale=o.scale,
        patch_size=o.patch_size,
        timestep=o.timestep,
        alpha_bar=float(alpha_bar),
        latent_scaling_factor=scaling,
        latent_channels=latent_channels,
        latent_downscale=8,
        size_multiple=8,
        prediction_type=prediction_type,
        color_fix=o.color_fix,
        precision=o.precision,
        layout="split",
        graphs=specs,
        sources={
            "base": base_sources.to_dict(),
            "lora": lora_sources.to_dict() if lora_sources else None,
            "prompt_embedding": prompt_source,
        },
        exporter={"versions": _versions(), "opset": o.opset, "optimized": o.optimize,
                  "fp16_fp32_ops": ["attention scores (MatMul before Softmax)", "Softmax", "Resize"]
                  if o.precision == "fp16" else []},
        validation=validation,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _replace_folder(staging: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    staging.rename(out)
