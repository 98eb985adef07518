"""Tests of the compiled extension osr_sdk._spherical itself: argument checks and raw kernels.

The CPU kernels are checked against small numpy computations of DESIGN.md §4's formulas and
against the float64 reference (osr_sdk.sphere._reference); the CUDA kernels against the CPU ones
(tests marked `gpu`, skipped without a CUDA device and torch built with CUDA).
"""

from __future__ import annotations

import gc
import re
import sys

import numpy as np
import pytest
from osr_sdk import _spherical as S

PI = np.pi
NO_CUDA_BUILD = "built without CUDA kernels"


def raises(exc: type[Exception], fn_name: str, fragment: str):
    """pytest.raises for an error whose message starts with the function name and has `fragment`."""
    return pytest.raises(exc, match=rf"^{re.escape(fn_name)}: .*{re.escape(fragment)}")


def random_views(rng: np.random.Generator, n: int) -> np.ndarray:
    """n views (lon0, lat0, tan_half_x, tan_half_y), the first ones across the ±180° seam and
    over both poles, the rest anywhere, with fields of view from about 10° to 125°."""
    special = [(PI, 0.3), (-PI + 0.01, -0.2), (PI - 0.02, 1.2), (0.5, PI / 2), (-2.0, -PI / 2),
               (2.5, 1.45), (-0.7, -1.5)]
    lon = rng.uniform(-PI, PI, n)
    lat = rng.uniform(-PI / 2, PI / 2, n)
    for k, (lo, la) in enumerate(special[:n]):
        lon[k], lat[k] = lo, la
    tan = np.tan(np.radians(rng.uniform(5, 62, (n, 2))))
    return np.column_stack([lon, lat, tan])


# ------------------------------------------------------------------ numpy versions of DESIGN §4


def view_xy(h: int, w: int, tx: float, ty: float) -> tuple[np.ndarray, np.ndarray]:
    x = ((np.arange(w) + 0.5) / w * 2 - 1) * tx
    y = (1 - (np.arange(h) + 0.5) / h * 2) * ty
    return np.meshgrid(x, y)


def gnomonic_inverse(x, y, lon0, lat0):
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    s = np.cos(c) * np.sin(lat0) + y * np.sin(c) * np.cos(lat0) / np.where(rho > 0, rho, 1)
    lat = np.where(rho > 0, np.arcsin(np.clip(s, -1, 1)), lat0)
    lon = lon0 + np.arctan2(x * np.sin(c), rho * np.cos(lat0) * np.cos(c) - y * np.sin(lat0) * np.sin(c))
    return lon, lat


def erp_coords(lon, lat, H: int, W: int):
    return (lon + PI) / (2 * PI) * W - 0.5, (PI / 2 - lat) / PI * H - 0.5


def view_erp_coords(view, h: int, w: int, H: int, W: int):
    lon0, lat0, tx, ty = view
    lon, lat = gnomonic_inverse(*view_xy(h, w, tx, ty), lon0, lat0)
    return erp_coords(lon, lat, H, W)


def near_ties(view, h: int, w: int, H: int, W: int) -> np.ndarray:
    """(h, w) mask of view pixels whose ERP coordinates sit within rounding of a nearest tie
    (x.5), where float64 implementations may round either way."""
    xe, ye = view_erp_coords(view, h, w, H, W)
    return (np.abs(xe - np.floor(xe) - 0.5) < 1e-9) | (np.abs(ye - np.floor(ye) - 0.5) < 1e-9)


def fetch(erp, r, c):
    """ERP pixels at integer rows r, columns c: columns wrap, rows reflect at the poles."""
    H, W = erp.shape[:2]
    past = (r < 0) | (r >= H)
    r = np.where(r < 0, -1 - r, np.where(r >= H, 2 * H - 1 - r, r))
    c = np.where(past, c + W // 2, c) % W
    return erp[r, c]


def bilinear(erp, xe, ye):
    x0, y0 = np.floor(xe).astype(int), np.floor(ye).astype(int)
    tx, ty = (xe - x0)[..., None], (ye - y0)[..., None]
    top = fetch(erp, y0, x0) * (1 - tx) + fetch(erp, y0, x0 + 1) * tx
    bottom = fetch(erp, y0 + 1, x0) * (1 - tx) + fetch(erp, y0 + 1, x0 + 1) * tx
    return top * (1 - ty) + bottom * ty


def erp_lonlat_grid(H: int, W: int):
    lon = (np.arange(W) + 0.5) / W * 2 * PI - PI
    lat = PI / 2 - (np.arange(H) + 0.5) / H * PI
    return np.meshgrid(lon, lat)


def view_uv(view, H: int, W: int):
    """(u, v, inside) of every ERP pixel centre for one view."""
    lon0, lat0, tx, ty = view
    lon, lat = erp_lonlat_grid(H, W)
    cos_c = np.sin(lat0) * np.sin(lat) + np.cos(lat0) * np.cos(lat) * np.cos(lon - lon0)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.cos(lat) * np.sin(lon - lon0) / cos_c / tx
        v = (np.cos(lat0) * np.sin(lat) - np.sin(lat0) * np.cos(lat) * np.cos(lon - lon0)) / cos_c / ty
    return u, v, (cos_c > 0) & (np.abs(u) < 1) & (np.abs(v) < 1)


def smoothstep_weight(t, feather):
    a = np.clip((1 - np.abs(t)) / feather, 0, 1)
    return a * a * (3 - 2 * a)


# ------------------------------------------------------------------------------ module basics


def test_module_flags():
    assert isinstance(S.has_cuda(), bool)
    count = S.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if not S.has_cuda():
        assert count == 0


# ------------------------------------------------------------------------------ argument checks


def sample_args(**changes):
    args = dict(erp=np.zeros((8, 16, 3), np.float32), views=np.array([[0.0, 0.0, 0.5, 0.5]]),
                out=np.zeros((1, 3, 4, 5), np.float32), interp=1, threads=0)
    args.update(changes)
    return args


def merge_args(**changes):
    args = dict(patches=np.zeros((1, 3, 4, 5), np.float32), views=np.array([[0.0, 0.0, 0.5, 0.5]]),
                acc=np.zeros((8, 16, 4), np.float32), blend=1, feather=0.25, threads=0)
    args.update(changes)
    return args


def finalize_args(**changes):
    args = dict(acc=np.zeros((8, 16, 4), np.float32), out=np.zeros((8, 16, 3), np.float32), threads=0)
    args.update(changes)
    return args


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def sharing(**shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Arrays of the given shapes, all views of one buffer."""
    buf = np.zeros(4096, np.float32)
    return {name: buf[: np.prod(shape)].reshape(shape) for name, shape in shapes.items()}


BAD_VIEWS = [
    ([[0.0, 0.0, 0.5]], ValueError, "views must have shape (N, 4)"),
    (np.zeros((1, 4), np.float32), TypeError, "views must have dtype float64"),
    ([[0.0, 0.0, 0.5, 0.5]], TypeError, "views must be a numpy.ndarray"),
    ([[0.0, np.nan, 0.5, 0.5]], ValueError, "views[0] = (0, nan, 0.5, 0.5) is not finite"),
    ([[np.inf, 0.0, 0.5, 0.5]], ValueError, "is not finite"),
    ([[0.0, 1.6, 0.5, 0.5]], ValueError, "lat0 must lie in [-pi/2, pi/2]"),
    ([[0.0, 0.0, 0.0, 0.5]], ValueError, "tan_half_x and tan_half_y must be > 0"),
    ([[0.0, 0.0, 0.5, -1.0]], ValueError, "tan_half_x and tan_half_y must be > 0"),
]


@pytest.mark.parametrize("views, exc, fragment", BAD_VIEWS)
def test_bad_views(views, exc, fragment):
    if "numpy.ndarray" not in fragment:
        views = np.asarray(views)
    with raises(exc, "sample_views_cpu", fragment):
        S.sample_views_cpu(**sample_args(views=views))
    with raises(exc, "merge_accumulate_cpu", fragment):
        S.merge_accumulate_cpu(**merge_args(views=views))


@pytest.mark.parametrize(
    "changes, exc, fragment",
    [
        (dict(erp=[[0.0]]), TypeError, "erp must be a numpy.ndarray of float32, got list"),
        (dict(erp=np.zeros((8, 16, 3))), TypeError, "erp must have dtype float32, got float64"),
        (dict(erp=np.zeros((8, 16), np.float32)), ValueError, "erp must be 3-D (H, W, C), got shape (8, 16)"),
        (dict(erp=np.zeros((8, 32, 3), np.float32)[:, ::2]), ValueError, "erp must be C-contiguous"),
        (dict(erp=np.zeros((0, 16, 3), np.float32)), ValueError, "erp must not be empty"),
        (dict(out=np.zeros((2, 3, 4, 5), np.float32)), ValueError, "with N = 1 (views)"),
        (dict(out=np.zeros((1, 2, 4, 5), np.float32)), ValueError, "C = 3 (erp channels)"),
        (dict(out=np.zeros((1, 3, 0, 5), np.float32)), ValueError, "got (1, 3, 0, 5)"),
        (dict(out=np.zeros((1, 3, 4), np.float32)), ValueError, "out must be 4-D (N, C, h, w)"),
        (dict(out=np.zeros((1, 3, 4, 5), np.float16)), TypeError, "out must have dtype float32"),
        (dict(out=read_only(np.zeros((1, 3, 4, 5), np.float32))), ValueError, "out must be writeable"),
        (dict(interp=3), ValueError, "interp must be 0 (nearest), 1 (bilinear) or 2 (bicubic), got 3"),
        (dict(interp=-1), ValueError, "got -1"),
        (dict(threads=-1), ValueError, "threads must be >= 0"),
        (sharing(erp=(8, 16, 3), out=(1, 3, 4, 5)), ValueError, "erp and out must not share memory"),
    ],
)
def test_sample_bad_arguments(changes, exc, fragment):
    with raises(exc, "sample_views_cpu", fragment):
        S.sample_views_cpu(**sample_args(**changes))


@pytest.mark.parametrize(
    "changes, exc, fragment",
    [
        (dict(patches=np.zeros((1, 3, 4, 5), np.float64)), TypeError, "patches must have dtype float32"),
        (dict(patches=np.zeros((2, 3, 4, 5), np.float32)), ValueError, "with N = 1 (views)"),
        (dict(patches=np.zeros((1, 3, 4, 0), np.float32)), ValueError, "got (1, 3, 4, 0)"),
        (dict(acc=np.zeros((8, 16, 3), np.float32)), ValueError, "acc must have shape (H, W, C + 1)"),
        (dict(acc=np.zeros((8, 16), np.float32)), ValueError, "acc must be 3-D"),
        (dict(acc=np.zeros((8, 16, 4), np.float32).T), ValueError, "acc must be C-contiguous"),
        (dict(acc=read_only(np.zeros((8, 16, 4), np.float32))), ValueError, "acc must be writeable"),
        (dict(blend=2), ValueError, "blend must be 0 (uniform) or 1 (feather), got 2"),
        (dict(feather=0.0), ValueError, "feather must be a finite number > 0 with blend=1, got 0"),
        (dict(feather=float("nan")), ValueError, "feather must be a finite number > 0"),
        (dict(threads=-2), ValueError, "threads must be >= 0"),
        (sharing(patches=(1, 3, 4, 5), acc=(8, 16, 4)), ValueError, "must not share memory"),
    ],
)
def test_merge_bad_arguments(changes, exc, fragment):
    with raises(exc, "merge_accumulate_cpu", fragment):
        S.merge_accumulate_cpu(**merge_args(**changes))


def test_merge_uniform_ignores_feather():
    S.merge_accumulate_cpu(**merge_args(blend=0, feather=0.0))


@pytest.mark.parametrize(
    "changes, exc, fragment",
    [
        (dict(acc="acc"), TypeError, "acc must be a numpy.ndarray of float32, got str"),
        (dict(acc=np.zeros((8, 16, 1), np.float32)), ValueError, "with C >= 1"),
        (dict(out=np.zeros((8, 16, 4), np.float32)), ValueError, "must have shape (H, W, C) = (8, 16, 3)"),
        (dict(out=np.zeros((8, 15, 3), np.float32)), ValueError, "got (8, 15, 3)"),
        (dict(out=read_only(np.zeros((8, 16, 3), np.float32))), ValueError, "out must be writeable"),
        (dict(threads=-1), ValueError, "threads must be >= 0"),
        (sharing(acc=(8, 16, 4), out=(8, 16, 3)), ValueError, "acc and out must not share memory"),
    ],
)
def test_finalize_bad_arguments(changes, exc, fragment):
    with raises(exc, "merge_finalize_cpu", fragment):
        S.merge_finalize_cpu(**finalize_args(**changes))


# ------------------------------------------------------------------------------ CPU kernels


@pytest.mark.parametrize("interp", [0, 1, 2])
def test_sample_constant_image(interp):
    rng = np.random.default_rng(1)
    values = np.array([0.25, 0.5, 1.0], np.float32)
    erp = np.broadcast_to(values, (32, 64, 3)).copy()
    views = random_views(rng, 12)
    out = np.zeros((12, 3, 9, 11), np.float32)
    S.sample_views_cpu(erp, views, out, interp)
    np.testing.assert_allclose(out, np.broadcast_to(values[None, :, None, None], out.shape), atol=1e-6)


@pytest.mark.parametrize("interp", [0, 1, 2])
def test_sample_pixel_centre_is_exact(interp):
    """An odd-sized view centred on an ERP pixel centre returns that pixel at its centre."""
    rng = np.random.default_rng(2)
    H, W = 16, 32
    erp = rng.random((H, W, 2), dtype=np.float32)
    cells = [(0, 0), (5, 7), (31, 15), (16, 8)]
    lon, lat = erp_lonlat_grid(H, W)
    views = np.array([[lon[y, x], lat[y, x], 0.3, 0.2] for x, y in cells])
    out = np.zeros((len(cells), 2, 5, 7), np.float32)
    S.sample_views_cpu(erp, views, out, interp)
    for n, (x, y) in enumerate(cells):
        np.testing.assert_allclose(out[n, :, 2, 3], erp[y, x], atol=1e-6)


@pytest.mark.parametrize("interp", [0, 1])
def test_sample_matches_numpy(interp):
    """Nearest and bilinear, across the seam and over the poles, against DESIGN §4 in numpy."""
    rng = np.random.default_rng(3)
    H, W, h, w = 24, 48, 13, 17
    erp = rng.random((H, W, 3), dtype=np.float32)
    views = random_views(rng, 10)
    out = np.zeros((len(views), 3, h, w), np.float32)
    S.sample_views_cpu(erp, views, out, interp)
    for n, view in enumerate(views):
        xe, ye = view_erp_coords(view, h, w, H, W)
        if interp == 0:
            expected = fetch(erp, np.floor(ye + 0.5).astype(int), np.floor(xe + 0.5).astype(int))
            ties = near_ties(view, h, w, H, W)
            expected[ties] = np.moveaxis(out[n], 0, -1)[ties]
        else:
            expected = bilinear(erp.astype(np.float64), xe, ye)
        np.testing.assert_allclose(out[n], np.moveaxis(expected, -1, 0), atol=1e-5)


def test_sample_longitude_is_periodic():
    rng = np.random.default_rng(4)
    erp = rng.random((16, 32, 3), dtype=np.float32)
    views = random_views(rng, 5)
    outs = []
    for shift in (0.0, 2 * PI, -4 * PI):
        out = np.zeros((5, 3, 6, 8), np.float32)
        S.sample_views_cpu(erp, views + [shift, 0, 0, 0], out, 2)
        outs.append(out)
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-5)


@pytest.mark.parametrize("blend", [0, 1])
def test_merge_single_view_weights(blend):
    """A constant patch adds value * weight, with the weight of the .pyi (uniform or feather)."""
    H, W, feather = 32, 64, 0.3
    views = np.array([[2.9, 0.4, 0.7, 0.5]])  # crosses the ±180° seam
    values = np.array([1.0, 2.0], np.float32)
    patches = np.broadcast_to(values[None, :, None, None], (1, 2, 6, 5)).copy()
    acc = np.zeros((H, W, 3), np.float32)
    S.merge_accumulate_cpu(patches, views, acc, blend, feather)
    u, v, inside = view_uv(views[0], H, W)
    weight = inside * (smoothstep_weight(u, feather) * smoothstep_weight(v, feather) if blend else 1.0)
    assert inside.sum() > 50
    np.testing.assert_allclose(acc[..., 2], weight, atol=1e-6)
    np.testing.assert_allclose(acc[..., :2], weight[..., None] * values, atol=1e-6)


def test_merge_patch_coordinates():
    """Patches holding their own column / row index read back the clamped patch coordinates."""
    H, W, h, w = 40, 80, 9, 12
    views = np.array([[0.3, -PI / 2, 0.6, 0.6], [-1.0, 0.2, 0.5, 0.8]])
    patches = np.zeros((2, 2, h, w), np.float32)
    patches[:, 0] = np.arange(w)
    patches[:, 1] = np.arange(h)[:, None]
    for n, view in enumerate(views):
        acc = np.zeros((H, W, 3), np.float32)
        S.merge_accumulate_cpu(patches[n : n + 1], views[n : n + 1], acc, 0, 1.0)
        u, v, inside = view_uv(view, H, W)
        pj = np.clip((u + 1) / 2 * w - 0.5, 0, w - 1)
        pi = np.clip((1 - v) / 2 * h - 0.5, 0, h - 1)
        np.testing.assert_array_equal(acc[..., 2], inside.astype(np.float32))
        np.testing.assert_allclose(acc[inside, 0], pj[inside], atol=1e-5)
        np.testing.assert_allclose(acc[inside, 1], pi[inside], atol=1e-5)


def test_merge_adds_to_the_accumulator():
    rng = np.random.default_rng(5)
    patches = rng.random((3, 3, 8, 8), dtype=np.float32)
    views = random_views(rng, 3)
    once = np.zeros((16, 32, 4), np.float32)
    S.merge_accumulate_cpu(patches, views, once, 1, 0.25)
    twice = np.zeros_like(once)
    S.merge_accumulate_cpu(patches, views, twice, 1, 0.25)
    S.merge_accumulate_cpu(patches, views, twice, 1, 0.25)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-6)


def test_no_views_is_a_no_op():
    erp = np.ones((8, 16, 3), np.float32)
    S.sample_views_cpu(erp, np.zeros((0, 4)), np.zeros((0, 3, 4, 4), np.float32), 2)
    acc = np.full((8, 16, 4), 3.0, np.float32)
    S.merge_accumulate_cpu(np.zeros((0, 3, 4, 4), np.float32), np.zeros((0, 4)), acc, 1, 0.25)
    assert (acc == 3.0).all()


def test_finalize():
    rng = np.random.default_rng(6)
    acc = rng.random((10, 20, 4), dtype=np.float32)
    acc[::3, ::2, 3] = 0
    out = np.full((10, 20, 3), np.nan, np.float32)
    S.merge_finalize_cpu(acc, out)
    weight = acc[..., 3:]
    expected = np.where(weight != 0, acc[..., :3] / np.where(weight != 0, weight, 1), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert (out[::3, ::2] == 0).all()


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_results_do_not_depend_on_threads(threads):
    rng = np.random.default_rng(7)
    erp = rng.random((32, 64, 3), dtype=np.float32)
    views = random_views(rng, 7)
    ref_out, out = (np.zeros((7, 3, 10, 12), np.float32) for _ in range(2))
    S.sample_views_cpu(erp, views, ref_out, 2, 0)
    S.sample_views_cpu(erp, views, out, 2, threads)
    np.testing.assert_array_equal(out, ref_out)
    ref_acc, acc = (np.zeros((32, 64, 4), np.float32) for _ in range(2))
    S.merge_accumulate_cpu(out, views, ref_acc, 1, 0.25, 0)
    S.merge_accumulate_cpu(out, views, acc, 1, 0.25, threads)
    np.testing.assert_array_equal(acc, ref_acc)
    ref_fin, fin = (np.zeros((32, 64, 3), np.float32) for _ in range(2))
    S.merge_finalize_cpu(acc, ref_fin, 0)
    S.merge_finalize_cpu(acc, fin, threads)
    np.testing.assert_array_equal(fin, ref_fin)


def cube_views(tan_half: float) -> np.ndarray:
    centres = [(0, 0), (PI / 2, 0), (PI, 0), (-PI / 2, 0), (0, PI / 2), (0, -PI / 2)]
    return np.array([[lon, lat, tan_half, tan_half] for lon, lat in centres])


def test_round_trip_restores_a_smooth_image():
    """ERP -> 6 overlapping cube faces -> feathered merge -> ERP is close for a smooth image."""
    H, W = 64, 128
    lon, lat = erp_lonlat_grid(H, W)
    # Smooth on the sphere (a function of the 3D point): no seam or pole artefacts allowed.
    px, py, pz = np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)
    erp = np.stack([0.5 + 0.3 * px, 0.5 + 0.3 * py * pz, 0.5 + 0.2 * pz], -1).astype(np.float32)
    views = cube_views(1.25)
    patches = np.zeros((6, 3, 48, 48), np.float32)
    S.sample_views_cpu(erp, views, patches, 2)
    acc = np.zeros((H, W, 4), np.float32)
    S.merge_accumulate_cpu(patches, views, acc, 1, 0.2)
    assert (acc[..., 3] > 0).all()
    out = np.zeros((H, W, 3), np.float32)
    S.merge_finalize_cpu(acc, out)
    np.testing.assert_allclose(out, erp, atol=5e-3)


# ------------------------------------------------------------------ against the float64 reference


@pytest.fixture(scope="module")
def reference():
    return pytest.importorskip("osr_sdk.sphere._reference")


def random_case(rng: np.random.Generator):
    H = int(rng.integers(8, 48))
    W = int(2 * H + rng.integers(-1, 2)) if rng.random() < 0.7 else int(rng.integers(6, 100))
    C = int(rng.choice([1, 3, 4]))
    N = int(rng.integers(1, 9))
    h, w = (int(s) for s in rng.integers(3, 40, 2))
    return H, W, C, N, h, w


@pytest.mark.parametrize("interp", [0, 1, 2])
def test_sample_matches_reference(reference, interp):
    rng = np.random.default_rng(10 + interp)
    name = ["nearest", "bilinear", "bicubic"][interp]
    for _ in range(12):
        H, W, C, N, h, w = random_case(rng)
        erp = rng.random((H, W, C), dtype=np.float32)
        views = random_views(rng, N)
        out = np.zeros((N, C, h, w), np.float32)
        S.sample_views_cpu(erp, views, out, interp)
        expected = reference.sample_views(erp, views, h, w, name)
        if interp == 0:
            for n, view in enumerate(views):
                ties = near_ties(view, h, w, H, W)
                expected[n][:, ties] = out[n][:, ties]
        assert np.abs(out - expected).max() <= 1e-4, (H, W, C, N, h, w)


@pytest.mark.parametrize("blend", [0, 1])
def test_merge_matches_reference(reference, blend):
    rng = np.random.default_rng(20 + blend)
    for _ in range(12):
        H, W, C, N, h, w = random_case(rng)
        feather = float(rng.uniform(0.05, 1.0))
        patches = rng.random((N, C, h, w), dtype=np.float32)
        views = random_views(rng, N)
        acc = np.zeros((H, W, C + 1), np.float32)
        S.merge_accumulate_cpu(patches, views, acc, blend, feather)
        expected = np.zeros((H, W, C + 1))
        reference.merge_accumulate(patches, views, expected, ["uniform", "feather"][blend], feather)
        assert np.abs(acc - expected).max() <= 1e-4, (H, W, C, N, h, w)
        out = np.zeros((H, W, C), np.float32)
        S.merge_finalize_cpu(acc, out)
        assert np.abs(out - reference.merge_finalize(expected)).max() <= 1e-4, (H, W, C, N, h, w)


# ------------------------------------------------------------------------------ CUDA entry points


class FakeCudaArray:
    """Announces a CUDA device but hands out a numpy (host) DLPack capsule."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__()


# Each CUDA function, called with one array for all its array arguments, and that first argument's name.
CUDA_CALLS = {
    "sample_views_cuda": lambda a: S.sample_views_cuda(a, np.zeros((1, 4)), a, 1),
    "merge_accumulate_cuda": lambda a: S.merge_accumulate_cuda(a, np.zeros((1, 4)), a, 1, 0.25),
    "merge_finalize_cuda": lambda a: S.merge_finalize_cuda(a, a),
    "count_nonfinite_cuda": lambda a: S.count_nonfinite_cuda(a),
}
FIRST_ARGUMENT = {"sample_views_cuda": "erp", "merge_accumulate_cuda": "patches",
                  "merge_finalize_cuda": "acc", "count_nonfinite_cuda": "x"}


@pytest.mark.skipif(S.has_cuda(), reason="the module has CUDA kernels")
@pytest.mark.parametrize("name", sorted(CUDA_CALLS))
def test_cuda_functions_without_cuda_build(name):
    with raises(RuntimeError, name, NO_CUDA_BUILD):
        CUDA_CALLS[name](np.zeros((1, 3, 4, 4), np.float32))
    with raises(RuntimeError, "DeviceArray", NO_CUDA_BUILD):
        S.DeviceArray((2, 2))
    assert S.cuda_device_count() == 0


@pytest.mark.skipif(not S.has_cuda(), reason="the module has no CUDA kernels")
@pytest.mark.parametrize("name", sorted(CUDA_CALLS))
def test_cuda_functions_reject_host_arrays(name):
    call = CUDA_CALLS[name]
    first = FIRST_ARGUMENT[name]
    on_cpu = "must be on a CUDA device (DLPack device type 2), got device type 1 (CPU)"
    with raises(TypeError, name, f"{first} {on_cpu}"):
        call(np.zeros((1, 3, 4, 4), np.float32))
    with raises(TypeError, name, f"{first} must be a CUDA array implementing __dlpack__"):
        call([1.0, 2.0])
    with raises(TypeError, name, "gave a tensor on DLPack device (1, 0), not the (2, 0) that"):
        call(FakeCudaArray(np.zeros((1, 3, 4, 4), np.float32)))


@pytest.mark.skipif(not S.has_cuda() or S.cuda_device_count() > 0, reason="needs CUDA kernels, no device")
def test_device_array_without_a_device():
    with raises(RuntimeError, "DeviceArray", "no CUDA device is visible"):
        S.DeviceArray((4, 4))


DEVICE_CALLS = {
    "synchronize": lambda: S.synchronize(0),
    "cuda_mem_info": lambda: S.cuda_mem_info(0),
}


def test_device_functions_exist():
    """Bound in every build (with or without CUDA), so callers need no feature checks."""
    assert callable(S.synchronize) and callable(S.cuda_mem_info)
    assert callable(S.DeviceArray.copy_from_host) and callable(S.DeviceArray.to_host)


@pytest.mark.skipif(S.cuda_device_count() > 0, reason="a CUDA device is visible")
@pytest.mark.parametrize("name", sorted(DEVICE_CALLS))
def test_device_functions_without_a_device(name):
    """No CUDA build or no device: a RuntimeError naming the function, not a crash."""
    fragment = "no CUDA device is visible" if S.has_cuda() else NO_CUDA_BUILD
    with raises(RuntimeError, name, fragment):
        DEVICE_CALLS[name]()
    with pytest.raises(RuntimeError, match=r"^DeviceArray: "):
        S.DeviceArray((2, 3))


# ------------------------------------------------------------------------------ on a GPU


@pytest.fixture(scope="module")
def device():
    if not S.has_cuda() or S.cuda_device_count() == 0:
        pytest.skip("needs the CUDA kernels and a CUDA device")
    return 0


@pytest.fixture(scope="module")
def torch(device):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs torch with CUDA")
    return torch


@pytest.mark.gpu
def test_device_array(device):
    a = S.DeviceArray((3, 5, 7), device)
    assert a.shape == (3, 5, 7) and a.device == device and a.ptr != 0
    assert a.__dlpack_device__() == (2, device)
    a.zero_()
    assert S.count_nonfinite_cuda(a) == 0
    refs = sys.getrefcount(a)
    capsule = a.__dlpack__(stream=None)
    assert sys.getrefcount(a) == refs + 1  # the capsule keeps the array alive
    del capsule  # unconsumed: its destructor releases the array
    gc.collect()
    assert sys.getrefcount(a) == refs
    with pytest.raises(BufferError):
        a.__dlpack__(copy=True)
    with raises(ValueError, "DeviceArray", "dims >= 0"):
        S.DeviceArray((2, -1), device)
    with raises(ValueError, "DeviceArray", "device must be in [0, "):
        S.DeviceArray((2, 2), S.cuda_device_count())
    assert S.DeviceArray((0, 4), device).shape == (0, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(3, 5, 7), (1000,), (), (0, 4)])
def test_device_array_host_round_trip(device, shape):
    x = np.asarray(np.random.default_rng(40).standard_normal(shape), np.float32)
    a = S.DeviceArray(shape, device)
    a.copy_from_host(x)
    y = a.to_host()
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == shape
    assert y.flags.c_contiguous and y.flags.writeable
    np.testing.assert_array_equal(y, x)
    y2 = a.to_host()  # a new array every time
    if y.size:
        y.fill(np.nan)
        assert not np.isnan(y2).any()
    a.zero_()
    assert not a.to_host().any()
    x[...] = np.nan  # the source is not kept by the array
    assert S.count_nonfinite_cuda(a) == 0


@pytest.mark.gpu
def test_device_array_copy_from_host_bad_arguments(device):
    a = S.DeviceArray((3, 4), device)
    fn = "DeviceArray.copy_from_host"
    with raises(TypeError, fn, "array must be a numpy.ndarray of float32, got list"):
        a.copy_from_host([[0.0] * 4] * 3)
    with raises(TypeError, fn, "array must have dtype float32, got float64"):
        a.copy_from_host(np.zeros((3, 4)))
    with raises(TypeError, fn, "array must have dtype float32, got int32"):
        a.copy_from_host(np.zeros((3, 4), np.int32))
    with raises(ValueError, fn, "array must have the DeviceArray's shape (3, 4), got (4, 3)"):
        a.copy_from_host(np.zeros((4, 3), np.float32))
    with raises(ValueError, fn, "got (12,)"):
        a.copy_from_host(np.zeros(12, np.float32))
    with raises(ValueError, fn, "array must be C-contiguous"):
        a.copy_from_host(np.zeros((3, 8), np.float32)[:, ::2])
    with raises(ValueError, fn, "array must be C-contiguous"):
        a.copy_from_host(np.zeros((4, 3), np.float32).T)
    a.copy_from_host(read_only(np.ones((3, 4), np.float32)))  # only read
    np.testing.assert_array_equal(a.to_host(), np.ones((3, 4), np.float32))


@pytest.mark.gpu
def test_synchronize_and_mem_info(device):
    a = S.DeviceArray((1 << 20,), device)
    a.zero_()  # asynchronous
    assert S.synchronize(device) is None
    free, total = S.cuda_mem_info(device)
    assert isinstance(free, int) and isinstance(total, int)
    assert 0 < free <= total
    count = S.cuda_device_count()
    for fn, call in (("synchronize", S.synchronize), ("cuda_mem_info", S.cuda_mem_info)):
        with raises(ValueError, fn, f"device must be in [0, {count}), got {count}"):
            call(count)
        with raises(ValueError, fn, "got -1"):
            call(-1)


@pytest.mark.gpu
def test_to_host_sees_torch_writes(torch, device):
    """to_host is ordered after work queued on the default stream by another library."""
    a = S.DeviceArray((256, 1024), device)
    t = torch.from_dlpack(a)
    t.fill_(3.0)
    t.mul_(2.0)
    assert (a.to_host() == 6.0).all()
    a.copy_from_host(np.full((256, 1024), 1.5, np.float32))
    assert t.sum().item() == 1.5 * 256 * 1024


@pytest.mark.gpu
def test_device_array_shares_memory_with_torch(torch, device):
    a = S.DeviceArray((4, 6), device)
    t = torch.from_dlpack(a)
    assert t.shape == (4, 6) and t.dtype == torch.float32 and t.data_ptr() == a.ptr
    t.fill_(float("nan"))
    assert S.count_nonfinite_cuda(a) == 24
    del a
    gc.collect()
    filler = torch.ones(1 << 20, device="cuda")  # would reuse the memory had it been freed
    t.fill_(2.0)
    torch.cuda.synchronize()
    assert t.sum().item() == 48.0 and filler.sum().item() == 1 << 20


@pytest.mark.gpu
def test_count_nonfinite(torch, device):
    x = torch.zeros((1000, 37), device="cuda")
    assert S.count_nonfinite_cuda(x) == 0
    x[3, 4] = float("nan")
    x[999, 36] = float("inf")
    x[500] = float("-inf")
    assert S.count_nonfinite_cuda(x) == 2 + 37
    assert S.count_nonfinite_cuda(torch.zeros(0, device="cuda")) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("n_views", [7, 200])  # 200: more than one launch's worth of views
def test_cuda_kernels_match_cpu(torch, device, n_views):
    """CUDA results agree with the CPU's (float geometry on the GPU: ~1e-4 px)."""
    rng = np.random.default_rng(30)
    H, W, C, h, w = 48, 96, 3, 20, 24
    erp = rng.random((H, W, C), dtype=np.float32)
    views = random_views(rng, n_views)
    erp_t = torch.from_numpy(erp).cuda()
    for interp in (0, 1, 2):
        cpu = np.zeros((n_views, C, h, w), np.float32)
        S.sample_views_cpu(erp, views, cpu, interp)
        gpu = torch.full((n_views, C, h, w), float("nan"), device="cuda")
        S.sample_views_cuda(erp_t, views, gpu, interp)
        diff = np.abs(gpu.cpu().numpy() - cpu)
        # Nearest may pick the neighbour where a coordinate sits within float error of x.5.
        assert (diff > 1e-3).mean() < (5e-3 if interp == 0 else 1e-9), interp
    patches = rng.random((n_views, C, h, w), dtype=np.float32)
    patches_t = torch.from_numpy(patches).cuda()
    for blend in (0, 1):
        acc = np.zeros((H, W, C + 1), np.float32)
        S.merge_accumulate_cpu(patches, views, acc, blend, 0.3)
        acc_t = torch.zeros((H, W, C + 1), device="cuda")
        S.merge_accumulate_cuda(patches_t, views, acc_t, blend, 0.3)
        acc_gpu = acc_t.cpu().numpy()
        # Uniform weights jump at a patch edge, where float geometry may decide either way.
        bad = np.abs(acc_gpu - acc).max(-1) > 1e-3 * n_views
        assert bad.mean() < (1e-3 if blend == 0 else 1e-9), blend
        out = np.zeros((H, W, C), np.float32)
        S.merge_finalize_cpu(acc, out)
        out_t = torch.empty((H, W, C), device="cuda")
        S.merge_finalize_cuda(torch.from_numpy(acc).cuda(), out_t)
        np.testing.assert_allclose(out_t.cpu().numpy(), out, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
def test_cuda_bad_arguments(torch, device):
    erp = torch.zeros((8, 16, 3), device="cuda")
    views = np.array([[0.0, 0.0, 0.5, 0.5]])
    with raises(ValueError, "sample_views_cuda", "with N = 1 (views)"):
        S.sample_views_cuda(erp, views, torch.zeros((2, 3, 4, 4), device="cuda"), 1)
    with raises(ValueError, "sample_views_cuda", "interp must be"):
        S.sample_views_cuda(erp, views, torch.zeros((1, 3, 4, 4), device="cuda"), 5)
    with raises(TypeError, "sample_views_cuda", "erp must have dtype float32"):
        S.sample_views_cuda(erp.double(), views, torch.zeros((1, 3, 4, 4), device="cuda"), 1)
    with raises(ValueError, "sample_views_cuda", "erp must be C-contiguous"):
        S.sample_views_cuda(torch.zeros((8, 32, 3), device="cuda")[:, ::2], views,
                            torch.zeros((1, 3, 4, 4), device="cuda"), 1)
    with raises(ValueError, "merge_accumulate_cuda", "acc must have shape (H, W, C + 1)"):
        S.merge_accumulate_cuda(torch.zeros((1, 3, 4, 4), device="cuda"), views,
                                torch.zeros((8, 16, 3), device="cuda"), 1, 0.25)
    acc = torch.zeros((8, 16, 4), device="cuda")
    with raises(ValueError, "merge_finalize_cuda", "acc and out must not share memory"):
        S.merge_finalize_cuda(acc, acc.view(-1)[: 8 * 16 * 3].view(8, 16, 3))
    with raises(ValueError, "count_nonfinite_cuda", "x must be C-contiguous (call .contiguous())"):
        S.count_nonfinite_cuda(acc[:, ::2])
