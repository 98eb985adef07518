"""osr-sdk: real-world 360° image super-resolution for the edge.

Public modules: `osr_sdk.sphere` (spherical resampling), `osr_sdk.metrics` (WS-PSNR, WS-SSIM),
`osr_sdk.errors` (typed exceptions), `osr_sdk.imageio` (image files with 360° metadata).
"""

from __future__ import annotations

from osr_sdk import errors

__version__ = "0.1.0"

__all__ = ["errors", "__version__"]
