"""Typed errors of the export stage; all derive from `osr_runtime.errors.OsrError`."""

from __future__ import annotations

from osr_runtime.errors import OsrError

__all__ = [
    "ExportError",
    "FoldCheckError",
    "LoraMismatchError",
    "MissingComponentError",
    "PickleRefusedError",
    "PromptEmbeddingError",
    "UnknownSchedulerError",
    "ValidationError",
]


class ExportError(OsrError):
    """Base class of the export stage's errors (the message names the value and the fix)."""


class MissingComponentError(ExportError, FileNotFoundError):
    """A model folder lacks a component (unet/, vae/, scheduler/, ...) or a weights/config file."""


class PickleRefusedError(ExportError):
    """A pickled checkpoint (.bin, .ckpt, .pt) was met and pickles were not allowed,
    or it holds more than plain tensors (``torch.load(weights_only=True)`` refused it)."""


class LoraMismatchError(ExportError, ValueError):
    """A LoRA adapter does not fit its base model (targets, key names, ranks or shapes)."""


class UnknownSchedulerError(ExportError, ValueError):
    """The scheduler config names a class or beta schedule this exporter does not know."""


class PromptEmbeddingError(ExportError, ValueError):
    """The saved prompt embedding is not one (1, 77, D) tensor with D the UNet's cross-attention dim."""


class FoldCheckError(ExportError):
    """A fold (LoRA merge, timestep embedding, cross-attention K/V) changed the model's output."""


class ValidationError(ExportError):
    """The exported ONNX graphs do not match the torch module within the required tolerance."""
