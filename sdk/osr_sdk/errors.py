"""The typed exception hierarchy of osr-sdk.

Every error raised on purpose derives from `OsrError`; catch that to handle them all.
Argument errors also derive from `ValueError` and file errors from `OSError` where it helps
callers that already catch those.
"""

from __future__ import annotations

from osr_runtime.errors import BundleError, OsrError, ProviderUnavailableError

__all__ = [
    "OsrError",
    "BundleError",
    "ProviderUnavailableError",
    "InputError",
    "DeviceError",
    "ImageError",
    "UnreadableImageError",
    "TruncatedImageError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "ModelMismatchError",
    "OutputExistsError",
]


class InputError(OsrError, ValueError):
    """An argument has the wrong shape, dtype, range or value (the message names it)."""


class DeviceError(OsrError, RuntimeError):
    """CUDA input given to a build without CUDA kernels, or no usable CUDA device."""


class ImageError(OsrError):
    """Base class of image file errors."""


class UnreadableImageError(ImageError, OSError):
    """The file does not exist, cannot be opened, or is not an image format we read."""


class TruncatedImageError(ImageError, OSError):
    """The image file ends early or its data is corrupt."""


class ImageTooLargeError(ImageError):
    """The image exceeds the decompression-bomb limit (see `osr_sdk.imageio.set_max_pixels`)."""


class UnsupportedImageError(ImageError):
    """The image mode, bit depth or channel layout is not supported."""


class ModelMismatchError(OsrError, ValueError):
    """The image size does not fit the model (e.g. an ERP too small for the patch size)."""


class OutputExistsError(OsrError, FileExistsError):
    """The output file exists and overwriting was not allowed."""
