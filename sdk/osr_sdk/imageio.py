"""Image file I/O: read, convert and atomically write PNG, JPEG, WebP and TIFF.

The model sees every image as float32 RGB in [0, 1] (`Image.pixels`, (H, W, 3)) plus an optional
alpha plane (`Image.alpha`, (H, W)) that the caller upscales on its own (bicubic). What the file
was made of travels beside the pixels so that it can be written back the same way:

- `bit_depth` 8 or 16: 16-bit PNG and TIFF are read at full precision and written as 16-bit PNG or
  TIFF. JPEG and WebP hold 8 bits only, so a 16-bit image written to them is rounded to 8 bits.
- `gray`: gray sources are replicated to RGB for the model and written back as gray, using the
  ITU-R 601 luma (the weights Pillow uses). WebP has no gray mode, so gray is written there as RGB.
- `metadata`: EXIF, XMP (with the GPano photo-sphere tags), the ICC profile and the dpi. The EXIF
  orientation is applied on read and then reset to 1 (in EXIF and in the XMP `tiff:Orientation`),
  so the metadata always describes the pixels as they are held.

Conversions on read: bilevel, palette, gray + transparency colour, YCbCr and CMYK are converted to
8-bit L, LA, RGB or RGBA (CMYK naively, and its ICC profile is dropped). 32-bit integer and float
images ('I', 'F'), LAB and HSV raise `UnsupportedImageError`. Only the first frame of a multi-frame
file is read. 16-bit premultiplied-alpha and 16-bit CMYK TIFFs are read at 8-bit precision.

Pillow has no 16-bit RGB mode, so two things are done by hand: 16-bit colour samples are read by
decoding the file a second time with Pillow's unpacker for the low bytes, and 16-bit PNGs and all
TIFFs are encoded here (PNG: Paeth filter + zlib; TIFF: Adobe deflate + horizontal predictor;
16-bit gray + alpha TIFF is written as RGBA, as Pillow cannot read it back otherwise). PNG and TIFF
use zlib level 1, favouring speed on large panoramas over ~15% smaller files.

Reading refuses images with more pixels than `get_max_pixels()` before decoding them (default
2**26 = 67,108,864 pixels, e.g. an 11K x 5.6K panorama; raise it with `set_max_pixels`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import struct
import sys
import uuid
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import PIL.Image
import PIL.PngImagePlugin

from osr_sdk.errors import (
    ImageTooLargeError,
    InputError,
    OutputExistsError,
    TruncatedImageError,
    UnreadableImageError,
    UnsupportedImageError,
)

__all__ = [
    "FORMATS",
    "BitDepth",
    "Image",
    "ImageFormat",
    "ImageMetadata",
    "from_array",
    "from_pil",
    "get_max_pixels",
    "read_image",
    "set_max_pixels",
    "to_array",
    "to_pil",
    "write_image",
]

BitDepth = Literal[8, 16]
ImageFormat = Literal["PNG", "JPEG", "WEBP", "TIFF"]
FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)

_EXTENSIONS: dict[str, ImageFormat] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_MAX_SIDE_PX: dict[ImageFormat, int] = {"JPEG": 65535, "WEBP": 16383, "PNG": 2**31 - 1, "TIFF": 2**32 - 1}
_ZLIB_LEVEL = 1  # PNG and TIFF: fast, as OpenCV's default; 6 saves ~15% size at ~4x the time
_FLOAT_TOLERANCE = 1e-3  # float input may overshoot [0, 1] by this much; it is clipped
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"
_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION = 0x0112
# TIFF tags that describe the pixel layout or are kept elsewhere (XMP, ICC, IPTC, Photoshop):
# dropped from the EXIF of TIFF sources and never copied from the metadata into a written TIFF.
_TIFF_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
     322, 323, 324, 325, 338, 339, 340, 341, 530, 531, 532, 700, 33723, 34377, 34675}
)
_GPANO_PIXEL_TAGS = (
    "FullPanoWidthPixels",
    "FullPanoHeightPixels",
    "CroppedAreaImageWidthPixels",
    "CroppedAreaImageHeightPixels",
    "CroppedAreaLeftPixels",
    "CroppedAreaTopPixels",
)
# `prefix:Name="123"` (attribute form) or `<prefix:Name>123<` (element form).
_GPANO_RE = re.compile(rb":(%s)(\s*=\s*[\"']\s*|>\s*)(\d+)" % "|".join(_GPANO_PIXEL_TAGS).encode())
_XMP_ORIENTATION_RE = re.compile(rb"(tiff:Orientation(?:\s*=\s*[\"']\s*|>\s*))\d")
# Pillow rawmodes of 16-bit colour samples, which Pillow unpacks to their high bytes.
_RAWMODES_16 = frozenset(f"{m};16{e}" for m in ("RGB", "RGBA", "RGBX") for e in "BLN")

_max_pixels = 2**26


# ---------------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True)
class ImageMetadata:
    """Metadata carried from the source file to the written one.

    `exif` is a serialized EXIF block starting with b"Exif\\0\\0"; `xmp` the XMP packet as bytes;
    `format` the source format (None for arrays). After `read_image` the EXIF orientation is 1
    (already applied to the pixels).
    """

    format: ImageFormat | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None

    def scaled(self, factor: float) -> ImageMetadata:
        """Return a copy whose GPano pixel sizes and offsets are multiplied by `factor`."""
        numeric = isinstance(factor, (int, float, np.number)) and not isinstance(factor, bool)
        if not (numeric and math.isfinite(factor) and factor > 0):
            raise InputError(f"scale factor must be a finite number > 0, got {factor!r}")
        if self.xmp is None or factor == 1:
            return self

        def scale(m: re.Match[bytes]) -> bytes:
            return m[0][: m.start(3) - m.start(0)] + str(int(int(m[3]) * factor + 0.5)).encode()

        return dataclasses.replace(self, xmp=_GPANO_RE.sub(scale, self.xmp))


@dataclass(eq=False)
class Image:
    """An image ready for the model, plus what is needed to write it back like its source.

    pixels: float32 (H, W, 3) RGB in [0, 1] (gray sources replicated to 3 channels).
    alpha: float32 (H, W) in [0, 1], or None.
    bit_depth: bits per sample of the source, used when writing.
    gray: write back as gray (luma of `pixels`).
    mode: the source's Pillow mode ('L', 'RGB', 'I;16', 'CMYK', ...), for information only.

    An upscaled result is `dataclasses.replace(img, pixels=..., alpha=...)`; pass the scale
    factor to `write_image(..., scale_metadata=s)` to update the GPano sizes.
    """

    pixels: npt.NDArray[np.float32]
    alpha: npt.NDArray[np.float32] | None = None
    bit_depth: BitDepth = 8
    gray: bool = False
    mode: str = "RGB"
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    def __post_init__(self) -> None:
        p = self.pixels
        if not (isinstance(p, np.ndarray) and p.dtype == np.float32 and p.ndim == 3 and p.shape[-1] == 3):
            raise InputError(f"Image.pixels must be a float32 (H, W, 3) array, got {_describe(p)}")
        if p.shape[0] == 0 or p.shape[1] == 0:
            raise InputError(f"Image.pixels must not be empty, got shape {p.shape}")
        a = self.alpha
        ok = isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == p.shape[:2]
        if a is not None and not ok:
            raise InputError(f"Image.alpha must be None or a float32 {p.shape[:2]} array, got {_describe(a)}")
        if self.bit_depth not in (8, 16):
            raise InputError(f"Image.bit_depth must be 8 or 16, got {self.bit_depth!r}")

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.pixels.shape[1])


# ---------------------------------------------------------------------------------------------
# Decompression-bomb guard


def get_max_pixels() -> int:
    """The largest width*height that `read_image` decodes (process-wide)."""
    return _max_pixels


def set_max_pixels(n: int) -> None:
    """Set the largest width*height that `read_image` decodes (process-wide).

    Pillow's own limit (`PIL.Image.MAX_IMAGE_PIXELS`) is raised to `n` if it is lower, so that
    Pillow does not refuse what this limit allows; it is never lowered.
    """
    global _max_pixels
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise InputError(f"max pixels must be a positive integer, got {n!r}")
    _max_pixels = int(n)
    if PIL.Image.MAX_IMAGE_PIXELS is not None and PIL.Image.MAX_IMAGE_PIXELS < n:
        PIL.Image.MAX_IMAGE_PIXELS = int(n)


def _too_large(width: int, height: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
        f"{_max_pixels:,}; raise it with osr_sdk.imageio.set_max_pixels(n) if you trust the file"
    )


# ---------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read a PNG, JPEG, WebP or TIFF file; apply its EXIF orientation; keep its metadata.

    Raises UnreadableImageError (missing, not an image of these formats), TruncatedImageError
    (data ends early or is corrupt), ImageTooLargeError (over `get_max_pixels()`) and
    UnsupportedImageError (mode not handled, see the module docstring).
    """
    path = Path(path)
    # 1. Open (parses the header only) and check the size before decoding anything.
    try:
        pil = PIL.Image.open(path, formats=FORMATS)
    except PIL.Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{path}: {e}; see osr_sdk.imageio.set_max_pixels") from e
    except PIL.UnidentifiedImageError as e:
        raise UnreadableImageError(f"{path}: not a PNG, JPEG, WebP or TIFF image") from e
    except OSError as e:
        if e.errno is not None:  # missing, a folder, no permission, ...
            raise UnreadableImageError(f"{path}: cannot open: {e.strerror or e}") from e
        raise TruncatedImageError(f"{path}: image data is truncated or corrupt: {e}") from e
    except Exception as e:  # a plugin may raise anything else on a malformed header
        raise TruncatedImageError(f"{path}: image data is truncated or corrupt: {e}") from e
    with pil:
        if pil.width * pil.height > _max_pixels:
            raise _too_large(pil.width, pil.height)
        rawmodes = {str(t[3][0] if isinstance(t[3], tuple) else t[3]) for t in pil.tile}
        tiff_orientation = _tiff_orientation(pil)
        # 2. Decode, so that truncation surfaces here; re-decode 16-bit colour in full.
        _load(pil, path)
        metadata, orientation = _read_metadata(pil, tiff_orientation)
        arr: np.ndarray
        bit_depth: BitDepth
        if pil.mode in ("RGB", "RGBA") and len(rawmodes) == 1 and rawmodes <= _RAWMODES_16 | {"LA;16B"}:
            arr, bit_depth = _decode_16bit_colour(path, next(iter(rawmodes)), np.asarray(pil)), 16
        else:
            arr, bit_depth = _pil_to_array(pil, rawmodes)
        # 3. Orient and convert to the model layout.
        return _make_image(arr, bit_depth, pil.mode, metadata, orientation)


def from_pil(pil: PIL.Image.Image) -> Image:
    """Convert a Pillow image (decoding it if needed); apply its EXIF orientation.

    Pillow holds colour at 8 bits, so 16-bit colour is only read in full by `read_image`.
    """
    if not isinstance(pil, PIL.Image.Image):
        raise InputError(f"expected a PIL.Image.Image, got {type(pil).__name__}")
    tiff_orientation = _tiff_orientation(pil)
    _load(pil, getattr(pil, "filename", "") or "image")
    metadata, orientation = _read_metadata(pil, tiff_orientation)
    arr, bit_depth = _pil_to_array(pil, set())
    return _make_image(arr, bit_depth, pil.mode, metadata, orientation)


def _tiff_orientation(pil: PIL.Image.Image) -> int:
    """The orientation tag of a TIFF not yet decoded (1 otherwise)."""
    tags = getattr(pil, "tag_v2", None)
    value = tags.get(_ORIENTATION, 1) if tags is not None else 1
    return value if isinstance(value, int) else 1


def _load(pil: PIL.Image.Image, name: str | os.PathLike[str]) -> None:
    """Force Pillow's lazy decoding, mapping its errors to ours."""
    try:
        pil.load()
    except PIL.Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}; see osr_sdk.imageio.set_max_pixels") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as e:
        raise TruncatedImageError(f"{name}: image data is truncated or corrupt: {e}") from e


def _decode_16bit_colour(path: Path, rawmode: str, high: np.ndarray) -> np.ndarray:
    """Decode 16-bit colour samples in full; `high` is Pillow's normal (high byte) decoding.

    The file is decoded again with the unpacker of the other byte order, which yields the low
    bytes; 16-bit gray + alpha is decoded as 8-bit RGBA, which yields all four bytes in order.
    """
    if rawmode == "LA;16B":
        alt = "RGBA"
    else:
        order = rawmode[-1] if rawmode[-1] != "N" else ("L" if sys.byteorder == "little" else "B")
        alt = rawmode[:-1] + ("B" if order == "L" else "L")
    with PIL.Image.open(path, formats=FORMATS) as pil:
        pil.tile = [_with_rawmode(t, alt) for t in pil.tile]
        _load(pil, path)
        low = np.asarray(pil)
    if rawmode == "LA;16B":
        full = (low[..., 0::2].astype(np.uint16) << 8) | low[..., 1::2]
        if not np.array_equal(low[..., 0], high[..., 0]):  # guards against Pillow changes
            raise UnsupportedImageError(f"{path}: 16-bit gray+alpha could not be decoded")
        return full
    return (high.astype(np.uint16) << 8) | low


def _with_rawmode(tile: Any, rawmode: str) -> Any:
    """A Pillow tile descriptor (codec, extents, offset, args) decoding to `rawmode` instead."""
    args = (rawmode, *tile[3][1:]) if isinstance(tile[3], tuple) else rawmode
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _make_image(
    arr: np.ndarray, bit_depth: BitDepth, mode: str, metadata: ImageMetadata, orientation: int
) -> Image:
    """Build an Image from decoded file-layout pixels: orient them, drop an ICC that no longer fits."""
    img = from_array(_orient(arr, orientation), bit_depth=bit_depth)
    icc = metadata.icc_profile
    if mode == "CMYK" or (icc is not None and not _icc_fits(icc, img.gray)):
        metadata = dataclasses.replace(metadata, icc_profile=None)
    return dataclasses.replace(img, mode=mode, metadata=metadata)


def _pil_to_array(pil: PIL.Image.Image, rawmodes: set[str]) -> tuple[np.ndarray, BitDepth]:
    """Pixels of a decoded Pillow image as uint8 (H,W[,C]) or uint16 (H,W) gray."""
    mode = pil.mode
    unsigned16 = bool(rawmodes) and all(r.startswith("I;16") and "S" not in r for r in rawmodes)
    if mode.startswith("I;16") or (mode == "I" and unsigned16):  # "I": 16-bit gray in old Pillow
        return np.asarray(pil).astype(np.uint16), 16
    trns = "transparency" in pil.info
    target = {
        "1": "LA" if trns else "L",
        "L": "LA" if trns else "L",
        "LA": "LA",
        "La": "LA",
        "P": "RGBA" if trns else "RGB",
        "PA": "RGBA",
        "RGB": "RGBA" if trns else "RGB",
        "RGBX": "RGB",
        "YCbCr": "RGB",
        "CMYK": "RGB",
        "RGBA": "RGBA",
        "RGBa": "RGBA",
    }.get(mode)
    if target is None:
        raise UnsupportedImageError(
            f"image mode {mode!r} is not supported (32-bit integer/float, LAB and HSV images are "
            "not); convert it to 8- or 16-bit RGB, RGBA or gray first"
        )
    if target != mode:
        pil = pil.convert(target)
    return np.asarray(pil), 8


def _read_metadata(pil: PIL.Image.Image, tiff_orientation: int) -> tuple[ImageMetadata, int]:
    """Metadata of a decoded Pillow image, with the orientation reset to 1; and the orientation
    still to apply to its pixels.

    `tiff_orientation` is the TIFF's orientation tag before decoding: Pillow >= 12 applies it
    while decoding and deletes the tag, older versions leave both to us.
    """
    fmt = "JPEG" if pil.format == "MPO" else pil.format
    fmt = fmt if fmt in FORMATS else None
    info = pil.info
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp") or None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    raw_exif = info.get("exif")
    exif: bytes | None = None
    orientation = applied = 1
    try:
        ex = PIL.Image.Exif()  # a copy: the caller's image is left as it is
        ex.load(pil.getexif().tobytes())
        orientation = ex.get(_ORIENTATION, 1)
        orientation = orientation if orientation in range(1, 9) else 1
        if orientation == 1 and _ORIENTATION not in ex and tiff_orientation in range(2, 9):
            applied = tiff_orientation
        if fmt == "TIFF" or orientation != 1 or applied != 1:
            if fmt == "TIFF":
                for tag in _TIFF_LAYOUT_TAGS.intersection(ex):
                    del ex[tag]
            if orientation != 1 or applied != 1:
                ex[_ORIENTATION] = 1
            exif = ex.tobytes() if len(ex) else None
        elif raw_exif:
            exif = raw_exif if raw_exif.startswith(_EXIF_HEADER) else _EXIF_HEADER + raw_exif
    except Exception as e:  # noqa: BLE001  (malformed EXIF must not block the pixels)
        warnings.warn(f"EXIF could not be read and is dropped: {e}", stacklevel=3)
    if (orientation != 1 or applied != 1) and xmp:
        xmp = _XMP_ORIENTATION_RE.sub(rb"\g<1>1", xmp)
    dpi = info.get("dpi")
    dpi_t = (float(dpi[0]), float(dpi[1])) if dpi and min(float(dpi[0]), float(dpi[1])) > 0 else None
    icc = info.get("icc_profile") or None
    return ImageMetadata(format=fmt, exif=exif, xmp=xmp, icc_profile=icc, dpi=dpi_t), orientation


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W[, C]) array, as Pillow's exif_transpose."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _icc_fits(icc: bytes, gray: bool) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-20) matches gray or RGB output."""
    space = icc[16:20]
    return space == (b"GRAY" if gray else b"RGB ") or space not in (b"GRAY", b"RGB ")


# ---------------------------------------------------------------------------------------------
# Arrays and Pillow images


def from_array(arr: np.ndarray, *, bit_depth: BitDepth | None = None) -> Image:
    """Make an Image from uint8, uint16 or float32/float64 (H, W) or (H, W, C) pixels.

    C is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA). Floats must be finite and in [0, 1]
    (overshoots up to 1e-3 are clipped). `bit_depth` defaults to 16 for uint16, else 8.
    """
    if not isinstance(arr, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"expected an (H, W) or (H, W, C) array with C in 1..4, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image must not be empty, got shape {arr.shape}")
    if bit_depth is None:
        bit_depth = 16 if arr.dtype == np.uint16 else 8
    elif bit_depth not in (8, 16):
        raise InputError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if arr.dtype in (np.uint8, np.uint16):
        x = np.divide(arr, np.iinfo(arr.dtype).max, dtype=np.float32)
    elif arr.dtype in (np.float32, np.float64):
        lo, hi = float(arr.min()), float(arr.max())  # NaN propagates into min/max
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError("float pixels contain NaN or Inf")
        if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
            raise InputError(f"float pixels must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        x = arr.astype(np.float32)
        np.clip(x, 0, 1, out=x)
    else:
        raise InputError(f"pixel dtype must be uint8, uint16, float32 or float64, got {arr.dtype}")
    c = x.shape[2]
    color = x[..., :3] if c >= 3 else np.repeat(x[..., :1], 3, axis=2)
    alpha = x[..., c - 1] if c in (2, 4) else None
    return Image(
        pixels=np.ascontiguousarray(color),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        bit_depth=bit_depth,
        gray=c <= 2,
        mode={1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c],
    )


def to_array(img: Image, dtype: npt.DTypeLike | None = None) -> np.ndarray:
    """Pixels in file layout: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB or (H, W, 4) RGBA.

    `dtype` is uint8, uint16 or float32; by default uint8 or uint16 after `img.bit_depth`.
    Values are clipped to [0, 1] and rounded to the nearest integer level.
    """
    if not isinstance(img, Image):
        raise InputError(f"expected an osr_sdk.imageio.Image, got {type(img).__name__}")
    dt = np.dtype(dtype if dtype is not None else np.uint16 if img.bit_depth == 16 else np.uint8)
    if dt not in (np.uint8, np.uint16, np.float32):
        raise InputError(f"dtype must be uint8, uint16 or float32, got {dt}")
    planes = [img.pixels] if img.alpha is None else [img.pixels, img.alpha]
    if not all(math.isfinite(float(p.min())) and math.isfinite(float(p.max())) for p in planes):
        raise InputError("pixels contain NaN or Inf")
    x = img.pixels @ _LUMA if img.gray else img.pixels
    if img.alpha is not None:
        x = np.concatenate([x[..., None] if img.gray else x, img.alpha[..., None]], axis=2)
    if dt == np.float32:
        return np.clip(x, 0, 1)
    top = 65535 if dt == np.uint16 else 255
    y = np.multiply(x, top, dtype=np.float32)  # in place from here: these arrays are large
    np.clip(y, 0, top, out=y)
    return np.rint(y, out=y).astype(dt)


def to_pil(img: Image) -> PIL.Image.Image:
    """Convert to a Pillow image (L, LA, RGB, RGBA or I;16) with the metadata in `.info`.

    Pillow has no 16-bit colour or 16-bit gray + alpha mode: those raise UnsupportedImageError
    (use `to_array(img)` or `write_image`, or set `bit_depth=8` first).
    """
    arr = to_array(img)
    if img.bit_depth == 16 and arr.ndim == 3:
        raise UnsupportedImageError(
            "Pillow cannot hold 16-bit colour or gray+alpha; use to_array(img) or write_image, or "
            "dataclasses.replace(img, bit_depth=8)"
        )
    pil = PIL.Image.fromarray(arr)
    meta = img.metadata
    items = {"exif": meta.exif, "xmp": meta.xmp, "icc_profile": meta.icc_profile, "dpi": meta.dpi}
    pil.info.update({key: value for key, value in items.items() if value is not None})
    return pil


# ---------------------------------------------------------------------------------------------
# Writing


def write_image(
    img: Image,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    format: ImageFormat | str | None = None,
    quality: int = 95,
    lossless: bool = False,
    scale_metadata: float = 1.0,
) -> Path:
    """Write `img` atomically: to a temporary file beside `path`, fsync, then rename into place.

    The format comes from `format` or the file extension (.png .jpg .jpeg .webp .tif .tiff).
    16-bit images are written as 16-bit PNG/TIFF, and rounded to 8 bits for JPEG/WebP. JPEG is
    written with 4:4:4 chroma at `quality`; WebP at `quality`, or lossless if `lossless=True`
    (exact RGB under transparent pixels). JPEG cannot hold alpha: that raises InputError.
    `scale_metadata` multiplies the GPano pixel sizes in the XMP (pass the upscale factor).
    An existing file is kept (OutputExistsError) unless `overwrite=True`; on any error the
    existing file is untouched and no partial file remains. Returns the path written.
    """
    path = Path(path)
    # 1. Check the arguments.
    if not isinstance(img, Image):
        raise InputError(f"expected an osr_sdk.imageio.Image, got {type(img).__name__}")
    fmt = _resolve_format(path, format)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InputError(f"quality must be an integer in 1..100, got {quality!r}")
    if lossless and fmt == "JPEG":
        raise InputError("JPEG cannot be lossless; write PNG, TIFF or WebP with lossless=True")
    if img.alpha is not None and fmt == "JPEG":
        raise InputError(
            "JPEG cannot store alpha; write PNG, WebP or TIFF, or drop it with "
            "dataclasses.replace(img, alpha=None)"
        )
    if max(img.width, img.height) > _MAX_SIDE_PX[fmt]:
        raise InputError(
            f"{fmt} images are at most {_MAX_SIDE_PX[fmt]} px per side, got "
            f"{img.width}x{img.height}; write PNG or TIFF"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    # 2. Prepare pixels and metadata for the format.
    meta = img.metadata.scaled(scale_metadata)
    if fmt == "WEBP" and img.gray:
        img = dataclasses.replace(img, gray=False)  # WebP has no gray mode
    arr = to_array(img, np.uint8 if fmt in ("JPEG", "WEBP") else None)
    if meta.icc_profile is not None and not _icc_fits(meta.icc_profile, img.gray):
        meta = dataclasses.replace(meta, icc_profile=None)
    # 3. Encode into a temporary file and move it into place.
    if fmt == "TIFF":
        _atomic_write(path, overwrite, lambda f: _save_tiff(f, arr, meta))
    elif fmt == "PNG" and arr.dtype == np.uint16:
        _atomic_write(path, overwrite, lambda f: _save_png16(f, arr, meta))
    else:
        _atomic_write(path, overwrite, lambda f: _save_pillow(f, arr, meta, fmt, quality, lossless))
    return path


def _resolve_format(path: Path, format: str | None) -> ImageFormat:
    if format is None:
        ext = path.suffix.lower()
        if ext not in _EXTENSIONS:
            raise InputError(
                f"cannot tell the format from the extension {ext!r} of {path.name}; use one of "
                f"{', '.join(_EXTENSIONS)} or pass format= one of {FORMATS}"
            )
        return _EXTENSIONS[ext]
    name = str(format).upper()
    name = {"JPG": "JPEG", "TIF": "TIFF"}.get(name, name)
    if name not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}")
    return name  # type: ignore[return-value]


def _atomic_write(path: Path, overwrite: bool, encode: Callable[[IO[bytes]], None]) -> None:
    """Run `encode` into a temporary file in path's folder, fsync it, then move it to `path`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            encode(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: no clobbering
            except FileExistsError:
                raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it") from None
            except OSError:  # no hard links on this file system (e.g. FAT): check, then rename
                if path.exists():
                    raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it") from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable (POSIX)
        with contextlib.suppress(OSError):
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _save_pillow(
    f: IO[bytes], arr: np.ndarray, meta: ImageMetadata, fmt: ImageFormat, quality: int, lossless: bool
) -> None:
    """8-bit PNG, JPEG and WebP through Pillow."""
    pil = PIL.Image.fromarray(arr)
    opts: dict[str, object] = {}
    if meta.exif:
        opts["exif"] = meta.exif
    if meta.icc_profile:
        opts["icc_profile"] = meta.icc_profile
    if meta.dpi and fmt != "WEBP":
        opts["dpi"] = meta.dpi
    if fmt == "PNG":
        opts["compress_level"] = _ZLIB_LEVEL
        if meta.xmp:
            png_info = PIL.PngImagePlugin.PngInfo()
            png_info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8", "replace"))
            opts["pnginfo"] = png_info
    elif fmt == "JPEG":
        opts.update(quality=quality, subsampling=0, xmp=meta.xmp or b"")
    else:
        opts.update(quality=quality, lossless=lossless, exact=pil.mode in ("RGBA", "LA"), xmp=meta.xmp or b"")
    pil.save(f, format=fmt, **opts)


def _save_png16(f: IO[bytes], arr: np.ndarray, meta: ImageMetadata) -> None:
    """16-bit PNG (gray, gray+alpha, RGB, RGBA): Paeth filter, zlib, metadata chunks."""

    def chunk(kind: bytes, data: bytes) -> None:
        f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    f.write(b"\x89PNG\r\n\x1a\n")
    chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0))
    if meta.icc_profile:
        chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc_profile))
    if meta.dpi:
        ppm = [round(d / 0.0254) for d in meta.dpi]  # dots per metre
        chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if meta.exif:
        chunk(b"eXIf", meta.exif.removeprefix(_EXIF_HEADER))
    if meta.xmp:
        chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + meta.xmp)
    z = zlib.compressobj(_ZLIB_LEVEL)
    prev = np.zeros(w * c * 2, np.uint8)
    rows = min(h, max(1, (1 << 20) // (w * c * 2)))
    for y in range(0, h, rows):
        block = arr[y : y + rows].astype(">u2").view(np.uint8).reshape(-1, w * c * 2)
        data = z.compress(_paeth(block, prev, bpp=2 * c).tobytes())
        prev = block[-1]
        if data:
            chunk(b"IDAT", data)
    chunk(b"IDAT", z.flush())
    chunk(b"IEND", b"")


def _paeth(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter 4 (Paeth) of uint8 scanlines (n, stride) below `prev`, each led by its filter byte."""
    x = rows.astype(np.int16)
    b = np.concatenate([prev[None].astype(np.int16), x[:-1]])  # up
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]  # left
    c = np.zeros_like(x)
    c[:, bpp:] = b[:, :-bpp]  # up-left
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    out = np.empty((x.shape[0], x.shape[1] + 1), np.uint8)
    out[:, 0] = 4
    out[:, 1:] = (x - pred) & 0xFF
    return out


def _save_tiff(f: IO[bytes], arr: np.ndarray, meta: ImageMetadata) -> None:
    """8- or 16-bit TIFF: one IFD carrying the EXIF tags, XMP and ICC; Adobe deflate + predictor.

    16-bit gray + alpha is written as RGBA, since Pillow cannot read it back otherwise.
    """
    if arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[2] == 2:
        arr = arr[..., [0, 0, 0, 1]]
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    ifd = PIL.Image.Exif()  # serializes a TIFF IFD, with the EXIF and GPS sub-IFDs
    if meta.exif:
        ifd.load(meta.exif)
        for tag in _TIFF_LAYOUT_TAGS.intersection(ifd):
            del ifd[tag]
    else:
        ifd.endian = "<"
    dtype = np.dtype(arr.dtype).newbyteorder("<" if ifd.endian == "<" else ">")
    rows = min(h, max(1, (1 << 20) // (w * c * arr.itemsize)))
    strips = []
    for y in range(0, h, rows):
        block = arr[y : y + rows]
        diff = block.copy()
        diff[:, 1:] -= block[:, :-1]  # horizontal predictor, modulo 2**bits
        strips.append(zlib.compress(diff.astype(dtype).tobytes(), _ZLIB_LEVEL))
    ifd[256], ifd[257] = w, h
    ifd[258] = (arr.itemsize * 8,) * c
    ifd[259] = 8  # Adobe deflate
    ifd[262] = 2 if c >= 3 else 1  # RGB or BlackIsZero
    ifd[273] = tuple(np.cumsum([0] + [len(s) for s in strips[:-1]]).tolist())  # relative; shifted on write
    ifd[277] = c
    ifd[278] = rows
    ifd[279] = tuple(len(s) for s in strips)
    ifd[284] = 1  # contiguous samples
    ifd[317] = 2  # horizontal differencing
    if c in (2, 4):
        ifd[338] = 2  # unassociated alpha
    if meta.xmp:
        ifd[700] = meta.xmp
    if meta.icc_profile:
        ifd[34675] = meta.icc_profile
    if meta.dpi:
        ifd[282], ifd[283], ifd[296] = meta.dpi[0], meta.dpi[1], 2
    f.write(ifd.tobytes(8).removeprefix(_EXIF_HEADER))
    for s in strips:
        f.write(s)


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__
