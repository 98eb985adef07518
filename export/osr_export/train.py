"""Train the embedded default model: a small SD-shaped one-step SR model, from scratch, on a GPU.

The model is the one `export_bundle` exports (DESIGN.md §3), in diffusers classes: an
``AutoencoderKL`` (its encoder reads the bicubic ×4 LQ, its decoder writes the HQ) and a
``UNet2DConditionModel`` run once at the mid-timestep t* on a constant, learned prompt embedding::

    z_L = mean(E(2·up(lq)−1)) × 0.18215;  ε̂ = UNet(z_L, t*, prompt);  x0 = (z_L − √(1−ᾱ)·ε̂)/√ᾱ
    sr  = D(x0 / 0.18215)·½ + ½

Losses (weights in `TrainConfig`): L1(sr, hq) + w_ssim·(1 − SSIM(sr, hq)) on pixels;
w_latent·MSE(x0, sg(z_H)) with z_H the encoder's latent of the HQ (the UNet learns to move the LQ
latent onto the HQ one); w_recon·L1(D(z_H), hq) (the decoder stays an autoencoder's decoder);
w_kl·KL of the HQ posterior (keeps the latent scale near SD's).

Data: folders of images (recursively), minus `DEFAULT_EXCLUDE` (the evaluation sets), random
``crop``² crops with flips/rotations, degraded on the fly by `osr_export.degradation.degrade`.
Sample ``b`` of step ``s`` is a pure function of (seed, s, b), so a resumed run draws the same
batches as an uninterrupted one. AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA.

The run folder (``out``) holds ``checkpoint.pt`` (model, optimizer, LR schedule, step, RNG
states, config; written atomically), ``log.jsonl`` (one line of losses per ``log_every`` steps)
and ``model/`` (``unet/ vae/ scheduler/ prompt_embedding.safetensors``: what ``osr-export
bundle --base out/model --prompt-embedding out/model/prompt_embedding.safetensors`` exports).
Running again with the same ``out`` resumes from the checkpoint. See export/TRAINING.md.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from osr_export.degradation import degrade
from osr_export.errors import ExportError
from osr_export.pipeline import resolve_device

__all__ = [
    "DEFAULT_EXCLUDE",
    "MODEL_SIZES",
    "ModelSize",
    "OneStepTrainModel",
    "TrainConfig",
    "TrainResult",
    "alpha_bar",
    "find_images",
    "load_model_weights",
    "prepare_data",
    "save_model",
    "ssim",
    "train",
]

#: never trained on: the planar evaluation sets and the ERP evaluation photo (issue 5, item 4)
#: Every evaluation set of ../shared/data/sr (SOURCES.md) and the ERP evaluation photo.
DEFAULT_EXCLUDE: tuple[str, ...] = ("Set5", "Set14", "BSD100", "Kodak24", "McMaster", "pannellum_examplepano.jpg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PROMPT_KEY = "prompt_embeds"
PROMPT_TOKENS = 77
SCALING_FACTOR = 0.18215

# ---------------------------------------------------------------------------------------------
# model


@dataclass(frozen=True)
class ModelSize:
    """Widths of the SD-shaped model (SD2.1-base block types, linear projections, 4 levels)."""

    unet_channels: tuple[int, int, int, int]
    unet_heads: tuple[int, int, int, int]
    unet_layers: int
    unet_groups: int
    cross_attention_dim: int
    vae_channels: tuple[int, int, int, int]
    vae_layers: int
    vae_groups: int

    def unet_config(self) -> dict[str, Any]:
        from osr_export.synthetic import unet_config

        cfg = unet_config("tiny")
        cfg.update(block_out_channels=list(self.unet_channels), attention_head_dim=list(self.unet_heads),
                   layers_per_block=self.unet_layers, norm_num_groups=self.unet_groups,
                   cross_attention_dim=self.cross_attention_dim, sample_size=32)
        return cfg

    def vae_config(self) -> dict[str, Any]:
        from osr_export.synthetic import vae_config

        cfg = vae_config("tiny")
        cfg.update(block_out_channels=list(self.vae_channels), layers_per_block=self.vae_layers,
                   norm_num_groups=self.vae_groups, sample_size=256, scaling_factor=SCALING_FACTOR)
        return cfg


#: "edge": ≈ 8.5 M parameters (≈ 17 MB as fp16 ONNX), a 16-channel full-resolution VAE level so a
#: 1024×512 → 4096×2048 ERP fits the 2-core CPU budget; "tiny": for tests
MODEL_SIZES: dict[str, ModelSize] = {
    "edge": ModelSize(unet_channels=(32, 64, 128, 128), unet_heads=(1, 2, 4, 4), unet_layers=1, unet_groups=16,
                      cross_attention_dim=64, vae_channels=(16, 32, 64, 128), vae_layers=1, vae_groups=8),
    "tiny": ModelSize(unet_channels=(8, 16, 16, 16), unet_heads=(1, 2, 2, 2), unet_layers=1, unet_groups=4,
                      cross_attention_dim=8, vae_channels=(8, 8, 16, 16), vae_layers=1, vae_groups=4),
}


def alpha_bar(timestep: int) -> float:
    """ᾱ_t of SD2.1-base's schedule (scaled_linear betas 0.00085…0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2  # as diffusers does
    return float(torch.cumprod(1.0 - betas, 0)[timestep])


class OneStepTrainModel(nn.Module):
    """VAE + UNet + learned prompt; `forward` returns the losses' ingredients for one batch."""

    def __init__(self, size: ModelSize, timestep: int, prompt: Literal["learned", "zero"] = "learned") -> None:
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel

        self.vae = AutoencoderKL.from_config(size.vae_config())
        self.unet = UNet2DConditionModel.from_config(size.unet_config())
        embeds = torch.zeros(1, PROMPT_TOKENS, size.cross_attention_dim)
        self.prompt = nn.Parameter(embeds, requires_grad=prompt == "learned")
        self.timestep = int(timestep)
        ab = alpha_bar(self.timestep)
        self.sqrt_ab, self.sqrt_1mab = ab**0.5, (1.0 - ab) ** 0.5

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean × scaling and log-variance of ``image`` (N,3,H,W) in [0,1]."""
        moments = self.vae.quant_conv(self.vae.encoder(image * 2.0 - 1.0))
        mean, logvar = moments.chunk(2, dim=1)
        return mean * SCALING_FACTOR, logvar.clamp(-30.0, 20.0)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Decoder output mapped to [0,1] (not clamped, so gradients flow)."""
        return self.vae.decoder(self.vae.post_quant_conv(latent / SCALING_FACTOR)) * 0.5 + 0.5

    def to_x0(self, z: torch.Tensor) -> torch.Tensor:
        t = torch.full((z.shape[0],), self.timestep, device=z.device, dtype=torch.long)
        eps = self.unet(z, t, encoder_hidden_states=self.prompt.expand(z.shape[0], -1, -1)).sample
        return (z - self.sqrt_1mab * eps) / self.sqrt_ab

    def forward(self, lq_up: torch.Tensor, hq: torch.Tensor) -> dict[str, torch.Tensor]:
        z_l, _ = self.encode(lq_up)
        x0 = self.to_x0(z_l)
        z_h, logvar_h = self.encode(hq)
        return {"sr": self.decode(x0), "x0": x0, "z_h": z_h, "logvar_h": logvar_h, "recon": self.decode(z_h)}


def save_model(model: OneStepTrainModel, folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Path:
    """Write ``unet/ vae/ scheduler/ prompt_embedding.safetensors`` (the layout `export_bundle` reads)."""
    from safetensors.torch import save_file

    from osr_export.synthetic import SCHEDULER_CONFIG

    folder = Path(folder)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    _rmtree(staging)
    staging.mkdir(parents=True)
    for name, module in (("unet", model.unet), ("vae", model.vae)):
        sub = staging / name
        sub.mkdir()
        config = dict(module.config)
        config["_class_name"] = type(module).__name__
        (sub / "config.json").write_text(json.dumps(config, indent=2, default=list))
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(sub / "diffusion_pytorch_model.safetensors"))
        (sub / "diffusion_pytorch_model.safetensors").chmod(0o644)
    (staging / "scheduler").mkdir()
    (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    save_file({PROMPT_KEY: model.prompt.detach().to("cpu", torch.float32).contiguous()},
              str(staging / "prompt_embedding.safetensors"))
    (staging / "model_index.json").write_text(json.dumps({
        "_class_name": "OsrOneStepModel", "timestep": model.timestep,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }, indent=2))
    _rmtree(folder)
    staging.rename(folder)
    return folder


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# losses


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Mean SSIM of two (N,C,H,W) images in [0,1] (Gaussian window, σ 1.5, no padding)."""
    c = a.shape[1]
    w = _gaussian_window(window).to(a.device, a.dtype)[None, None].repeat(c, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


# ---------------------------------------------------------------------------------------------
# data


def find_images(folders: Sequence[str | os.PathLike[str]], exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[Path]:
    """Image files under ``folders`` (recursively, sorted), minus any whose path has a component
    (folder or file name) equal to an entry of ``exclude`` (case-insensitive)."""
    banned = {e.lower() for e in exclude}
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise ExportError(f"training data folder {folder} does not exist")
        paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        for p in paths:
            if p.suffix.lower() in IMAGE_SUFFIXES and not banned & {part.lower() for part in p.parts}:
                found.append(p)
    return sorted(set(found))


class DegradedCrops(torch.utils.data.Dataset):
    """Item ``i`` (global sample number) → (bicubic-up LQ, HQ) crops, a pure function of (seed, i)."""

    def __init__(self, images: list[np.ndarray], crop: int, scale: int, seed: int) -> None:
        self.images, self.crop, self.scale, self.seed = images, crop, scale, seed

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[:2]
        y, x = int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1))
        hq = img[y: y + self.crop, x: x + self.crop]
        hq = np.rot90(hq, int(rng.integers(4)))
        if rng.random() < 0.5:
            hq = hq[:, ::-1]
        hq = np.ascontiguousarray(hq)
        lq = degrade(hq, seed=int(rng.integers(2**31)), scale=self.scale)
        hq_t = torch.from_numpy(hq).permute(2, 0, 1).float() / 255.0
        lq_t = torch.from_numpy(lq).permute(2, 0, 1).float() / 255.0
        lq_up = F.interpolate(lq_t[None], size=hq_t.shape[-2:], mode="bicubic", align_corners=False)[0]
        return lq_up.clamp(0.0, 1.0), hq_t


class _StepSampler(torch.utils.data.Sampler[int]):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


def _load_images(paths: list[Path], crop: int) -> tuple[list[np.ndarray], list[Path]]:
    images, skipped = [], []
    for p in paths:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        if min(arr.shape[:2]) < crop:
            skipped.append(p)
        else:
            images.append(arr)
    return images, skipped


def prepare_data(sources: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str],
                 exclude: Sequence[str] = DEFAULT_EXCLUDE, min_side: int = 256) -> dict[str, Any]:
    """Copy the training images under ``sources`` (minus ``exclude``, minus images smaller than
    ``min_side``) into ``dest`` as lossless WebP (about 2/3 of PNG, so the set travels to the
    device machine), keeping one sub-folder per source set; returns a summary (files, bytes)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written, skipped, total = [], [], 0
    for src in sources:
        src = Path(src)
        for path in find_images([src], exclude):
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            if min(rgb.size) < min_side:
                skipped.append(str(path))
                continue
            rel = path.relative_to(src).with_suffix(".webp")
            target = dest / src.name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            rgb.save(target, format="WEBP", lossless=True, quality=100, method=4)
            written.append(str(target))
            total += target.stat().st_size
    summary = {"files": len(written), "bytes": total, "skipped_small": skipped, "exclude": list(exclude)}
    (dest / "manifest.json").write_text(json.dumps({**summary, "written": written}, indent=2))
    return summary


# ---------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of `train` (the flags of ``osr-export train``)."""

    data: tuple[str, ...]
    out: str
    size: str = "edge"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    crop: int = 256
    scale: int = 4
    batch_size: int = 16
    #: optimizer steps per degraded batch, each on another flip/rotation of it (GPU-side): more
    #: steps per second when the CPU degradation, not the GPU, limits the rate
    batch_repeats: int = 1
    max_steps: int = 20000
    lr: float = 2e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    timestep: int = 273
    prompt: Literal["learned", "zero"] = "learned"
    w_l1: float = 1.0
    w_ssim: float = 0.2
    w_latent: float = 0.1
    w_recon: float = 0.5
    w_kl: float = 1e-6
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int = 4
    log_every: int = 10
    checkpoint_every: int = 500
    time_limit_s: float | None = None
    save_dtype: Literal["fp32", "fp16"] = "fp32"
    #: warm start: a ``model/`` folder of an earlier run (weights only; fresh optimizer and schedule)
    init: str | None = None


@dataclass
class TrainResult:
    step: int
    finished: bool
    out: Path
    model_dir: Path
    last_losses: dict[str, float] = field(default_factory=dict)


def _check_config(c: TrainConfig) -> None:
    if c.size not in MODEL_SIZES:
        raise ExportError(f"unknown model size {c.size!r}; choose one of {sorted(MODEL_SIZES)}")
    if c.crop < 8 * c.scale or c.crop % 8 or (c.crop // c.scale) < 2:
        raise ExportError(f"crop must be a multiple of 8 and at least {8 * c.scale}, got {c.crop}")
    if c.batch_size < 1 or c.batch_repeats < 1 or c.max_steps < 0 or c.lr <= 0:
        raise ExportError(f"batch_size >= 1, batch_repeats >= 1, max_steps >= 0 and lr > 0 are needed, got "
                          f"{c.batch_size}, {c.batch_repeats}, {c.max_steps}, {c.lr}")
    if not 0 <= c.timestep < 1000:
        raise ExportError(f"timestep must lie in [0, 1000), got {c.timestep}")
    if c.prompt not in ("learned", "zero") or c.save_dtype not in ("fp32", "fp16"):
        raise ExportError(f"prompt must be learned|zero and save_dtype fp32|fp16, got {c.prompt}, {c.save_dtype}")


def _lr_lambda(c: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _losses(c: TrainConfig, out: dict[str, torch.Tensor], hq: torch.Tensor) -> dict[str, torch.Tensor]:
    sr, recon = out["sr"].float(), out["recon"].float()
    z_h, logvar = out["z_h"].float(), out["logvar_h"].float()
    parts = {
        "l1": F.l1_loss(sr, hq),
        "ssim": 1.0 - ssim(sr.clamp(0, 1), hq) if c.w_ssim else sr.new_zeros(()),
        "latent": F.mse_loss(out["x0"].float(), z_h.detach()),
        "recon": F.l1_loss(recon, hq),
        "kl": 0.5 * torch.mean((z_h / SCALING_FACTOR) ** 2 + logvar.exp() - 1.0 - logvar),
    }
    parts["loss"] = (c.w_l1 * parts["l1"] + c.w_ssim * parts["ssim"] + c.w_latent * parts["latent"]
                     + c.w_recon * parts["recon"] + c.w_kl * parts["kl"])
    return parts


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                     c: TrainConfig) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "lr_schedule": sched.state_dict(), "rng": _rng_state(), "config": asdict(c)}, tmp)
    os.replace(tmp, path)


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be logged again)."""
    if not log.exists():
        return
    keep = [ln for ln in log.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    log.write_text("".join(ln + "\n" for ln in keep))


def _dihedral(batch: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """One of the 8 flips/rotations of a (N,C,H,W) batch, a pure function of (seed, step)."""
    k = int(np.random.default_rng([seed, step, 8]).integers(8))
    batch = torch.rot90(batch, k % 4, dims=(-2, -1))
    return batch.flip(-1) if k >= 4 else batch


def load_model_weights(model: OneStepTrainModel, folder: str | os.PathLike[str]) -> None:
    """Load ``unet/ vae/ prompt_embedding.safetensors`` written by `save_model` into ``model``
    (same size; raises `ExportError` on a missing file or a shape mismatch)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        for name, module in (("unet", model.unet), ("vae", model.vae)):
            state = load_file(str(folder / name / "diffusion_pytorch_model.safetensors"))
            module.load_state_dict({k: v.float() for k, v in state.items()})
        prompt = load_file(str(folder / "prompt_embedding.safetensors"))[PROMPT_KEY]
        with torch.no_grad():
            model.prompt.copy_(prompt)
    except (OSError, RuntimeError, KeyError) as exc:
        raise ExportError(f"cannot warm-start from {folder}: {exc}") from exc


def train(config: TrainConfig, progress: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train (or resume, when ``config.out/checkpoint.pt`` exists) until ``max_steps`` or the time limit.

    Returns where it stopped; the model folder is written at every stop.
    """
    _check_config(config)
    start_time = time.monotonic()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path, model_dir = out / "checkpoint.pt", out / "log.jsonl", out / "model"
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    # 1. data
    paths = find_images(config.data, config.exclude)
    images, skipped = _load_images(paths, config.crop)
    if not images:
        raise ExportError(f"no training image of at least {config.crop}×{config.crop} px under {list(config.data)} "
                          f"({len(paths)} found, {len(skipped)} too small); lower --crop or add data")
    # 2. model, optimizer, schedule
    model = OneStepTrainModel(MODEL_SIZES[config.size], config.timestep, config.prompt).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
    step = 0
    # 3. resume
    if ckpt_path.exists():
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves weights and moments
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own file (numpy RNG state)
        if ckpt["config"]["size"] != config.size or ckpt["config"]["timestep"] != config.timestep:
            raise ExportError(f"{ckpt_path} is a {ckpt['config']['size']!r} model at t*={ckpt['config']['timestep']};"
                              f" it cannot resume as {config.size!r} at t*={config.timestep} (use another --out)")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["lr_schedule"])
        _set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        del ckpt
    elif config.init is not None:
        load_model_weights(model, config.init)
    _trim_log(log_path, step)
    (out / "config.json").write_text(json.dumps({**asdict(config), "images": len(images),
                                                 "skipped_small": [str(p) for p in skipped]}, indent=2))
    # 4. loop
    loader = torch.utils.data.DataLoader(
        DegradedCrops(images, config.crop, config.scale, config.seed), batch_size=config.batch_size,
        sampler=_StepSampler(step // config.batch_repeats * config.batch_size), num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    use_amp = config.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest convolutions
    model.train()
    last: dict[str, float] = {}
    finished = step >= config.max_steps
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader) if not finished else iter(())
    pair, data_wait = torch.empty(0), 0.0
    with open(log_path, "a") as log:
        while step < config.max_steps:
            if config.time_limit_s is not None and time.monotonic() - start_time > config.time_limit_s:
                break
            if step % config.batch_repeats == 0 or not len(pair):  # a new degraded batch
                t0 = time.monotonic()
                pair = torch.cat(next(batches), dim=1).to(device, non_blocking=True)  # (N, 6, H, W)
                data_wait += time.monotonic() - t0
            batch = pair if step % config.batch_repeats == 0 else _dihedral(pair, step, config.seed)
            lq_up, hq = batch[:, :3], batch[:, 3:]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs = model(lq_up, hq)
            parts = _losses(config, outputs, hq)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            if step % config.log_every == 0 or step == config.max_steps:
                last = {k: round(float(v.detach()), 6) for k, v in parts.items()}
                entry = {"step": step, **last, "grad_norm": round(float(grad_norm), 4),
                         "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.monotonic() - start_time, 2),
                         "data_wait_s": round(data_wait, 2)}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                if progress is not None:
                    progress(entry)
            if step % config.checkpoint_every == 0:
                _save_checkpoint(ckpt_path, step, model, opt, sched, config)
        finished = step >= config.max_steps
    del batches, loader
    # 5. checkpoint and model folder at every stop
    _save_checkpoint(ckpt_path, step, model, opt, sched, config)
    save_model(model, model_dir, torch.float16 if config.save_dtype == "fp16" else torch.float32)
    (out / "state.json").write_text(json.dumps({"step": step, "finished": finished, "last": last}, indent=2))
    return TrainResult(step=step, finished=finished, out=out, model_dir=model_dir, last_losses=last)


def config_with(config: TrainConfig, **changes: Any) -> TrainConfig:
    """``dataclasses.replace`` for `TrainConfig` (tuples for ``data`` / ``exclude``)."""
    for key in ("data", "exclude"):
        if key in changes:
            changes[key] = tuple(str(x) for x in changes[key])
    return replace(config, **changes)
