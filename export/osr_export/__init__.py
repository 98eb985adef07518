"""osr_export: turn an OMGSR-S model (SD2.1-base + LoRA) into a verified ONNX model bundle.

The workstation-side half of osr-sdk (needs torch, diffusers, peft, transformers, onnx,
onnxruntime). The bundle it writes is read on the device by ``osr_runtime.load_bundle``.

Stages of ``osr-export bundle`` (`export_bundle`), each reported to the progress bar:

1. **load base model** — ``unet/`` and ``vae/`` of a diffusers folder (safetensors; pickled
   .bin/.ckpt/.pt only with ``--allow-pickle``, and then with ``torch.load(weights_only=True)``),
   and ᾱ from ``scheduler/`` (DDPM-family schedulers only). Every file read is hashed.
2. **prompt embedding** — the constant (1, 77, D) prompt: the text encoder runs once on
   ``--prompt`` (default empty), or ``--prompt-embedding FILE`` (one tensor in a safetensors file).
3. **merge LoRA** — the OMGSR-S adapters ``unet_lora_adapter/`` (r=32) and
   ``vae_encoder_lora_adapter/`` (r=16) are checked against the model (targets, keys, ranks,
   shapes), loaded with PEFT and merged (``merge_and_unload``).
4. **fold constants** — the timestep embedding of t* (and each ResNet's projection of it) and
   every cross-attention K/V of the prompt become constants; attention becomes explicit with an
   fp32 softmax. Each merge and fold is checked: max relative error ≤ 1e-5 (fp32).
5. **torch reference** — the folded module's outputs on seeded validation inputs.
6. **export ONNX** — three graphs, opset ≥ 17, dynamic batch/H/W (H, W multiples of 8)::

       encoder.onnx  lq (N,3,H,W) in [0,1]  -> z  (N,4,H/8,W/8)   VAE encoder + LoRA, mean × scaling
       unet.onnx     z                      -> x0 (N,4,H/8,W/8)   UNet at t*, x0 = (z − √(1−ᾱ)ε̂)/√ᾱ
       decoder.onnx  x0, lq                 -> sr (N,3,H,W) in [0,1]  VAE decoder, colour fix vs lq

   Graphs over 2 GB keep their weights in ``<graph>.onnx.data``.
7. **convert / optimize** — ``--precision fp16`` (fp32 inputs/outputs; attention scores, softmax
   and Resize stay fp32) and/or ``--optimize`` (ONNX Runtime's transformer optimizer, attention
   fusion off, CPU-compatible fusions only).
8. **validate** — ONNX Runtime (CPU EP) against the torch module, each graph alone and chained:
   fp32 max relative error ≤ 1e-4; fp16 PSNR ≥ 45 dB against fp32.
9. **write bundle** — ``manifest.json`` (see ``osr_runtime.bundle``) with sha256 of every file,
   sources, exporter versions and the validation figures; moved into place only when valid.

Command line::

    osr-export bundle --base SD21_DIR --lora OMGSR_S_DIR --out BUNDLE
                      [--precision fp32|fp16] [--timestep 273] [--prompt-embedding FILE]
                      [--color-fix adain|wavelet|none] [--optimize] [--allow-pickle] [--overwrite]
    osr-export mid-timestep --hq HQ_DIR --base SD21_DIR [--scale 4] [--json OUT.json]

``mid-timestep`` picks t* by OMGSR's SNR matching on HQ images degraded by
`osr_export.degradation.degrade` (`osr_export.mid_timestep`). `osr_export.synthetic` writes
random-weight SD2.1-base-structured models and LoRA releases (tiny or full size) for tests.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "ExportOptions",
    "ExportResult",
    "__version__",
    "compute_mid_timestep",
    "degrade",
    "export_bundle",
]


def __getattr__(name: str) -> object:
    """Lazy imports: ``import osr_export`` stays cheap until torch is needed."""
    if name in ("ExportOptions", "ExportResult", "export_bundle"):
        from osr_export import pipeline

        return getattr(pipeline, name)
    if name == "compute_mid_timestep":
        from osr_export.mid_timestep import compute_mid_timestep

        return compute_mid_timestep
    if name == "degrade":
        from osr_export.degradation import degrade

        return degrade
    raise AttributeError(f"module 'osr_export' has no attribute {name!r}")
