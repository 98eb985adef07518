"""Tests of osr_sdk.imageio: formats, bit depths, layouts, metadata, errors and atomic writes.

Every image is generated in tmp_path; 16-bit files are also hand-made (struct + zlib) so that
reading is not only checked against our own encoders.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from osr_sdk import imageio
from osr_sdk.errors import (
    ImageTooLargeError,
    InputError,
    OutputExistsError,
    TruncatedImageError,
    UnreadableImageError,
    UnsupportedImageError,
)
from osr_sdk.imageio import ImageMetadata, from_array, read_image, to_array, write_image

RNG = np.random.default_rng(1234)
EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tif"}
GPANO = "http://ns.google.com/photos/1.0/panorama/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def noise(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def smooth(h: int = 32, w: int = 48) -> np.ndarray:
    """A smooth RGB uint8 image (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)


def gpano_xmp(w: int, h: int) -> bytes:
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}">
<rdf:Description rdf:about="" xmlns:GPano="{GPANO}" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
 GPano:ProjectionType="equirectangular" GPano:UsePanoramaViewer="True"
 GPano:FullPanoWidthPixels="{w}" GPano:FullPanoHeightPixels="{h}"
 GPano:CroppedAreaImageWidthPixels="{w}" GPano:CroppedAreaImageHeightPixels="{h}"
 GPano:CroppedAreaLeftPixels="0" GPano:CroppedAreaTopPixels="0" GPano:PoseHeadingDegrees="90.0"/>
</rdf:RDF></x:xmpmeta><?xpacket end="w"?>""".encode()


def gpano_of(xmp: bytes) -> dict[str, str]:
    desc = ET.fromstring(xmp.rstrip(b"\0 ")).find(f".//{{{RDF}}}Description")
    assert desc is not None
    return {k.split("}")[1]: v for k, v in desc.attrib.items() if k.startswith(f"{{{GPANO}}}")}


def png16(arr: np.ndarray, *, interlace: bool = False) -> bytes:
    """A 16-bit PNG made by hand: filter 0, optionally Adam7-interlaced."""
    h, w, c = arr.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes if interlace else [(0, 0, 1, 1)]:
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.astype(">u2").tobytes() for row in sub)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, int(interlace))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tiff16(arr: np.ndarray, order: str) -> bytes:
    """An uncompressed 16-bit RGB(A) TIFF made by hand, little ('<') or big ('>') endian."""
    h, w, c = arr.shape
    data = arr.astype(f"{order}u2").tobytes()
    entries = [(256, 4, w), (257, 4, h), (258, 3, None), (259, 3, 1), (262, 3, 2), (273, 4, None),
               (277, 3, c), (278, 4, h), (279, 4, len(data)), (284, 3, 1)] + ([(338, 3, 2)] if c == 4 else [])
    bps_at = 8 + 2 + 12 * len(entries) + 4
    out = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "IH", 8, len(entries))
    for tag, typ, val in entries:
        count = c if tag == 258 else 1
        if tag == 258:
            value = struct.pack(order + "I", bps_at)
        elif tag == 273:
            value = struct.pack(order + "I", bps_at + 2 * c)
        else:
            value = struct.pack(order + ("HH" if typ == 3 else "I"), *((val, 0) if typ == 3 else (val,)))
        out += struct.pack(order + "HHI", tag, typ, count) + value
    return out + struct.pack(order + "I", 0) + struct.pack(order + "H" * c, *[16] * c) + data


@pytest.fixture
def restore_limits():
    before = imageio.get_max_pixels(), PIL.Image.MAX_IMAGE_PIXELS
    yield
    imageio.set_max_pixels(before[0])
    PIL.Image.MAX_IMAGE_PIXELS = before[1]


# --------------------------------------------------------------------------------------------
# Round trips

LAYOUTS = {"gray": (24, 40), "gray_alpha": (24, 40, 2), "rgb": (24, 40, 3), "rgba": (24, 40, 4)}


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_8bit_round_trip_exact(tmp_path: Path, fmt: str, layout: str) -> None:
    a = noise(LAYOUTS[layout])
    path = write_image(from_array(a), tmp_path / f"x.{EXT[fmt]}")
    img = read_image(path)
    assert (img.bit_depth, img.gray, img.alpha is not None) == (8, layout.startswith("gray"), layout.endswith("alpha") or layout == "rgba")
    assert img.metadata.format == fmt
    assert np.array_equal(to_array(img), a)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_webp_lossless_round_trip_exact(tmp_path: Path, layout: str) -> None:
    a = noise(LAYOUTS[layout])
    a[..., -1][:4] = 0  # fully transparent pixels keep their colour (exact=True) where alpha exists
    img = read_image(write_image(from_array(a), tmp_path / "x.webp", lossless=True))
    got = to_array(img)
    # WebP has no gray mode: gray comes back as RGB with equal channels
    expected = {"gray": a[..., None].repeat(3, 2), "gray_alpha": a[..., [0, 0, 0, 1]]}.get(layout, a)
    assert not img.gray and np.array_equal(got, expected)


@pytest.mark.parametrize("gray", [False, True])
def test_jpeg_round_trip_approximate(tmp_path: Path, gray: bool) -> None:
    a = smooth()
    if gray:
        a = a[..., 0]
    img = read_image(write_image(from_array(a), tmp_path / "x.jpg", quality=95))
    assert img.gray == gray and img.bit_depth == 8
    assert np.abs(to_array(img).astype(int) - a).mean() < 2.0


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_16bit_round_trip_exact(tmp_path: Path, fmt: str, layout: str) -> None:
    a = noise(LAYOUTS[layout], np.uint16)
    img = read_image(write_image(from_array(a), tmp_path / f"x.{EXT[fmt]}"))
    assert img.bit_depth == 16
    got = to_array(img)
    assert got.dtype == np.uint16
    if fmt == "TIFF" and layout == "gray_alpha":  # documented: written as RGBA
        assert np.array_equal(got, a[..., [0, 0, 0, 1]])
    else:
        assert img.gray == layout.startswith("gray")
        assert np.array_equal(got, a)


def test_16bit_png_is_a_valid_png(tmp_path: Path) -> None:
    a = noise((300, 1000, 3), np.uint16)  # several IDAT blocks
    path = write_image(from_array(a), tmp_path / "x.png")
    with PIL.Image.open(path) as pil:
        pil.verify()  # CRCs and chunk structure
    with PIL.Image.open(path) as pil:
        assert np.array_equal(np.asarray(pil), (a >> 8).astype(np.uint8))  # Pillow's 8-bit view


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_reads_hand_made_16bit_png(tmp_path: Path, channels: int, interlace: bool) -> None:
    a = noise((13, 19, channels), np.uint16)
    (tmp_path / "x.png").write_bytes(png16(a, interlace=interlace))
    img = read_image(tmp_path / "x.png")
    assert img.bit_depth == 16 and img.gray == (channels == 2)
    assert np.array_equal(to_array(img), a)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("channels", [3, 4])
def test_reads_hand_made_uncompressed_16bit_tiff(tmp_path: Path, order: str, channels: int) -> None:
    a = noise((11, 17, channels), np.uint16)
    (tmp_path / "x.tif").write_bytes(tiff16(a, order))
    img = read_image(tmp_path / "x.tif")
    assert img.bit_depth == 16
    assert np.array_equal(to_array(img), a)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_16bit_to_8bit_only_formats_is_rounded(tmp_path: Path, fmt: str) -> None:
    a = (smooth().astype(np.uint16) * 257)
    img = read_image(write_image(from_array(a), tmp_path / f"x.{EXT[fmt]}"))
    assert img.bit_depth == 8
    assert np.abs(to_array(img).astype(int) - a // 257).mean() < 2.0


def test_gray_in_gray_out(tmp_path: Path) -> None:
    a = noise((20, 30))
    PIL.Image.fromarray(a).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.gray and img.mode == "L" and img.pixels.shape == (20, 30, 3)
    assert np.array_equal(img.pixels[..., 0], img.pixels[..., 2])  # replicated for the model
    for ext in ("png", "jpg", "tif"):
        write_image(img, tmp_path / f"out.{ext}")
        with PIL.Image.open(tmp_path / f"out.{ext}") as pil:
            assert pil.mode == "L"
    g16 = from_array(noise((20, 30), np.uint16))
    write_image(g16, tmp_path / "g16.png")
    with PIL.Image.open(tmp_path / "g16.png") as pil:
        assert pil.mode == "I;16"


def test_rgba_alpha_kept_for_the_caller(tmp_path: Path) -> None:
    a = noise((16, 24, 4))
    PIL.Image.fromarray(a).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.pixels.shape == (16, 24, 3) and img.alpha is not None and img.alpha.shape == (16, 24)
    assert np.array_equal(np.rint(img.alpha * 255).astype(np.uint8), a[..., 3])
    # the caller upscales alpha on its own; a new-size image keeps it through the write
    up = dataclasses.replace(img, pixels=np.repeat(np.repeat(img.pixels, 2, 0), 2, 1),
                             alpha=np.repeat(np.repeat(img.alpha, 2, 0), 2, 1))
    back = read_image(write_image(up, tmp_path / "up.png"))
    assert back.alpha is not None and np.array_equal(back.alpha[::2, ::2], img.alpha)


def test_palette_and_transparency_are_converted(tmp_path: Path) -> None:
    pal = PIL.Image.fromarray(noise((8, 8, 3))).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    assert img.mode == "P" and not img.gray and img.alpha is not None
    assert img.alpha.min() == 0.0 and img.alpha.max() == 1.0


def test_cmyk_is_converted_and_its_profile_dropped(tmp_path: Path) -> None:
    PIL.Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", icc_profile=b"fake-cmyk-profile")
    img = read_image(tmp_path / "c.jpg")
    assert img.mode == "CMYK" and not img.gray and img.metadata.icc_profile is None
    assert np.allclose(img.pixels[0, 0], [1, 0, 0], atol=0.05)


def test_float_image_is_unsupported(tmp_path: Path) -> None:
    PIL.Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UnsupportedImageError, match="'F'"):
        read_image(tmp_path / "f.tif")


# --------------------------------------------------------------------------------------------
# Metadata


def test_exif_orientation_6_is_applied_and_reset(tmp_path: Path) -> None:
    a = smooth(16, 32)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "TestCam"
    PIL.Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif, quality=100, subsampling=0)
    img = read_image(tmp_path / "o.jpg")
    assert (img.height, img.width) == (32, 16)
    assert np.abs(to_array(img).astype(int) - np.rot90(a, -1)).mean() < 2.0
    out = write_image(img, tmp_path / "out.jpg")
    with PIL.Image.open(out) as pil:
        assert pil.getexif()[0x0112] == 1 and pil.getexif()[0x010F] == "TestCam"
        assert pil.size == (16, 32)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_every_exif_orientation_matches_pillow(tmp_path: Path, fmt: str) -> None:
    a = noise((6, 10, 3))
    for orientation in range(1, 9):
        exif = PIL.Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{EXT[fmt]}"
        PIL.Image.fromarray(a).save(path, exif=exif.tobytes(), lossless=True)
        with PIL.Image.open(path) as pil:
            expected = np.asarray(PIL.ImageOps.exif_transpose(pil))
        img = read_image(path)
        assert np.array_equal(to_array(img), expected), orientation
        exif_back = PIL.Image.Exif()
        exif_back.load(img.metadata.exif or b"")
        assert exif_back.get(0x0112) == 1


def test_xmp_orientation_is_reset_too(tmp_path: Path) -> None:
    xmp = gpano_xmp(10, 6).replace(b'GPano:PoseHeadingDegrees="90.0"', b'GPano:PoseHeadingDegrees="90.0" tiff:Orientation="8"')
    exif = PIL.Image.Exif()
    exif[0x0112] = 8
    PIL.Image.fromarray(noise((6, 10, 3))).save(tmp_path / "o.jpg", exif=exif, xmp=xmp)
    img = read_image(tmp_path / "o.jpg")
    assert (img.height, img.width) == (10, 6)
    assert img.metadata.xmp is not None and b'tiff:Orientation="1"' in img.metadata.xmp


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_gpano_xmp_kept_and_scaled(tmp_path: Path, fmt: str, bit_depth: int) -> None:
    PIL.Image.fromarray(smooth(16, 32)).save(tmp_path / "pano.jpg", xmp=gpano_xmp(32, 16))
    img = read_image(tmp_path / "pano.jpg")
    assert img.metadata.xmp is not None and gpano_of(img.metadata.xmp)["FullPanoWidthPixels"] == "32"
    up = dataclasses.replace(img, pixels=np.zeros((64, 128, 3), np.float32), bit_depth=bit_depth)
    out = write_image(up, tmp_path / f"up.{EXT[fmt]}", scale_metadata=4)
    with PIL.Image.open(out) as pil:
        gpano = gpano_of(pil.info["xmp"])  # what other software sees
    assert gpano["ProjectionType"] == "equirectangular" and gpano["PoseHeadingDegrees"] == "90.0"
    assert gpano["FullPanoWidthPixels"] == gpano["CroppedAreaImageWidthPixels"] == "128"
    assert gpano["FullPanoHeightPixels"] == gpano["CroppedAreaImageHeightPixels"] == "64"
    assert gpano["CroppedAreaLeftPixels"] == gpano["CroppedAreaTopPixels"] == "0"
    back = read_image(out).metadata.xmp
    assert back is not None and gpano_of(back) == gpano


def test_metadata_scaled_element_form_and_offsets() -> None:
    xmp = (b"<GPano:FullPanoWidthPixels>8192</GPano:FullPanoWidthPixels>"
           b"<GPano:CroppedAreaLeftPixels> 100 </GPano:CroppedAreaLeftPixels>"
           b'<x GPano:CroppedAreaTopPixels = "7" GPano:PoseHeadingDegrees="12"/>')
    scaled = ImageMetadata(xmp=xmp).scaled(2.5).xmp
    assert scaled == (b"<GPano:FullPanoWidthPixels>20480</GPano:FullPanoWidthPixels>"
                      b"<GPano:CroppedAreaLeftPixels> 250 </GPano:CroppedAreaLeftPixels>"
                      b'<x GPano:CroppedAreaTopPixels = "18" GPano:PoseHeadingDegrees="12"/>')
    for bad in (0, -1, float("nan"), float("inf"), "2"):
        with pytest.raises(InputError):
            ImageMetadata(xmp=xmp).scaled(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_icc_and_dpi_kept(tmp_path: Path, fmt: str, bit_depth: int) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PIL.Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    meta = ImageMetadata(exif=exif.tobytes(), icc_profile=icc, dpi=(300.0, 300.0))
    img = dataclasses.replace(from_array(smooth().astype(np.uint16) * 257, bit_depth=bit_depth), metadata=meta)
    back = read_image(write_image(img, tmp_path / f"x.{EXT[fmt]}"))
    got = PIL.Image.Exif()
    got.load(back.metadata.exif or b"")
    assert got[0x010F] == "TestCam" and got.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"
    assert back.metadata.icc_profile == icc
    if fmt != "WEBP":  # WebP has no resolution field
        assert back.metadata.dpi is not None and np.allclose(back.metadata.dpi, 300, atol=0.1)


def test_tiff_layout_tags_are_not_kept_as_exif(tmp_path: Path) -> None:
    exif = PIL.Image.Exif()
    exif[0x010F] = "TestCam"
    PIL.Image.fromarray(noise((4, 4, 3))).save(tmp_path / "x.tif", exif=exif)
    kept = PIL.Image.Exif()
    kept.load(read_image(tmp_path / "x.tif").metadata.exif or b"")
    assert kept[0x010F] == "TestCam" and 256 not in kept and 273 not in kept


# --------------------------------------------------------------------------------------------
# Errors on read


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_truncated_file(tmp_path: Path, fmt: str, bit_depth: int) -> None:
    path = write_image(from_array(noise((64, 64, 3)), bit_depth=bit_depth), tmp_path / f"x.{EXT[fmt]}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TruncatedImageError, match="truncated or corrupt"):
        read_image(path)


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "r.png").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(UnreadableImageError, match="not a PNG, JPEG, WebP or TIFF"):
        read_image(tmp_path / "r.png")
    PIL.Image.new("RGB", (4, 4)).save(tmp_path / "g.gif")
    with pytest.raises(UnreadableImageError):
        read_image(tmp_path / "g.gif")
    with pytest.raises(UnreadableImageError, match="No such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(UnreadableImageError):
        read_image(tmp_path)


def test_decompression_bomb_guard(tmp_path: Path, restore_limits: None) -> None:
    PIL.Image.new("RGB", (20, 10)).save(tmp_path / "x.png")
    imageio.set_max_pixels(199)
    assert imageio.get_max_pixels() == 199
    with pytest.raises(ImageTooLargeError, match=r"20x10 = 200 pixels.*199.*set_max_pixels"):
        read_image(tmp_path / "x.png")
    imageio.set_max_pixels(200)
    assert read_image(tmp_path / "x.png").width == 20
    for bad in (0, -5, 1.5, True, "10"):
        with pytest.raises(InputError):
            imageio.set_max_pixels(bad)  # type: ignore[arg-type]


def test_pillow_bomb_error_is_mapped(tmp_path: Path, restore_limits: None) -> None:
    PIL.Image.new("RGB", (20, 10)).save(tmp_path / "x.png")
    PIL.Image.MAX_IMAGE_PIXELS = 50  # Pillow refuses above twice its limit
    with pytest.raises(ImageTooLargeError, match="set_max_pixels"):
        read_image(tmp_path / "x.png")
    imageio.set_max_pixels(1000)  # raising ours raises Pillow's too
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000
    assert read_image(tmp_path / "x.png").width == 20


# --------------------------------------------------------------------------------------------
# Arrays and Pillow images


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or Inf"),
        (np.full((4, 4), np.inf, np.float32), "NaN or Inf"),
        (np.full((4, 4, 3), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((4, 4, 3), -0.1, np.float64), r"\[0, 1\]"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int32), "int32"),
        (np.zeros((4, 4, 3), bool), "bool"),
        (np.zeros((4, 4, 3), np.float16), "float16"),
    ],
)
def test_from_array_rejects(arr: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        from_array(arr)


def test_from_array_and_to_array() -> None:
    f = np.linspace(-5e-4, 1 + 5e-4, 4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    img = from_array(f)  # small overshoot is clipped
    assert img.bit_depth == 8 and img.pixels.min() == 0 and img.pixels.max() == 1
    assert to_array(img, np.float32).dtype == np.float32
    assert from_array(noise((4, 6), np.uint16)).bit_depth == 16
    assert from_array(noise((4, 6, 1))).gray
    assert to_array(from_array(noise((4, 6, 3)), bit_depth=16)).dtype == np.uint16
    u8 = noise((4, 6, 4))
    assert np.array_equal(to_array(from_array(u8)), u8)
    with pytest.raises(InputError, match="dtype"):
        to_array(img, np.int32)
    bad = dataclasses.replace(img, pixels=np.full((4, 6, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        to_array(bad)
    with pytest.raises(InputError, match="float32"):
        imageio.Image(pixels=np.zeros((4, 6, 3)))
    with pytest.raises(InputError, match="alpha"):
        imageio.Image(pixels=np.zeros((4, 6, 3), np.float32), alpha=np.zeros((4, 5), np.float32))


def test_pil_conversions() -> None:
    a = noise((5, 7, 4))
    pil = imageio.to_pil(from_array(a))
    assert pil.mode == "RGBA" and np.array_equal(np.asarray(pil), a)
    assert np.array_equal(to_array(imageio.from_pil(pil)), a)
    assert imageio.to_pil(from_array(noise((5, 7), np.uint16))).mode == "I;16"
    with pytest.raises(UnsupportedImageError, match="16-bit"):
        imageio.to_pil(from_array(noise((5, 7, 3), np.uint16)))
    with pytest.raises(InputError):
        imageio.from_pil(a)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Writing


def test_existing_output_is_kept_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"precious")
    img = from_array(noise((8, 8, 3)))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_image(img, path)
    assert path.read_bytes() == b"precious"
    write_image(img, path, overwrite=True)
    assert np.array_equal(to_array(read_image(path)), to_array(img))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_failing_encoder_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    def boom(f, *args, **kwargs):  # writes part of a file, then fails
        f.write(b"partial")
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(imageio, "_save_pillow" if fmt == "PNG" else "_save_tiff", boom)
    (tmp_path / f"old.{EXT[fmt]}").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_image(from_array(noise((8, 8, 3))), tmp_path / f"x.{EXT[fmt]}")
    with pytest.raises(RuntimeError, match="encoder failed"):
        write_image(from_array(noise((8, 8, 3))), tmp_path / f"old.{EXT[fmt]}", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"old.{EXT[fmt]}"]
    assert (tmp_path / f"old.{EXT[fmt]}").read_bytes() == b"old"


def test_output_appearing_during_the_write_is_not_clobbered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.png"
    encode = imageio._save_pillow

    def racing(f, *args, **kwargs):
        path.write_bytes(b"other writer")
        encode(f, *args, **kwargs)

    monkeypatch.setattr(imageio, "_save_pillow", racing)
    with pytest.raises(OutputExistsError):
        write_image(from_array(noise((8, 8, 3))), path)
    assert path.read_bytes() == b"other writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_write_argument_errors(tmp_path: Path) -> None:
    rgb, rgba = from_array(noise((8, 8, 3))), from_array(noise((8, 8, 4)))
    cases = [
        (rgb, "x.png", {"format": "BMP"}, "format must be one of"),
        (rgb, "x.bmp", {}, "extension"),
        (rgb, "x.png", {"quality": 0}, "quality"),
        (rgb, "x.jpg", {"lossless": True}, "lossless"),
        (rgba, "x.jpg", {}, "alpha"),
        (rgb, "x.png", {"scale_metadata": 0}, "scale"),
        (from_array(np.zeros((1, 16384, 3), np.uint8)), "x.webp", {}, "16383"),
        ("not an image", "x.png", {}, "Image"),
    ]
    for img, name, kwargs, match in cases:
        with pytest.raises(InputError, match=match):
            write_image(img, tmp_path / name, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="folder"):
        write_image(rgb, tmp_path / "missing" / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_format_argument_overrides_extension(tmp_path: Path) -> None:
    path = write_image(from_array(noise((8, 8, 3))), tmp_path / "x.out", format="jpg")
    with PIL.Image.open(path) as pil:
        assert pil.format == "JPEG"


def test_written_file_has_ordinary_permissions(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    umask = os.umask(0o022)
    os.umask(umask)
    path = write_image(from_array(noise((8, 8, 3))), tmp_path / "x.png")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
