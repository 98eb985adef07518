"""Load a diffusers-layout base model, the OMGSR-S LoRA adapters and the constant prompt embedding.

Weights are read as safetensors. Pickled checkpoints (.bin, .ckpt, .pt, .pth) can run code when
unpickled: they are refused unless ``allow_pickle=True``, and then read with
``torch.load(weights_only=True)`` only. Every file read is hashed into a `Sources` record that the
bundle manifest keeps.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from osr_runtime.bundle import sha256_file
from torch import nn

from osr_export.errors import (
    ExportError,
    LoraMismatchError,
    MissingComponentError,
    PickleRefusedError,
    PromptEmbeddingError,
    UnknownSchedulerError,
)

__all__ = [
    "KNOWN_SCHEDULERS",
    "LORA_SUBFOLDERS",
    "PICKLE_SUFFIXES",
    "LoraAdapter",
    "NoiseSchedule",
    "Sources",
    "encode_prompt",
    "inject_lora",
    "load_lora",
    "load_prompt_embedding",
    "load_schedule",
    "load_state_dict_file",
    "load_unet",
    "load_vae",
    "lora_adapter_dir",
]

PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".ckpt", ".pt", ".pth")
#: the adapter folders of an OMGSR-S LoRA release, by the model part they adapt
LORA_SUBFOLDERS: dict[str, str] = {"unet": "unet_lora_adapter", "vae_encoder": "vae_encoder_lora_adapter"}
#: schedulers of the DDPM family: their betas (hence ᾱ) follow the same config keys
KNOWN_SCHEDULERS: tuple[str, ...] = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
)
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_WEIGHT_STEMS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}


@dataclass
class Sources:
    """Files read from one source folder: relative path -> sha256."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)

    def add(self, path: Path) -> Path:
        self.files[path.resolve().relative_to(self.root.resolve()).as_posix()] = sha256_file(path)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.root.resolve()), "files": dict(sorted(self.files.items()))}


# ---------------------------------------------------------------------------------------------
# weights files


def load_state_dict_file(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a pickled checkpoint read with ``weights_only=True``."""
    path = Path(path)
    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ExportError(f"cannot read safetensors file {path}: {exc}") from exc
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise PickleRefusedError(
                f"{path} is a pickled checkpoint, and unpickling can run arbitrary code; "
                "convert it to .safetensors, or allow pickles (allow_pickle=True, --allow-pickle) "
                "to read it with torch.load(weights_only=True)"
            )
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise PickleRefusedError(
                f"torch.load(weights_only=True) refused {path}: it holds more than plain tensors "
                f"({exc.__class__.__name__}); convert it to .safetensors"
            ) from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
        ):
            raise ExportError(f"{path} is not a flat state dict of named tensors")
        return data
    raise ExportError(f"{path} has an unknown weights format (expected .safetensors)")


def _find_weights(folder: Path, stem: str, allow_pickle: bool) -> list[Path]:
    """The weights files of a component folder: plain, fp16 variant or sharded safetensors first."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise MissingComponentError(f"{folder} lacks the weight shards {missing} listed in {index.name}")
        return [folder / s for s in shards]
    pickled = sorted(p for p in folder.glob(f"{stem}*") if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        if not allow_pickle:
            load_state_dict_file(pickled[0], allow_pickle=False)  # raises PickleRefusedError
        return pickled[:1]
    raise MissingComponentError(
        f"{folder} has no weights: expected {stem}.safetensors (or a pickled {stem}.bin with --allow-pickle)"
    )


def _component_dir(base: Path, name: str) -> Path:
    folder = Path(base) / name
    if not folder.is_dir():
        raise MissingComponentError(
            f"base model {base} lacks the {name}/ component; expected the diffusers folder layout "
            "(unet/ vae/ text_encoder/ tokenizer/ scheduler/)"
        )
    return folder


def _read_json(path: Path, sources: Sources | None) -> dict[str, Any]:
    if not path.is_file():
        raise MissingComponentError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path} must hold a JSON object")
    if sources is not None:
        sources.add(path)
    return data


def _load_diffusers_model(cls: Any, folder: Path, sources: Sources, allow_pickle: bool) -> Any:
    """Build ``cls`` from ``folder/config.json`` on the meta device and assign its weights."""
    config = _read_json(folder / "config.json", sources)
    expected = cls.__name__
    if config.get("_class_name", expected) != expected:
        raise ExportError(f"{folder}/config.json describes a {config['_class_name']}, expected {expected}")
    state: dict[str, torch.Tensor] = {}
    for path in _find_weights(folder, _WEIGHT_STEMS["diffusers"], allow_pickle):
        state.update(load_state_dict_file(sources.add(path), allow_pickle=allow_pickle))
    with torch.device("meta"):
        model = cls.from_config(config)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # size mismatches
        raise ExportError(f"weights in {folder} do not fit its config.json: {exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"weights in {folder} do not fit its config.json: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected)"
        )
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ExportError(f"{folder}: tensors {meta[:5]} were not loaded")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)
    return model.eval().requires_grad_(False)


def load_unet(base: Path, sources: Sources, *, allow_pickle: bool = False) -> Any:
    """The base ``UNet2DConditionModel`` (fp32, eval) from ``base/unet``."""
    from diffusers import UNet2DConditionModel

    return _load_diffusers_model(UNet2DConditionModel, _component_dir(base, "unet"), sources, allow_pickle)


def load_vae(base: Path, sources: Sources, *, allow_pickle: bool = False) -> Any:
    """The base ``AutoencoderKL`` (fp32, eval) from ``base/vae``."""
    from diffusers import AutoencoderKL

    return _load_diffusers_model(AutoencoderKL, _component_dir(base, "vae"), sources, allow_pickle)


# ---------------------------------------------------------------------------------------------
# scheduler


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule read from ``scheduler/scheduler_config.json``."""

    class_name: str
    prediction_type: str
    alphas_cumprod: tuple[float, ...]

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, timestep: int) -> float:
        """ᾱ at ``timestep``; raises `ExportError` outside [0, num_train_timesteps)."""
        if not 0 <= timestep < self.num_train_timesteps:
            raise ExportError(
                f"timestep {timestep} is outside the scheduler's range [0, {self.num_train_timesteps})"
            )
        return self.alphas_cumprod[timestep]


def load_schedule(base: Path, sources: Sources | None = None) -> NoiseSchedule:
    """ᾱ_t for every training timestep, computed by diffusers from the scheduler config."""
    folder = _component_dir(base, "scheduler")
    config = _read_json(folder / "scheduler_config.json", sources)
    name = config.get("_class_name")
    if name not in KNOWN_SCHEDULERS:
        raise UnknownSchedulerError(
            f"unknown scheduler {name!r} in {folder}/scheduler_config.json; known DDPM-family "
            f"schedulers: {', '.join(KNOWN_SCHEDULERS)}"
        )
    beta_schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is None and beta_schedule not in _BETA_SCHEDULES:
        raise UnknownSchedulerError(
            f"unknown beta_schedule {beta_schedule!r} in {folder}; known: {_BETA_SCHEDULES}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise UnknownSchedulerError(f"unknown prediction_type {prediction!r} in {folder}")
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    ddpm = DDPMScheduler(**{k: config[k] for k in keys if k in config})
    alphas_cumprod: torch.Tensor = ddpm.alphas_cumprod  # type: ignore[attr-defined]
    alphas = tuple(float(a) for a in alphas_cumprod.to(torch.float64))
    return NoiseSchedule(class_name=name, prediction_type=prediction, alphas_cumprod=alphas)


# ---------------------------------------------------------------------------------------------
# prompt embedding


def encode_prompt(base: Path, prompt: str, sources: Sources, *, allow_pickle: bool = False) -> torch.Tensor:
    """Run the base model's tokenizer and CLIP text encoder once: (1, L, D) fp32 (L = 77 for SD)."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    tok_dir = _component_dir(base, "tokenizer")
    te_dir = _component_dir(base, "text_encoder")
    for p in sorted(tok_dir.iterdir()):
        if p.is_file():
            sources.add(p)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MissingComponentError(f"cannot load the tokenizer from {tok_dir}: {exc}") from exc
    _read_json(te_dir / "config.json", sources)
    config = CLIPTextConfig.from_pretrained(str(te_dir), local_files_only=True)
    state: dict[str, torch.Tensor] = {}
    for path in _find_weights(te_dir, _WEIGHT_STEMS["transformers"], allow_pickle):
        state.update(load_state_dict_file(sources.add(path), allow_pickle=allow_pickle))
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]
    with no_init_weights():  # every weight is loaded below
        model = CLIPTextModel(config)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ExportError(f"weights in {te_dir} do not fit its config.json: {exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"weights in {te_dir} do not fit its config.json: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.eval()  # load_state_dict copied the weights into fp32 parameters
    ids = tokenizer(
        prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        embedding = model(ids)[0]
    return embedding.detach().to(torch.float32).contiguous()


def load_prompt_embedding(path: Path, cross_attention_dim: int, *, allow_pickle: bool = False) -> torch.Tensor:
    """A saved prompt embedding: one (1, 77, D) tensor with D the UNet's cross-attention dim."""
    path = Path(path)
    if not path.is_file():
        raise MissingComponentError(f"prompt embedding file {path} does not exist")
    tensors = load_state_dict_file(path, allow_pickle=allow_pickle)
    if len(tensors) != 1:
        raise PromptEmbeddingError(
            f"{path} must hold exactly one tensor (the (1, 77, {cross_attention_dim}) prompt "
            f"embedding), it holds {len(tensors)}: {sorted(tensors)[:5]}"
        )
    (tensor,) = tensors.values()
    if tuple(tensor.shape) != (1, 77, cross_attention_dim) or not tensor.is_floating_point():
        raise PromptEmbeddingError(
            f"{path} holds a {tuple(tensor.shape)} {tensor.dtype} tensor; the UNet needs a float "
            f"(1, 77, {cross_attention_dim}) prompt embedding"
        )
    if not torch.isfinite(tensor).all():
        raise PromptEmbeddingError(f"{path} holds non-finite values")
    return tensor.to(torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------
# LoRA


@dataclass
class LoraAdapter:
    """One PEFT LoRA adapter folder, read and checked against the model it adapts."""

    folder: Path
    config: Any  # peft.LoraConfig
    state: dict[str, torch.Tensor]
    modules: tuple[str, ...]  # the model's module names the adapter modifies


def lora_adapter_dir(lora: Path, part: str) -> Path:
    """``lora/unet_lora_adapter`` or ``lora/vae_encoder_lora_adapter``, checked to exist."""
    folder = Path(lora) / LORA_SUBFOLDERS[part]
    if not folder.is_dir():
        raise MissingComponentError(
            f"LoRA release {lora} lacks {LORA_SUBFOLDERS[part]}/; expected the OMGSR-S layout "
            f"({', '.join(s + '/' for s in LORA_SUBFOLDERS.values())}, each with adapter_config.json "
            "and adapter_model.safetensors)"
        )
    return folder


def load_lora(folder: Path, model: nn.Module, sources: Sources, *, allow_pickle: bool = False) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder and check it fits ``model`` (targets, keys, ranks, shapes)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    folder = Path(folder)
    raw = _read_json(folder / "adapter_config.json", sources)
    if raw.get("peft_type", "LORA") != "LORA":
        raise LoraMismatchError(f"{folder} holds a {raw.get('peft_type')} adapter, not LoRA")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, OSError) as exc:
        raise LoraMismatchError(f"cannot read {folder}/adapter_config.json: {exc}") from exc
    if getattr(config, "use_dora", False) or config.bias != "none":
        raise LoraMismatchError(f"{folder}: DoRA and LoRA biases are not supported (plain LoRA only)")
    weights = [folder / n for n in ("adapter_model.safetensors",) if (folder / n).is_file()]
    if not weights:
        weights = sorted(p for p in folder.glob("adapter_model*") if p.suffix in PICKLE_SUFFIXES)
    if not weights:
        raise MissingComponentError(f"{folder} lacks adapter_model.safetensors")
    state = load_state_dict_file(sources.add(weights[0]), allow_pickle=allow_pickle)

    targeted = {}
    for name, module in model.named_modules():
        match = name and check_target_module_exists(config, name)
        if match and type(match).__name__ != "_ExcludedModule":
            targeted[name] = module
    if not targeted:
        raise LoraMismatchError(
            f"the targets {sorted(config.target_modules or [])} of {folder} match no module of the "
            f"{type(model).__name__}: this adapter belongs to another model"
        )
    prefix = "base_model.model."
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise LoraMismatchError(
                f"{folder}: unexpected key {key!r}; a PEFT LoRA adapter has keys "
                f"'{prefix}<module>.lora_A.weight' and '.lora_B.weight'"
            )
        module_name, ab = key[len(prefix) : -len(".weight")].rsplit(".", 1)
        found.setdefault(module_name, {})[ab] = tensor
    not_targeted = sorted(set(found) - set(targeted))
    if not_targeted:
        raise LoraMismatchError(
            f"{folder} has weights for {len(not_targeted)} modules that its targets do not select "
            f"in this model or that do not exist: {not_targeted[:5]}"
        )
    lacking = sorted(n for n in targeted if set(found.get(n, {})) != {"lora_A", "lora_B"})
    if lacking:
        raise LoraMismatchError(
            f"{folder} lacks lora_A/lora_B weights for {len(lacking)} targeted modules: {lacking[:5]}"
        )
    for name, module in targeted.items():
        _check_lora_shapes(folder, name, module, found[name]["lora_A"], found[name]["lora_B"], config)
    return LoraAdapter(folder=folder, config=config, state=state, modules=tuple(sorted(targeted)))


def _check_lora_shapes(folder: Path, name: str, module: nn.Module, a: torch.Tensor, b: torch.Tensor,
                       config: Any) -> None:
    r = a.shape[0]
    want_a: tuple[int, ...]
    want_b: tuple[int, ...]
    if isinstance(module, nn.Linear):
        want_a, want_b = (r, module.in_features), (module.out_features, r)
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise LoraMismatchError(f"{folder}: LoRA on grouped conv {name} is not supported")
        want_a = (r, module.in_channels, *module.kernel_size)
        want_b = (module.out_channels, r, 1, 1)
    else:
        raise LoraMismatchError(
            f"{folder} targets {name}, a {type(module).__name__}; LoRA fits Linear and Conv2d only"
        )
    if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
        raise LoraMismatchError(
            f"{folder}: LoRA shapes for {name} are A{tuple(a.shape)} B{tuple(b.shape)}, the "
            f"{type(module).__name__} needs A{want_a} B{want_b}"
        )
    if not config.rank_pattern and r != config.r:
        raise LoraMismatchError(f"{folder}: {name} has LoRA rank {r}, adapter_config.json says r={config.r}")


def inject_lora(model: nn.Module, adapter: LoraAdapter) -> Any:
    """Wrap ``model`` in a PeftModel holding the adapter's weights (unmerged, active)."""
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict

    peft_model = PeftModel(model, adapter.config)
    result: Any = set_peft_model_state_dict(peft_model, adapter.state)
    if result.unexpected_keys:
        raise LoraMismatchError(f"{adapter.folder}: PEFT did not take keys {result.unexpected_keys[:5]}")
    lora_missing = [k for k in result.missing_keys if "lora_" in k]
    if lora_missing:
        raise LoraMismatchError(f"{adapter.folder}: PEFT found no weights for {lora_missing[:5]}")
    return peft_model.eval()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| (the scale-free error used by every check here)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = max(float(ref64.abs().max()), 1e-12)
    err = float((out64 - ref64).abs().max()) / denom
    return err if math.isfinite(err) else float("inf")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()
