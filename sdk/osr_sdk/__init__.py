"""osr-sdk: real-world 360° image super-resolution for the edge.

`upscale()` and `Upscaler` upscale 360° (ERP) and planar images with a one-step diffusion model
bundle; `osr_sdk.sphere` resamples between ERP images and tangent-plane views;
`osr_sdk.metrics` has WS-PSNR and WS-SSIM; `osr_sdk.imageio` reads and writes images with their
360° metadata; `osr_sdk.errors` holds the typed exceptions.
"""

from __future__ import annotations

from typing import Any

from osr_sdk import errors

__version__ = "0.1.0"

__all__ = ["upscale", "Upscaler", "errors", "__version__"]


def __getattr__(name: str) -> Any:
    """Lazy imports: `import osr_sdk` stays cheap until a model is needed."""
    if name in ("upscale", "Upscaler"):
        from osr_sdk import upscaler

        return getattr(upscaler, name)
    raise AttributeError(f"module 'osr_sdk' has no attribute {name!r}")
