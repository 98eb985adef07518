"""Typed errors of the runtime. `osr_sdk.errors` re-exports them beside its own."""

from __future__ import annotations


class OsrError(Exception):
    """Base class of every error raised on purpose by osr-sdk."""


class BundleError(OsrError):
    """A model bundle is missing, incomplete, tampered with or of an unknown format."""


class ProviderUnavailableError(OsrError):
    """An execution provider (or GPU) was asked for and is not available here."""
