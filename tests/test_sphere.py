"""osr_sdk.sphere: the compiled kernels against the float64 reference, layouts, round trips, errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osr_sdk import sphere
from osr_sdk.errors import DeviceError, InputError
from osr_sdk.sphere import _reference as ref
from osr_sdk.sphere import ErpMerger, TangentLayout, erp_to_perspective, erp_to_tangent, tangent_layout, tangent_to_erp

TOL = 1e-4


def smooth_sphere_function(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """A smooth RGB function of the point on the sphere (continuous across the seam and the poles)."""
    x, y, z = np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)
    return np.stack(
        [0.5 + 0.3 * x * z + 0.1 * y, 0.5 + 0.25 * np.sin(2 * y + z), 0.5 + 0.2 * x - 0.2 * z * z], -1
    )


def analytic_erp(height: int, width: int) -> np.ndarray:
    lon, lat = ref.erp_lonlat(height, width)
    lon_g, lat_g = np.meshgrid(lon, lat)
    return smooth_sphere_function(lon_g, lat_g)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1.0 / np.mean((a - b) ** 2))


def random_views(rng: np.random.Generator, n: int, special: bool = True) -> np.ndarray:
    """Random view centres and fields of view, with centres on the ±180° seam and both poles."""
    lon = rng.uniform(-np.pi, np.pi, n)
    lat = rng.uniform(-np.pi / 2, np.pi / 2, n)
    if special:
        lon[:3] = [np.pi - 1e-3, -np.pi, 0.3]
        lat[:3] = [0.2, np.pi / 2, -np.pi / 2]
    tan_x = np.tan(np.radians(rng.uniform(5, 120, n)) / 2)
    tan_y = np.tan(np.radians(rng.uniform(5, 120, n)) / 2)
    return np.column_stack([lon, lat, tan_x, tan_y])


@pytest.mark.parametrize("interp", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_matches_reference(interp, seed):
    rng = np.random.default_rng(seed)
    height = int(rng.integers(8, 64))
    width = 2 * height + int(rng.integers(-1, 2))
    erp = rng.random((height, width, int(rng.integers(1, 5)))).astype(np.float32)
    # nearest rounds exact ties either way (e.g. atan2(±0, ·) = ±180° on pole-centred views)
    views = random_views(rng, 6, special=interp != "nearest")
    out_h, out_w = int(rng.integers(4, 40)), int(rng.integers(4, 40))
    got = sphere._sample(erp, views, out_h, out_w, interp)
    want = ref.sample_views(erp, views, out_h, out_w, interp)
    if interp == "nearest":
        assert np.mean(np.abs(got - want) > TOL) < 1e-3
    else:
        assert np.max(np.abs(got - want)) <= TOL


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    height=st.integers(4, 48),
    patch=st.integers(2, 24),
    blend=st.sampled_from(["feather", "uniform"]),
    feather=st.floats(0.05, 0.5),
)
def test_merge_matches_reference(seed, height, patch, blend, feather):
    rng = np.random.default_rng(seed)
    width = 2 * height + int(rng.integers(-1, 2))
    views = random_views(rng, 5)
    patches = rng.random((5, 3, patch, patch)).astype(np.float32)
    acc = np.zeros((height, width, 4), np.float32)
    from osr_sdk._spherical import merge_accumulate_cpu, merge_finalize_cpu

    merge_accumulate_cpu(patches, views, acc, ref.BLEND_CODES[blend], feather)
    want_acc = np.zeros((height, width, 4))
    ref.merge_accumulate(patches, views, want_acc, blend, feather)
    assert np.max(np.abs(acc - want_acc)) <= TOL * max(1.0, np.abs(want_acc).max())
    out = np.empty((height, width, 3), np.float32)
    merge_finalize_cpu(acc, out)
    covered = want_acc[..., 3] > 1e-3  # where the weights are tiny, the ratio amplifies rounding
    assert np.max(np.abs(out - ref.merge_finalize(want_acc))[covered]) <= TOL


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), height=st.integers(8, 40), interp=st.sampled_from(["bilinear", "bicubic"]))
def test_sampling_property(seed, height, interp):
    rng = np.random.default_rng(seed)
    erp = rng.random((height, 2 * height, 3)).astype(np.float32)
    views = random_views(rng, 3, special=False)
    got = sphere._sample(erp, views, 9, 13, interp)
    assert np.max(np.abs(got - ref.sample_views(erp, views, 9, 13, interp))) <= TOL


def test_interpolation_exact_at_pixel_centres():
    """An odd-sized view centred on an ERP pixel centre returns that pixel exactly at its centre."""
    rng = np.random.default_rng(3)
    erp = rng.random((32, 64, 3)).astype(np.float32)
    lon, lat = ref.erp_lonlat(32, 64)
    for interp in ("nearest", "bilinear", "bicubic"):
        for row, col in [(16, 0), (3, 63), (20, 31)]:
            view = np.array([[lon[col], lat[row], 0.3, 0.3]])
            got = sphere._sample(erp, view, 5, 5, interp)
            np.testing.assert_allclose(got[0, :, 2, 2], erp[row, col], atol=1e-6)


def test_layout_attributes_and_density():
    layout = tangent_layout(2048, 4096, patch_size=512)
    assert layout.patch_size == 512 and layout.out_hw == (2048, 4096)
    assert layout.centers_deg.shape == (len(layout), 2) and layout.fov_deg.shape == (len(layout),)
    # patch pixel pitch at the centre equals the ERP's equator pitch
    pitch_patch = 2 * np.tan(np.radians(layout.fov_deg) / 2) / 512
    np.testing.assert_allclose(pitch_patch, 2 * np.pi / 4096)
    lats = layout.centers_deg[:, 1]
    assert lats.max() == 90 and lats.min() == -90
    ring_counts = {round(lat, 6): int(np.sum(lats == lat)) for lat in np.unique(lats)}
    equator = ring_counts[min(ring_counts, key=abs)]
    assert all(count <= equator for count in ring_counts.values())  # fewer patches towards the poles


@pytest.mark.parametrize("hw, patch, overlap", [((256, 512), 64, 0.25), ((201, 401), 48, 0.1), ((128, 256), 64, 0.5)])
def test_layout_covers_every_pixel_with_a_patch_core(hw, patch, overlap):
    layout = tangent_layout(*hw, patch_size=patch, overlap=overlap)
    ones = np.ones((len(layout), 1, patch, patch), np.float32)
    acc = np.zeros((*hw, 2))
    ref.merge_accumulate(ones, layout.views, acc, "feather", overlap)
    lon, lat = ref.erp_lonlat(*hw)
    lon_g, lat_g = np.meshgrid(lon, lat)
    best = np.zeros(hw)
    for lon0, lat0, tan_x, tan_y in layout.views:
        x, y, cos_c = ref.gnomonic_forward(lon_g, lat_g, lon0, lat0)
        core = (cos_c > 0) & (np.abs(x) <= tan_x * (1 - overlap)) & (np.abs(y) <= tan_y * (1 - overlap))
        best = np.maximum(best, core)
    assert best.min() == 1  # every pixel lies in the full-weight core of some patch
    assert acc[..., 1].min() >= 1 - 1e-9


def test_round_trip_of_a_smooth_function():
    height, width, patch = 256, 512, 64
    layout = tangent_layout(height, width, patch_size=patch)
    erp = analytic_erp(height, width).astype(np.float32)
    merged = tangent_to_erp(erp_to_tangent(erp, layout), layout)
    assert psnr(merged, erp) >= 45
    # no seam column at ±180°: the edge columns are no worse than the interior
    col_err = np.abs(merged - erp).mean(axis=(0, 2))
    assert max(col_err[0], col_err[-1]) <= 2 * np.median(col_err) + 1e-5
    # the merge alone, from analytically exact patches
    patches = np.empty((len(layout), 3, patch, patch), np.float32)
    for n, (lon0, lat0, tan_x, tan_y) in enumerate(layout.views):
        gx, gy = ref.view_grid(patch, patch, tan_x, tan_y)
        lon, lat = ref.gnomonic_inverse(gx, gy, lon0, lat0)
        patches[n] = np.moveaxis(smooth_sphere_function(lon, lat), -1, 0)
    assert psnr(tangent_to_erp(patches, layout), erp) >= 45


def test_lq_sampling_does_the_upsample():
    layout = tangent_layout(256, 512, patch_size=64)
    lq = analytic_erp(64, 128).astype(np.float32)
    patches = erp_to_tangent(lq, layout)
    assert patches.shape == (len(layout), 3, 64, 64)
    assert psnr(tangent_to_erp(patches, layout), analytic_erp(256, 512)) >= 35


def test_merger_in_batches_equals_all_at_once():
    layout = tangent_layout(128, 256, patch_size=32)
    erp = analytic_erp(128, 256).astype(np.float32)
    merger = ErpMerger(layout)
    for start in range(0, len(layout), 7):
        batch = slice(start, min(start + 7, len(layout)))
        merger.add(erp_to_tangent(erp, layout, indices=batch), batch)
    np.testing.assert_allclose(merger.result(), tangent_to_erp(erp_to_tangent(erp, layout), layout), atol=1e-6)


def test_perspective_matches_py360convert(monkeypatch):
    py360convert = pytest.importorskip("py360convert")
    # with OpenCV, py360convert rounds its maps to 1/32 px; its scipy path is exact
    monkeypatch.setattr(py360convert.utils, "cv2", None)
    rng = np.random.default_rng(4)
    erp = analytic_erp(256, 512).astype(np.float32) + 0.05 * rng.random((256, 512, 3)).astype(np.float32)
    out_h, out_w, fov = 60, 80, 70.0
    # py360convert puts its first and last samples on the field's edges; match its sample grid
    h_fov = 2 * math.degrees(math.atan(math.tan(math.radians(fov) / 2) * out_w / (out_w - 1)))
    v_fov = 2 * math.degrees(math.atan(math.tan(math.radians(fov) / 2) * out_h / (out_h - 1)))
    for yaw, pitch in [(30.0, 20.0), (-170.0, -40.0), (179.0, 0.0)]:
        got = erp_to_perspective(erp, (h_fov, v_fov), yaw, pitch, (out_h, out_w), interp="bilinear")
        want = py360convert.e2p(erp, fov_deg=fov, u_deg=yaw, v_deg=pitch, out_hw=(out_h, out_w), mode="bilinear")
        assert got.shape == (out_h, out_w, 3)
        assert np.max(np.abs(got - want)) < 2e-3


def test_perspective_direction_conventions():
    """Yaw +right (east), pitch +up: a bright spot east of centre is seen at yaw +45."""
    erp = np.zeros((90, 180, 1), np.float32)
    erp[40:50, 130:140] = 1  # around lon +90 + ..., lat 0
    lon = (135 + 0.5) / 180 * 360 - 180
    view = erp_to_perspective(erp, 30, lon, 0, (31, 31))
    assert view[15, 15, 0] == pytest.approx(1.0)
    assert erp_to_perspective(erp, 30, -lon, 0, (31, 31)).max() == 0


@pytest.mark.parametrize(
    "erp, match",
    [
        (np.zeros((32, 64), np.float32), "3 dimensions"),
        (np.zeros((32, 64, 3), np.float64), "float32"),
        (np.zeros((32, 64, 3), np.uint8), "float32"),
        (np.zeros((0, 64, 3), np.float32), "empty"),
        (np.zeros((32, 60, 3), np.float32), "2:1"),
        (np.zeros((64, 32, 3), np.float32), "2:1"),
        (np.zeros((32, 64, 3), np.float32).transpose(1, 0, 2)[:32], "2:1|contiguous"),
        (np.zeros((32, 128, 3), np.float32)[:, ::2], "contiguous"),
        (np.full((32, 64, 3), np.nan, np.float32), "NaN"),
        (np.full((32, 64, 3), np.inf, np.float32), "NaN or Inf"),
    ],
)
def test_bad_erp_raises(erp, match):
    layout = tangent_layout(32, 64, patch_size=8)
    with pytest.raises(InputError, match=match):
        erp_to_tangent(erp, layout)
    with pytest.raises(InputError):
        erp_to_perspective(erp, 60, 0, 0, (8, 8))


def test_bad_layout_and_arguments_raise():
    with pytest.raises(InputError, match="too large"):
        tangent_layout(128, 256, patch_size=512)
    with pytest.raises(InputError, match="patch_size"):
        tangent_layout(2048, 4096, patch_size=4)
    with pytest.raises(InputError, match="overlap"):
        tangent_layout(2048, 4096, overlap=0.9)
    with pytest.raises(InputError, match="2:1"):
        tangent_layout(2048, 3000)
    with pytest.raises(InputError, match="fields of view"):
        TangentLayout(np.zeros((1, 2)), np.array([170.0]), 64, (64, 128), 0.25)
    with pytest.raises(InputError, match="latitudes"):
        TangentLayout(np.array([[0.0, 95.0]]), np.array([40.0]), 64, (64, 128), 0.25)
    layout = tangent_layout(64, 128, patch_size=16)
    erp = np.zeros((64, 128, 3), np.float32)
    with pytest.raises(InputError, match="interp"):
        erp_to_tangent(erp, layout, interp="lanczos")
    with pytest.raises(InputError, match="indices"):
        erp_to_tangent(erp, layout, indices=[len(layout)])
    with pytest.raises(InputError, match="blend"):
        tangent_to_erp(np.zeros((len(layout), 3, 16, 16), np.float32), layout, blend="max")
    with pytest.raises(InputError, match="shape"):
        tangent_to_erp(np.zeros((len(layout), 3, 8, 8), np.float32), layout)
    with pytest.raises(InputError, match="fov"):
        erp_to_perspective(erp, 180, 0, 0, (8, 8))
    with pytest.raises(InputError, match="pitch"):
        erp_to_perspective(erp, 90, 0, 91, (8, 8))
    with pytest.raises(InputError, match="no patches"):
        ErpMerger(layout).result()


class FakeCudaArray:
    """Claims (through the DLPack protocol) to live on a CUDA device."""

    shape, dtype = (32, 64, 3), "float32"

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 7)


def test_cuda_input_without_usable_cuda_is_a_device_error():
    if sphere.cuda_available():
        pytest.skip("a CUDA device is present")
    layout = tangent_layout(32, 64, patch_size=8)
    with pytest.raises(DeviceError, match="without CUDA kernels|not visible"):
        erp_to_tangent(FakeCudaArray(), layout)
    with pytest.raises(DeviceError):
        erp_to_perspective(FakeCudaArray(), 60, 0, 0, (8, 8))


gpu = pytest.mark.gpu


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not (torch.cuda.is_available() and sphere.cuda_available()):
        pytest.skip("needs a CUDA device and the CUDA kernels")
    return torch


@gpu
def test_cuda_kernels_match_cpu():
    torch = _cuda_torch()
    layout = tangent_layout(256, 512, patch_size=64)
    erp = analytic_erp(64, 128).astype(np.float32)
    cpu_patches = erp_to_tangent(erp, layout)
    gpu_patches = erp_to_tangent(torch.from_numpy(erp).cuda(), layout)
    assert isinstance(gpu_patches, torch.Tensor) and gpu_patches.is_cuda
    assert np.max(np.abs(gpu_patches.cpu().numpy() - cpu_patches)) <= TOL
    merged = tangent_to_erp(gpu_patches, layout)
    assert isinstance(merged, torch.Tensor) and merged.is_cuda
    assert np.max(np.abs(merged.cpu().numpy() - tangent_to_erp(cpu_patches, layout))) <= TOL
    view = erp_to_perspective(torch.from_numpy(erp).cuda(), 90, 10, 20, (40, 50))
    assert np.max(np.abs(view.cpu().numpy() - erp_to_perspective(erp, 90, 10, 20, (40, 50)))) <= TOL


@gpu
def test_cuda_bad_input():
    torch = _cuda_torch()
    layout = tangent_layout(64, 128, patch_size=16)
    with pytest.raises(InputError, match="NaN"):
        erp_to_tangent(torch.full((64, 128, 3), float("nan"), device="cuda"), layout)
    with pytest.raises(InputError, match="float32"):
        erp_to_tangent(torch.zeros((64, 128, 3), device="cuda", dtype=torch.float16), layout)
