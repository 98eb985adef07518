"""osr_sdk.upscale / Upscaler / osr_runtime.Session end to end on the CPU EP, with a tiny bundle
exported by the real export stage (random weights, SD2.1-base structure)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import osr_sdk
from osr_sdk import imageio, sphere
from osr_sdk.cli import main as cli_main
from osr_sdk.errors import (
    BundleError,
    ImageTooLargeError,
    InputError,
    ModelMismatchError,
    OutputExistsError,
    ProviderUnavailableError,
    TruncatedImageError,
    UnreadableImageError,
)

SAMPLE = Path(osr_sdk.__file__).resolve().parent / "data" / "sample_erp.jpg"
PATCH = 32


@pytest.fixture(scope="session")
def tiny_bundle(export_tiny_model, tmp_path_factory) -> Path:
    """The tiny model exported with 32 px patches (so 360° jobs stay small)."""
    from osr_export.pipeline import ExportOptions, export_bundle

    base, lora = export_tiny_model
    out = tmp_path_factory.mktemp("sdk_bundle") / "bundle"
    export_bundle(base, lora, out, ExportOptions(patch_size=PATCH, name="tiny-test"))
    return out


@pytest.fixture(scope="session")
def upscaler(tiny_bundle) -> osr_sdk.Upscaler:
    return osr_sdk.Upscaler(tiny_bundle, providers=["cpu"])


def sample_erp(height: int) -> np.ndarray:
    img = PIL.Image.open(SAMPLE).convert("RGB").resize((2 * height, height), PIL.Image.BICUBIC)
    return np.asarray(img)


# ------------------------------------------------------------------------------ runtime Session


def test_session_runs_on_cpu_and_reports_it(upscaler):
    session = upscaler.session
    assert session.providers_in_use == {"encoder": "CPUExecutionProvider", "unet": "CPUExecutionProvider",
                                        "decoder": "CPUExecutionProvider"}
    lq = np.random.default_rng(0).random((3, 3, 32, 48)).astype(np.float32)
    sr = session.run(lq)
    assert sr.shape == lq.shape and sr.dtype == np.float32
    assert 0 <= sr.min() and sr.max() <= 1
    # batching does not change the result
    from osr_runtime.session import Session

    one = Session(session.bundle, ["cpu"], batch_size=1).run(lq)
    np.testing.assert_allclose(one, sr, atol=1e-5)


def test_session_rejects_bad_input(upscaler):
    from osr_runtime.errors import OsrError

    with pytest.raises(OsrError, match="multiples of 8"):
        upscaler.session.run(np.zeros((1, 3, 30, 32), np.float32))
    with pytest.raises(OsrError, match=r"\(N, 3, H, W\)"):
        upscaler.session.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(OsrError, match="NaN"):
        upscaler.session.run(np.full((1, 3, 32, 32), np.nan, np.float32))
    with pytest.raises(OsrError, match="float32"):
        upscaler.session.run(np.zeros((1, 3, 32, 32), np.float64))


def test_unavailable_provider_is_an_error_not_a_fallback(tiny_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA EP present")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider.*available: "):
        osr_sdk.Upscaler(tiny_bundle, providers=["cuda"])
    with pytest.raises(ProviderUnavailableError):
        osr_sdk.Upscaler(tiny_bundle, providers=[("NoSuchExecutionProvider", {})])


def test_default_providers_end_with_cpu(tiny_bundle):
    from osr_runtime import load_bundle
    from osr_runtime.session import default_providers

    names = [name for name, _ in default_providers(load_bundle(tiny_bundle))]
    assert names[-1] == "CPUExecutionProvider"


# ------------------------------------------------------------------------------ 360° path


def test_erp_array_round_trip_types_and_sizes(upscaler):
    lq = sample_erp(32)
    out = upscaler.upscale(lq)
    assert out.shape == (128, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, upscaler.upscale(lq))  # deterministic
    as_float = upscaler.upscale(lq.astype(np.float32) / 255)
    assert as_float.dtype == np.float32 and as_float.shape == (128, 256, 3)
    assert np.abs(as_float * 255 - out).max() <= 1.0


def test_erp_output_is_seamless_at_180(upscaler):
    for path in [SAMPLE]:
        out = upscaler.upscale(np.asarray(PIL.Image.open(path).convert("RGB").resize((128, 64)))).astype(np.float64)
        seam = np.abs(out[:, 0] - out[:, -1]).mean()
        interior = np.abs(np.diff(out[:, 1:-1], axis=1)).mean()
        assert seam <= 1.5 * interior, (seam, interior)


def test_no_visible_patch_border(upscaler):
    """Dropping one patch from the merge changes next to nothing at that patch's border (no step
    there), where an unfeathered merge shows the full step between disagreeing patches."""
    from osr_sdk.sphere import _reference as ref

    lq = sample_erp(32).astype(np.float32) / 255
    layout = sphere.tangent_layout(128, 256, patch_size=PATCH)
    sr = upscaler.session.run(sphere.erp_to_tangent(lq, layout))
    lon, lat = ref.erp_lonlat(128, 256)
    lon_g, lat_g = np.meshgrid(lon, lat)

    def border_step(blend: str, drop: int) -> float:
        keep = [i for i in range(len(layout)) if i != drop]
        merger = sphere.ErpMerger(layout, blend=blend)
        merger.add(sr[keep], keep)
        lon0, lat0, tan_x, tan_y = layout.views[drop]
        x, y, cos_c = ref.gnomonic_forward(lon_g, lat_g, lon0, lat0)
        edge = np.maximum(np.abs(x / tan_x), np.abs(y / tan_y))
        band = (cos_c > 0) & (edge < 1) & (edge >= 1 - 1 / PATCH)  # the patch's outer half pixel
        assert band.sum() > 8
        full = sphere.tangent_to_erp(sr, layout, blend=blend)
        return float(np.abs(full - merger.result())[band].mean())

    for drop in (5, 20, 33):
        feather, uniform = border_step("feather", drop), border_step("uniform", drop)
        assert feather <= 0.01 and feather <= 0.1 * uniform, (drop, feather, uniform)


def test_erp_too_small_for_the_model(upscaler, tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(ModelMismatchError, match="does not fit"):
        upscaler.upscale(sample_erp(4), output=target)
    assert not target.exists()


# ------------------------------------------------------------------------------ planar path


def test_planar_types(upscaler):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 27, 3), dtype=np.uint8)
    out = upscaler.upscale(rgb)
    assert out.shape == (80, 108, 3) and out.dtype == np.uint8
    gray16 = rng.integers(0, 65536, (20, 27), dtype=np.uint16)
    out16 = upscaler.upscale(gray16)
    assert out16.shape == (80, 108) and out16.dtype == np.uint16
    rgba = rng.integers(0, 256, (20, 27, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:10, :, 3] = 0
    out_rgba = upscaler.upscale(rgba)
    assert out_rgba.shape == (80, 108, 4)
    assert out_rgba[:30, :, 3].max() <= 5 and out_rgba[50:, :, 3].min() >= 250  # alpha upscaled bicubically
    pil = upscaler.upscale(PIL.Image.fromarray(rgb))
    assert isinstance(pil, PIL.Image.Image) and pil.size == (108, 80)


def test_planar_tiles_blend_without_seams(upscaler):
    """An image larger than a tile is made of several tiles; their overlaps are feathered."""
    lq = sample_erp(32)[:, :40]  # 32×40 → 128×160 output, tiles of 32 px
    _, report = upscaler.upscale_with_report(lq)
    assert report.projection == "planar" and report.tiles > 1
    assert report.provider == "CPUExecutionProvider"


def test_profiled_report_times_each_stage(upscaler, tmp_path):
    _, plain = upscaler.upscale_with_report(sample_erp(16))
    assert plain.stage_seconds is None
    _, erp = upscaler.upscale_with_report(sample_erp(16), output=tmp_path / "o.png", profile=True)
    times = erp.stage_seconds
    assert all(times[s] > 0 for s in ("read", "erp_to_tangent", "encoder", "unet", "decoder", "merge", "write"))
    assert times["planar_tiles"] == 0 and times["transfer"] == 0  # the CPU, 360° path
    assert sum(times.values()) <= erp.seconds
    _, planar = upscaler.upscale_with_report(sample_erp(16), projection="planar", profile=True)
    assert planar.stage_seconds["planar_tiles"] > 0 and planar.stage_seconds["erp_to_tangent"] == 0


def test_projection_choice(upscaler):
    lq = sample_erp(16)
    _, erp = upscaler.upscale_with_report(lq)
    _, planar = upscaler.upscale_with_report(lq, projection="planar")
    assert (erp.projection, planar.projection) == ("erp", "planar")
    with pytest.raises(InputError, match="projection"):
        upscaler.upscale(lq, projection="cube")


# ------------------------------------------------------------------------------ files and errors


def test_path_in_array_out_and_output_file(upscaler, tmp_path):
    src = tmp_path / "pano.jpg"
    PIL.Image.fromarray(sample_erp(32)).save(src, quality=95)
    arr = upscaler.upscale(src)
    assert isinstance(arr, np.ndarray) and arr.shape == (128, 256, 3)
    written = upscaler.upscale(src, output=tmp_path / "pano_x4.png")
    assert written == tmp_path / "pano_x4.png" and imageio.read_image(written).width == 256


def test_existing_output_untouched(upscaler, tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        upscaler.upscale(sample_erp(16), output=target)
    assert target.read_bytes() == b"precious"
    upscaler.upscale(sample_erp(16), output=target, overwrite=True)
    assert imageio.read_image(target).width == 128


def test_gpano_metadata_scaled(upscaler, tmp_path):
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
           b'GPano:ProjectionType="equirectangular" GPano:FullPanoWidthPixels="64" GPano:FullPanoHeightPixels="32" '
           b'GPano:CroppedAreaImageWidthPixels="64" GPano:CroppedAreaImageHeightPixels="32" '
           b'GPano:CroppedAreaLeftPixels="0" GPano:CroppedAreaTopPixels="0"/></rdf:RDF></x:xmpmeta>')
    src = tmp_path / "sphere.jpg"
    PIL.Image.fromarray(sample_erp(32)).save(src, xmp=xmp)
    out = upscaler.upscale(src, output=tmp_path / "sphere_x4.jpg")
    meta = imageio.read_image(out).metadata.xmp
    assert b'FullPanoWidthPixels="256"' in meta and b'FullPanoHeightPixels="128"' in meta


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "bomb", "nan"])
def test_bad_images_leave_no_output(upscaler, tmp_path, case):
    target = tmp_path / "out.png"
    src = tmp_path / "in.png"
    if case == "garbage":
        src.write_bytes(b"not an image at all" * 10)
    elif case == "truncated":
        buf = io.BytesIO()
        PIL.Image.fromarray(sample_erp(32)).save(buf, format="PNG")
        src.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif case == "bomb":
        PIL.Image.fromarray(sample_erp(32)).save(src)
    expected = {"missing": UnreadableImageError, "garbage": UnreadableImageError,
                "truncated": TruncatedImageError, "bomb": ImageTooLargeError, "nan": InputError}[case]
    image = np.full((8, 16, 3), np.nan, np.float32) if case == "nan" else src
    limit = imageio.get_max_pixels()
    try:
        if case == "bomb":
            imageio.set_max_pixels(1000)
        with pytest.raises(expected):
            upscaler.upscale(image, output=target)
    finally:
        imageio.set_max_pixels(limit)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "in.png"] == []


def test_bad_bundles(tmp_path, tiny_bundle, monkeypatch):
    with pytest.raises(BundleError):
        osr_sdk.Upscaler(tmp_path / "nowhere")
    monkeypatch.setattr(osr_sdk.upscaler, "default_model_path", lambda: tmp_path / "no-default")
    with pytest.raises(BundleError, match="no embedded default model"):
        osr_sdk.Upscaler()
    monkeypatch.undo()
    with pytest.raises(ModelMismatchError, match="×4"):
        osr_sdk.upscale(sample_erp(16), model=tiny_bundle, scale=2, providers=["cpu"])


def test_upscale_function_caches_the_model(tiny_bundle):
    a = osr_sdk.upscale(sample_erp(16), model=tiny_bundle, providers=["cpu"])
    b = osr_sdk.upscale(sample_erp(16), model=tiny_bundle, providers=["cpu"])
    np.testing.assert_array_equal(a, b)
    from osr_sdk.upscaler import _cached_upscaler

    assert _cached_upscaler.cache_info().hits >= 1


# ------------------------------------------------------------------------------ CLI


def test_cli_upscale_folder_and_info(tiny_bundle, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    PIL.Image.fromarray(sample_erp(16)).save(inputs / "a.png")
    PIL.Image.fromarray(sample_erp(16)[:, :20]).save(inputs / "b.jpg")
    (inputs / "notes.txt").write_text("skip me")
    out = tmp_path / "out"
    assert cli_main(["upscale", str(inputs), "-o", str(out), "--model", str(tiny_bundle), "--providers", "cpu", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "32×16 → 128×64 (erp" in lines[0] and "CPUExecutionProvider" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png", "b_x4.jpg"]
    # a second run without --overwrite fails per file and leaves the outputs alone
    before = (out / "a_x4.png").read_bytes()
    assert cli_main(["upscale", str(inputs), "-o", str(out), "--model", str(tiny_bundle), "--providers", "cpu", "-q"]) == 1
    assert (out / "a_x4.png").read_bytes() == before
    assert "exists" in capsys.readouterr().err
    assert cli_main(["info", str(tiny_bundle)]) == 0
    info = capsys.readouterr().out
    assert "tiny-test" in info and "patch 32px" in info and "encoder.onnx" in info


def test_cli_views(tmp_path, capsys):
    assert cli_main(["views", "-o", str(tmp_path), "--size", "64"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "sample_erp_views.png" in names and len(names) == 7
    assert imageio.read_image(tmp_path / "sample_erp_front.png").width == 64


# ------------------------------------------------------------------------------ GPU (CUDA EP + DLPack path)


@pytest.mark.gpu
def test_cuda_provider_keeps_patches_on_gpu_and_matches_cpu(tiny_bundle, upscaler):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not sphere.cuda_available():
        pytest.skip("needs onnxruntime-gpu, a CUDA device and the CUDA kernels")
    gpu = osr_sdk.Upscaler(tiny_bundle, providers=["cuda"])
    assert set(gpu.session.providers_in_use.values()) == {"CUDAExecutionProvider"}
    for lq in (sample_erp(32), sample_erp(32)[:, :40]):  # the 360° path (GPU-resident), then planar
        got = gpu.upscale(lq).astype(np.int16)
        want = upscaler.upscale(lq).astype(np.int16)
        assert np.abs(got - want).max() <= 2
