"""osr_runtime: model bundles and ONNX Runtime execution for osr-sdk (numpy + onnxruntime only).

`load_bundle` validates a bundle folder written by the export stage (``osr-export bundle``) and
returns a `Bundle` (its path and `Manifest`). `Session` runs its graphs with ONNX Runtime (ordered providers, IO binding, batching).
"""

from __future__ import annotations

from osr_runtime.bundle import (
    FORMAT_VERSION,
    Bundle,
    FileEntry,
    GraphSpec,
    Manifest,
    TensorSpec,
    load_bundle,
)
from osr_runtime.errors import BundleError, OsrError, ProviderUnavailableError
from osr_runtime.session import Session, cache_dir, default_providers

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "FileEntry",
    "GraphSpec",
    "Manifest",
    "OsrError",
    "ProviderUnavailableError",
    "TensorSpec",
    "load_bundle",
    "Session",
    "default_providers",
    "cache_dir",
]
