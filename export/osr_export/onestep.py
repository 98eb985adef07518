"""The one-step super-resolution module (DESIGN.md §3) as three exportable torch modules.

    lq (N,3,H,W) in [0,1]
      -> `LqEncoder`   z  = mean(quant_conv(E(2·lq−1))) × scaling          (VAE encoder + its LoRA)
      -> `LatentToX0`  x0 = (z − √(1−ᾱ)·ε̂(z; t*, prompt)) / √ᾱ              (folded UNet at t*)
      -> `X0Decoder`   sr = colour_fix(clamp(D(post_quant_conv(x0/scaling)), −1, 1)·½+½, lq)

The UNet here is a `FoldedUNet`: the timestep embedding of t* is a constant buffer and every
cross-attention K/V of the constant prompt is precomputed, so no graph has a text or timestep
input. Attention is computed explicitly (scores, softmax, weighted sum) so the export names a
Softmax node that the fp16 conversion keeps in fp32.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from osr_export.errors import ExportError

__all__ = [
    "COLOR_FIXES",
    "ColorFix",
    "ExplicitAttnProcessor",
    "FoldedCrossAttnProcessor",
    "FoldedUNet",
    "LatentToX0",
    "LqEncoder",
    "OneStepSR",
    "X0Decoder",
    "adain_color_fix",
    "wavelet_color_fix",
]

ColorFix = Literal["adain", "wavelet", "none"]
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")


# ---------------------------------------------------------------------------------------------
# colour fix (StableSR / OMGSR), written with ops that export to ONNX with dynamic shapes


def adain_color_fix(target: torch.Tensor, source: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``target`` the per-channel mean and (population) std of ``source`` (both (N,C,H,W)).

    fp16-safe: the variances are means of squared deviations, with no pixel count in the graph.
    Both a sum over a 512² patch and the count itself (262,144) overflow fp16 (65504), and fp16
    graphs run this in fp16 on the GPU.
    """
    t = target.flatten(2)
    s = source.flatten(2)
    t_mean, s_mean = t.mean(-1, keepdim=True), s.mean(-1, keepdim=True)
    t_std = (((t - t_mean) ** 2).mean(-1, keepdim=True) + eps).sqrt()
    s_std = (((s - s_mean) ** 2).mean(-1, keepdim=True) + eps).sqrt()
    out = (t - t_mean) / t_std * s_std + s_mean
    return out.reshape(target.shape)


_WAVELET_KERNEL = ((0.0625, 0.125, 0.0625), (0.125, 0.25, 0.125), (0.0625, 0.125, 0.0625))


def _wavelet_kernel(channels: int, like: torch.Tensor | None = None) -> torch.Tensor:
    kernel = torch.tensor(_WAVELET_KERNEL, dtype=torch.float32)[None, None].repeat(channels, 1, 1, 1)
    return kernel if like is None else kernel.to(like.device, like.dtype)


def _wavelet_blur(image: torch.Tensor, radius: int, kernel: torch.Tensor) -> torch.Tensor:
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=kernel.shape[0], dilation=radius)


def _wavelet_decomposition(image: torch.Tensor, kernel: torch.Tensor, levels: int = 5
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        low = _wavelet_blur(image, 2**i, kernel)
        high = high + (image - low)
        image = low
    return high, low


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor, kernel: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """High frequencies of ``target`` plus the low frequencies of ``source`` (5-level à trous).

    ``kernel`` is the (C,1,3,3) blur kernel; pass a constant (a buffer) when tracing for export.
    """
    if kernel is None:
        kernel = _wavelet_kernel(target.shape[1], target)
    high, _ = _wavelet_decomposition(target, kernel)
    _, low = _wavelet_decomposition(source, kernel)
    return high + low


# ---------------------------------------------------------------------------------------------
# attention


class _AttnProcessorModule(nn.Module):
    """An ``nn.Module`` that diffusers ``Attention`` accepts as its processor."""

    # diffusers passes only the keyword arguments that the processor's __call__ names
    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)


class ExplicitAttnProcessor(_AttnProcessorModule):
    """Attention as matmul → softmax (in fp32) → matmul, for diffusers ``Attention`` modules.

    Equal to diffusers' SDPA processor up to rounding; used so that the exported graph has an
    explicit Softmax whose inputs the fp16 conversion keeps in fp32.
    """

    def forward(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_supported(attn, attention_mask)
        residual = hidden_states
        x, restore = _tokens(attn, hidden_states)
        context = x if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key_t, value = _project_kv(attn, context)
        out = _attend(attn, x, key_t, value)
        return _finish(attn, out, residual, restore)


class FoldedCrossAttnProcessor(_AttnProcessorModule):
    """Cross-attention on a constant context: K (pre-scaled, transposed) and V are buffers."""

    key_t: torch.Tensor
    value: torch.Tensor

    def __init__(self, attn: Any, context: torch.Tensor) -> None:
        super().__init__()
        with torch.no_grad():
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            key_t, value = _project_kv(attn, context)
        self.register_buffer("key_t", key_t.contiguous())  # (1, heads, head_dim, L)
        self.register_buffer("value", value.contiguous())  # (1, heads, L, head_dim)

    def forward(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Ignores ``encoder_hidden_states``: the context is the folded prompt."""
        _check_supported(attn, attention_mask)
        residual = hidden_states
        x, restore = _tokens(attn, hidden_states)
        out = _attend(attn, x, self.key_t, self.value)
        return _finish(attn, out, residual, restore)


def _check_supported(attn: Any, attention_mask: torch.Tensor | None) -> None:
    if attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None \
            or attn.norm_k is not None:
        raise ExportError("attention masks, spatial norms and q/k norms are not supported by the exporter")


def _tokens(attn: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    restore = None
    x = hidden_states
    if x.ndim == 4:
        restore = tuple(x.shape)
        x = x.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    return x, restore


def _project_kv(attn: Any, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head K (pre-scaled, transposed: (B, heads, head_dim, L)) and V ((B, heads, L, head_dim))."""
    key = attn.to_k(context)
    value = attn.to_v(context)
    heads = attn.heads
    head_dim = key.shape[-1] // heads
    key_t = key.unflatten(-1, (heads, head_dim)).permute(0, 2, 3, 1) * attn.scale
    return key_t, value.unflatten(-1, (heads, head_dim)).transpose(1, 2)


def _attend(attn: Any, x: torch.Tensor, key_t: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    query = attn.to_q(x)
    heads = attn.heads
    query = query.unflatten(-1, (heads, query.shape[-1] // heads)).transpose(1, 2)  # (B, h, L, d)
    scores = torch.matmul(query.float(), key_t.float())  # (B, h, L, S); kept in fp32
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, h, L, d)
    return out.transpose(1, 2).flatten(2)


def _finish(attn: Any, out: torch.Tensor, residual: torch.Tensor, restore: tuple[int, ...] | None) -> torch.Tensor:
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if restore is not None:
        out = out.transpose(1, 2).reshape(residual.shape)
    if attn.residual_connection:
        out = out + residual
    if attn.rescale_output_factor != 1.0:
        out = out / attn.rescale_output_factor
    return out


def attention_modules(module: nn.Module) -> list[tuple[str, Any]]:
    from diffusers.models.attention_processor import Attention

    return [(n, m) for n, m in module.named_modules() if isinstance(m, Attention)]


def use_explicit_attention(module: nn.Module) -> int:
    """Give every self-attention in ``module`` an `ExplicitAttnProcessor`; returns the count."""
    count = 0
    for _, attn in attention_modules(module):
        if not isinstance(attn.processor, FoldedCrossAttnProcessor):
            attn.set_processor(ExplicitAttnProcessor())
            count += 1
    return count


# ---------------------------------------------------------------------------------------------
# the UNet at a fixed timestep and prompt


class _Constant(nn.Module):
    """Returns its buffer whatever the input (a folded layer of a constant input)."""

    value: torch.Tensor

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().contiguous())

    def forward(self, _unused: torch.Tensor) -> torch.Tensor:
        return self.value


class FoldedUNet(nn.Module):
    """``UNet2DConditionModel`` at a fixed timestep and prompt: ``sample -> model output``.

    The timestep embedding (after ``time_embedding`` and ``time_embed_act``) is the constant
    buffer ``temb``, and each ResNet block's projection of it a constant too. Until `fold_cross_attention` is called the prompt is kept as the buffer
    ``context`` and cross-attention runs as usual; afterwards K/V are constants and the prompt is
    gone. The forward always passes the skip connections' sizes to the upsamplers, so the graph
    works for any latent size (H/8 and W/8 need not be multiples of 8).
    """

    def __init__(self, unet: Any, timestep: int, prompt_embeds: torch.Tensor) -> None:
        super().__init__()
        cfg = unet.config
        unsupported = {
            "class_embed_type": cfg.class_embed_type,
            "addition_embed_type": cfg.addition_embed_type,
            "encoder_hid_dim_type": cfg.encoder_hid_dim_type,
            "time_cond_proj_dim": cfg.time_cond_proj_dim,
            "num_class_embeds": cfg.num_class_embeds,
        }
        used = {k: v for k, v in unsupported.items() if v is not None}
        if used:
            raise ExportError(f"UNet features not supported by the one-step export: {used}")
        self.unet = unet
        self.center_input_sample = bool(cfg.center_input_sample)
        param = next(unet.parameters())
        with torch.no_grad():
            dummy = torch.zeros(1, 1, 1, 1, dtype=param.dtype, device=param.device)
            emb = unet.time_embedding(unet.get_time_embed(sample=dummy, timestep=int(timestep)), None)
            if unet.time_embed_act is not None:
                emb = unet.time_embed_act(emb)
        self.register_buffer("temb", emb.detach().contiguous())
        # every ResnetBlock2D's time projection of that constant is a constant too
        with torch.no_grad():
            for module in unet.modules():
                proj = getattr(module, "time_emb_proj", None)
                if isinstance(proj, nn.Linear) and getattr(module, "time_embedding_norm", "default") == "default":
                    t = emb if module.skip_time_act else module.nonlinearity(emb)
                    module.time_emb_proj = _Constant(proj(t))
        self.context: torch.Tensor | None
        self.register_buffer("context", prompt_embeds.to(param.device, param.dtype).contiguous())
        # the constant path no longer needs these
        del unet.time_proj, unet.time_embedding

    def fold_cross_attention(self) -> int:
        """Precompute every cross-attention K/V of the prompt; returns how many were folded."""
        if self.context is None:
            return 0
        count = 0
        for _, attn in attention_modules(self.unet):
            if attn.is_cross_attention:
                attn.set_processor(FoldedCrossAttnProcessor(attn, self.context))
                del attn.to_k, attn.to_v
                count += 1
        self.context = None
        use_explicit_attention(self.unet)
        return count

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        emb = self.temb
        context = self.context
        if context is not None:
            context = context.expand(sample.shape[0], -1, -1)
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        sample = unet.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
            else:
                sample = unet.mid_block(sample, emb)
        last = len(unet.up_blocks) - 1
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if i < last else None
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=context, upsample_size=size)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)


# ---------------------------------------------------------------------------------------------
# the three graphs


class LqEncoder(nn.Module):
    """``lq`` (N,3,H,W) in [0,1] → ``z`` = posterior mean × scaling (the LoRA-merged VAE encoder)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(lq * 2.0 - 1.0)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments[:, : self.latent_channels]
        return (mean - self.shift) * self.scaling


class LatentToX0(nn.Module):
    """``z`` → ``x0``: the folded UNet at t* and the x0 recovery for its prediction type."""

    def __init__(self, unet: FoldedUNet, alpha_bar: float, prediction_type: str) -> None:
        super().__init__()
        if not 0.0 < alpha_bar < 1.0:
            raise ExportError(f"alpha_bar must lie in (0, 1), got {alpha_bar}")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ExportError(f"unknown prediction type {prediction_type!r}")
        self.unet = unet
        self.sqrt_ab = float(alpha_bar) ** 0.5
        self.sqrt_1mab = float(1.0 - alpha_bar) ** 0.5
        self.prediction_type = prediction_type

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.unet(z)
        if self.prediction_type == "epsilon":
            return (z - self.sqrt_1mab * out) / self.sqrt_ab
        if self.prediction_type == "v_prediction":
            return self.sqrt_ab * z - self.sqrt_1mab * out
        return out


class X0Decoder(nn.Module):
    """``x0``, ``lq`` → ``sr`` in [0,1]: VAE decoder (no LoRA), clamp, colour fix against ``lq``."""

    wavelet_kernel: torch.Tensor

    def __init__(self, vae: Any, color_fix: str) -> None:
        super().__init__()
        if color_fix not in COLOR_FIXES:
            raise ExportError(f"unknown colour fix {color_fix!r}; choose one of {COLOR_FIXES}")
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)
        self.color_fix = color_fix
        like = next(vae.decoder.parameters())
        self.register_buffer("wavelet_kernel", _wavelet_kernel(int(vae.config.out_channels), like))

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The VAE decoder's raw output (before clamp and colour fix)."""
        z = x0 / self.scaling + self.shift
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x0: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        image = self.decode(x0).clamp(-1.0, 1.0)
        sr = (image + 1.0) * 0.5
        if self.color_fix == "adain":
            sr = adain_color_fix(sr, lq)
        elif self.color_fix == "wavelet":
            sr = wavelet_color_fix(sr, lq, self.wavelet_kernel)
        return sr.clamp(0.0, 1.0)


class OneStepSR(nn.Module):
    """The whole one-step module: ``lq`` (N,3,H,W) in [0,1] → ``sr`` (N,3,H,W) in [0,1]."""

    def __init__(self, encoder: LqEncoder, unet: LatentToX0, decoder: X0Decoder) -> None:
        super().__init__()
        self.encoder, self.unet, self.decoder = encoder, unet, decoder

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.unet(self.encoder(lq)), lq)
