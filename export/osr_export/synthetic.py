"""Synthetic SD2.1-base models with random weights, saved in the diffusers and OMGSR-S layouts.

For tests and benchmarks (no network, no real weights): `write_base_model` writes unet/ vae/
text_encoder/ tokenizer/ scheduler/ with the SD2.1-base structure (block types, linear
projections, cross-attention) either at full size (865 M-parameter UNet) or with tiny widths;
`write_omgsr_lora` writes PEFT adapters with OMGSR-S's targets and ranks exactly as its training
code saves them (``PeftModel(..., adapter_name=...).save_pretrained(dir)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "OMGSR_TARGETS",
    "SCHEDULER_CONFIG",
    "text_encoder_config",
    "unet_config",
    "vae_config",
    "write_base_model",
    "write_omgsr_lora",
    "write_prompt_embedding",
]

Size = Literal["tiny", "full"]

#: OMGSR-S's LoRA target modules (UNet and VAE encoder alike)
OMGSR_TARGETS: list[str] = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out",
                            "to_k", "to_q", "to_v", "to_out.0"]

_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

#: SD2.1-base's scheduler config (PNDM, scaled_linear betas 0.00085..0.012, ε-prediction)
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def unet_config(size: Size = "tiny") -> dict[str, Any]:
    """SD2.1-base's UNet2DConditionModel config; "tiny" keeps the structure, shrinks widths."""
    full = size == "full"
    return {
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20] if full else [1, 2, 4, 4],
        "block_out_channels": [320, 640, 1280, 1280] if full else [16, 32, 32, 32],
        "center_input_sample": False,
        "cross_attention_dim": 1024 if full else 32,
        "down_block_types": list(_DOWN),
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32 if full else 8,
        "out_channels": 4,
        "sample_size": 64 if full else 8,
        "up_block_types": list(_UP),
        "use_linear_projection": True,
    }


def vae_config(size: Size = "tiny") -> dict[str, Any]:
    """SD2.1-base's AutoencoderKL config; "tiny" shrinks widths."""
    full = size == "full"
    return {
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512] if full else [16, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32 if full else 8,
        "out_channels": 3,
        "sample_size": 768 if full else 64,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_encoder_config(size: Size = "tiny") -> dict[str, Any]:
    """SD2.1's OpenCLIP ViT-H text encoder as a CLIPTextConfig (23 layers); "tiny" shrinks it."""
    full = size == "full"
    return {
        "hidden_size": 1024 if full else 32,
        "intermediate_size": 4096 if full else 64,
        "num_hidden_layers": 23 if full else 2,
        "num_attention_heads": 16 if full else 4,
        "max_position_embeddings": 77,
        "vocab_size": 49408 if full else 1000,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-05,
        "projection_dim": 512 if full else 32,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }


def _save_diffusers(model: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = dict(model.config)
    config["_class_name"] = type(model).__name__
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=list))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def _write_tokenizer(folder: Path) -> None:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77)
    tokenizer.save_pretrained(str(folder))


def write_base_model(folder: str | Path, size: Size = "tiny", *, seed: int = 0,
                     with_text_encoder: bool = True) -> Path:
    """Write a random-weight SD2.1-base-structured model in the diffusers folder layout.

    Components are built and freed one at a time (the full UNet alone is 3.5 GB in fp32).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_config(size))
    _save_diffusers(unet, folder / "unet")
    del unet
    vae = AutoencoderKL.from_config(vae_config(size))
    _save_diffusers(vae, folder / "vae")
    del vae
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    if with_text_encoder:
        from safetensors.torch import save_file
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig(**text_encoder_config(size))
        te = CLIPTextModel(config)
        (folder / "text_encoder").mkdir(exist_ok=True)
        config.save_pretrained(str(folder / "text_encoder"))
        save_file({k: v.contiguous() for k, v in te.state_dict().items()},
                  str(folder / "text_encoder" / "model.safetensors"))
        del te
        _write_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    return folder


def write_omgsr_lora(base: str | Path, folder: str | Path, *, unet_rank: int = 32, vae_rank: int = 16,
                     seed: int = 0, b_std: float = 0.02) -> Path:
    """Write OMGSR-S-style LoRA adapters for the base model at ``base``.

    As OMGSR's training code does: ``PeftModel(model, LoraConfig(r, lora_alpha=r,
    target_modules=OMGSR_TARGETS, init_lora_weights="gaussian"), adapter_name=...)`` then
    ``save_pretrained(folder)``, which writes ``folder/<adapter_name>/adapter_config.json`` and
    ``adapter_model.safetensors``. lora_B is randomised (N(0, b_std)) so that merging matters.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, PeftModel

    base, folder = Path(base), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def save(model: Any, rank: int, name: str) -> None:
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(OMGSR_TARGETS),
                            init_lora_weights="gaussian")
        peft_model = PeftModel(model=model, peft_config=config, adapter_name=name)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if ".lora_B." in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * b_std)
        peft_model.save_pretrained(str(folder))

    # meta-free but cheap: build from config, weights are irrelevant to the adapter
    unet = UNet2DConditionModel.from_config(json.loads((base / "unet" / "config.json").read_text()))
    save(unet, unet_rank, "unet_lora_adapter")
    del unet
    vae = AutoencoderKL.from_config(json.loads((base / "vae" / "config.json").read_text()))
    save(vae.encoder, vae_rank, "vae_encoder_lora_adapter")
    return folder


def write_prompt_embedding(path: str | Path, dim: int, *, seed: int = 0, name: str = "prompt_embeds") -> Path:
    """A random (1, 77, dim) prompt embedding saved as safetensors (for tests)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    save_file({name: torch.randn(1, 77, dim, generator=gen)}, str(path))
    return Path(path)
