"""`Upscaler` and `upscale()`: the public entry points of osr-sdk.

A 2:1 equirectangular (ERP) image goes through tangent-plane patches of the sphere (no stretched
poles, no seam at ±180°); any other image through overlapping planar tiles. Either way each
tile is the bicubic ×scale upsample of the LQ, run through the bundle's one-step model, and
blended back with feathered weights, streaming: memory does not grow with the number of tiles.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import PIL.Image

from osr_runtime import Bundle, Session, load_bundle
from osr_runtime.session import ProviderSpec
from osr_sdk import imageio, sphere
from osr_sdk.errors import BundleError, InputError, ModelMismatchError, OutputExistsError
from osr_sdk.imageio import Image
from osr_sdk.tiling import PlanarMerger, bicubic_crop, tile_starts

__all__ = ["Upscaler", "upscale", "Projection", "UpscaleReport", "STAGES", "default_model_path"]

Projection = Literal["auto", "erp", "planar"]
ImageLike = Any  # np.ndarray | PIL.Image.Image | str | os.PathLike[str]

#: Planar tiles overlap by this fraction of the tile size (feathered over the overlap).
PLANAR_OVERLAP = 0.125


def default_model_path() -> Path:
    """The bundle shipped inside the package (the embedded default model)."""
    return Path(__file__).resolve().parent / "models" / "default"


#: The stages `upscale_with_report(profile=True)` times ("erp_to_tangent" on the 360° path,
#: "planar_tiles" (bicubic tile inputs) on the planar one, "transfer" host↔device copies on a GPU).
STAGES = ("read", "erp_to_tangent", "planar_tiles", "encoder", "unet", "decoder", "merge", "transfer", "write")


class _Stopwatch:
    """Adds the seconds of `with watch(stage):` blocks to `seconds`; does nothing when disabled.

    With `device` set, the block ends by synchronising that CUDA device, so that the asynchronous
    kernels it launched are counted in it (only while profiling: no extra syncs otherwise).
    """

    def __init__(self, enabled: bool) -> None:
        self.seconds: dict[str, float] | None = dict.fromkeys(STAGES, 0.0) if enabled else None
        self.device: int | None = None

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.seconds is not None:
            if self.device is not None:
                from osr_sdk import _spherical

                _spherical.synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - start


@dataclass(frozen=True)
class UpscaleReport:
    """What one upscale did: sizes, projection, tiles, provider, time, and (when profiled) the
    seconds of each of `STAGES`."""

    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    projection: Literal["erp", "planar"]
    tiles: int
    provider: str
    seconds: float
    stage_seconds: Mapping[str, float] | None = None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        (h, w), (oh, ow) = self.input_hw, self.output_hw
        return (f"{w}×{h} → {ow}×{oh} ({self.projection}, {self.tiles} tiles) in {self.seconds:.2f} s "
                f"on {self.provider}")


class Upscaler:
    """A loaded model, ready for repeated upscales (apps, services, firmware-side daemons).

    Args:
        model: bundle folder or `Bundle`; None for the embedded default model.
        providers: ONNX Runtime execution providers, in order (see `osr_runtime.Session`).
        provider_options: options per provider, aligned with `providers`.
        batch_size: tiles per model call; None picks one from the device.
        threads: CPU intra-op threads (None: ONNX Runtime's default).

    One `Upscaler` may serve several threads: per-call state lives in the call, not on `self`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Bundle | None = None,
        *,
        providers: Sequence[ProviderSpec] | None = None,
        provider_options: Sequence[Mapping[str, Any]] | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        if model is None and not default_model_path().is_dir():
            raise BundleError(
                "this osr-sdk build ships no embedded default model yet: pass a bundle made by "
                "`osr-export bundle` (model=... / --model)"
            )
        bundle = model if isinstance(model, Bundle) else load_bundle(default_model_path() if model is None else model)
        self.session = Session(bundle, providers, provider_options, batch_size=batch_size, threads=threads)
        self.scale = bundle.manifest.scale
        self.patch_size = bundle.manifest.patch_size
        self._multiple = bundle.manifest.size_multiple

    @property
    def bundle(self) -> Bundle:
        return self.session.bundle

    def upscale(
        self,
        image: ImageLike,
        *,
        projection: Projection = "auto",
        progress: bool = False,
        output: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        format: str | None = None,
        quality: int = 95,
    ) -> Any:
        """Upscale one image ×`self.scale`.

        `image`: a numpy array ((H, W) or (H, W, C), C in 1..4, uint8, uint16 or float in [0, 1]), a
        PIL image, or a file path. Returns the same kind (an array for a path) unless `output` is
        given: then the result is written there atomically (metadata kept, GPano sizes updated)
        and the written path is returned. `projection="auto"` treats a 2:1 image as 360° ERP.
        """
        result, _ = self.upscale_with_report(image, projection=projection, progress=progress, output=output,
                                             overwrite=overwrite, format=format, quality=quality)
        return result

    def upscale_with_report(
        self,
        image: ImageLike,
        *,
        projection: Projection = "auto",
        progress: bool = False,
        output: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        format: str | None = None,
        quality: int = 95,
        profile: bool = False,
    ) -> tuple[Any, UpscaleReport]:
        """`upscale`, also returning an `UpscaleReport` (with per-stage seconds when `profile`)."""
        start = time.perf_counter()
        watch = _Stopwatch(profile)
        # 1. Check the arguments and read the image.
        if projection not in get_args(Projection):
            raise InputError(f"projection must be one of {', '.join(get_args(Projection))}; got {projection!r}")
        if output is not None and Path(output).exists() and not overwrite:
            raise OutputExistsError(f"{output} exists; pass overwrite=True to replace it")
        with watch("read"):
            source = _to_image(image)
        height, width = source.height, source.width
        is_erp = abs(width - 2 * height) <= 1
        if projection == "auto":
            projection = "erp" if is_erp else "planar"
        out_hw = (height * self.scale, width * self.scale)
        # 2. Plan the tiles, 3. sample, run and merge them batch by batch.
        if projection == "erp":
            pixels, tiles = self._upscale_erp(source.pixels, out_hw, progress, watch)
        else:
            pixels, tiles = self._upscale_planar(source.pixels, out_hw, progress, watch)
        # 4. Alpha (bicubic), the output image with scaled 360° metadata.
        alpha = None if source.alpha is None else _resize_plane(source.alpha, out_hw)
        result = dataclasses.replace(source, pixels=pixels, alpha=alpha,
                                     metadata=source.metadata.scaled(self.scale))
        # 5. Write, or hand back the same kind of image.
        if output is not None:
            with watch("write"):
                result = imageio.write_image(result, output, overwrite=overwrite, format=format, quality=quality)
        else:
            result = _like(image, result)
        report = UpscaleReport((height, width), out_hw, projection, tiles, self.session.provider,
                               time.perf_counter() - start, watch.seconds)
        return result, report

    def _batches(self, count: int, tile_hw: tuple[int, int], progress: bool, what: str) -> Iterator[slice]:
        step = self.session.batch_size(tile_hw)
        starts = range(0, count, step)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=what, unit="batch", total=len(starts))
        for first in starts:
            yield slice(first, min(first + step, count))

    def _upscale_erp(
        self, lq: np.ndarray, out_hw: tuple[int, int], progress: bool, watch: _Stopwatch
    ) -> tuple[np.ndarray, int]:
        try:
            layout = sphere.tangent_layout(*out_hw, patch_size=self.patch_size)
        except InputError as exc:
            raise ModelMismatchError(
                f"a {lq.shape[1]}×{lq.shape[0]} ERP does not fit this model (patch size {self.patch_size}, "
                f"×{self.scale}): {exc}; use a larger ERP or projection='planar'"
            ) from exc
        if self.session.device == "cuda" and sphere.cuda_available():
            return self._upscale_erp_on_gpu(lq, layout, progress, watch), len(layout)
        merger = sphere.ErpMerger(layout, channels=3)
        size = self.patch_size
        for batch in self._batches(len(layout), (size, size), progress, "360° patches"):
            with watch("erp_to_tangent"):
                patches = sphere.erp_to_tangent(lq, layout, indices=batch)
            sr = self.session.run(patches, seconds=watch.seconds)
            with watch("merge"):
                merger.add(sr, batch)
        with watch("merge"):
            return _clip(merger.result()), len(layout)

    def _upscale_erp_on_gpu(
        self, lq: np.ndarray, layout: sphere.TangentLayout, progress: bool, watch: _Stopwatch
    ) -> np.ndarray:
        """The 360° path with every patch kept on the GPU: CUDA sampling → IO-bound ONNX Runtime → CUDA merge."""
        from osr_sdk import _spherical

        device = watch.device = self.session.device_id
        with watch("transfer"):
            lq_gpu = _spherical.DeviceArray(lq.shape, device)
            lq_gpu.copy_from_host(np.ascontiguousarray(lq))
        merger = sphere.ErpMerger(layout, channels=3)
        size = self.patch_size
        buffers: dict[int, tuple[Any, Any]] = {}  # batch length -> (patches, sr) device buffers
        for batch in self._batches(len(layout), (size, size), progress, "360° patches"):
            shape = (batch.stop - batch.start, 3, size, size)
            if shape[0] not in buffers:
                buffers[shape[0]] = (_spherical.DeviceArray(shape, device), _spherical.DeviceArray(shape, device))
            patches, sr = buffers[shape[0]]
            with watch("erp_to_tangent"):
                sphere.erp_to_tangent(lq_gpu, layout, indices=batch, out=patches)
            _spherical.synchronize(device)  # ONNX Runtime reads on its own stream
            self.session.run_device(patches.ptr, shape, sr.ptr, seconds=watch.seconds)
            with watch("merge"):
                merger.add(sr, batch)
        with watch("merge"):
            merged = merger.result()
        with watch("transfer"):
            pixels = merged.to_host()
        with watch("merge"):
            return _clip(pixels)

    def _upscale_planar(
        self, lq: np.ndarray, out_hw: tuple[int, int], progress: bool, watch: _Stopwatch
    ) -> tuple[np.ndarray, int]:
        height, width = out_hw
        m = self._multiple
        tile_h = min(self.patch_size, -(-height // m) * m)
        tile_w = min(self.patch_size, -(-width // m) * m)
        overlap = int(PLANAR_OVERLAP * min(tile_h, tile_w))
        origins = [(y, x) for y in tile_starts(height, tile_h, overlap) for x in tile_starts(width, tile_w, overlap)]
        merger = PlanarMerger(height, width, 3, overlap)
        for batch in self._batches(len(origins), (tile_h, tile_w), progress, "tiles"):
            with watch("planar_tiles"):
                tiles = np.stack([bicubic_crop(lq, y, x, tile_h, tile_w, self.scale) for y, x in origins[batch]])
            sr = self.session.run(tiles, seconds=watch.seconds)
            with watch("merge"):
                for (y, x), tile in zip(origins[batch], sr):
                    merger.add(tile[:, : height - y, : width - x], y, x)
        with watch("merge"):
            return _clip(merger.result()), len(origins)


def _clip(pixels: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (large outputs: no extra copy)."""
    return np.clip(pixels, 0, 1, out=pixels)


def _to_image(image: ImageLike) -> Image:
    if isinstance(image, np.ndarray):
        return imageio.from_array(image)
    if isinstance(image, PIL.Image.Image):
        return imageio.from_pil(image)
    if isinstance(image, (str, os.PathLike)):
        return imageio.read_image(image)
    raise InputError(f"image must be a numpy array, a PIL image or a path, got {type(image).__name__}")


def _like(original: ImageLike, result: Image) -> Any:
    """The result as the caller's kind: PIL for PIL, else an array shaped and typed like the input."""
    if isinstance(original, PIL.Image.Image):
        return imageio.to_pil(result)
    if isinstance(original, np.ndarray):
        dtype = original.dtype if original.dtype in (np.uint8, np.uint16) else np.float32
        arr = imageio.to_array(result, dtype)
        return arr[..., None] if original.ndim == 3 and arr.ndim == 2 else arr
    return imageio.to_array(result)


def _resize_plane(plane: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 (H, W) plane (alpha) to out_hw, clipped to [0, 1]."""
    resized = PIL.Image.fromarray(plane, mode="F").resize((out_hw[1], out_hw[0]), PIL.Image.BICUBIC)
    return np.clip(np.asarray(resized, np.float32), 0, 1)


def _freeze(providers: Sequence[ProviderSpec] | None) -> tuple | None:
    """A hashable form of a provider list (for the cache key)."""
    if providers is None:
        return None
    specs = [providers] if isinstance(providers, str) else providers
    return tuple(p if isinstance(p, str) else (p[0], tuple(sorted(dict(p[1]).items()))) for p in specs)


@functools.lru_cache(maxsize=2)
def _cached_upscaler(model: str | None, providers: tuple | None, batch_size: int | None) -> Upscaler:
    specs = None if providers is None else [p if isinstance(p, str) else (p[0], dict(p[1])) for p in providers]
    return Upscaler(model, providers=specs, batch_size=batch_size)


def upscale(
    image: ImageLike,
    *,
    model: str | os.PathLike[str] | None = None,
    scale: int | None = None,
    projection: Projection = "auto",
    providers: Sequence[ProviderSpec] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Any:
    """Upscale one image with a one-step diffusion SR model (the embedded default when `model` is None).

    See `Upscaler.upscale` for the image kinds and `output`. `scale`, when given, must equal the
    model's scale (models are trained for one factor). The loaded model is cached between calls
    with the same model, providers and batch size; hold an `Upscaler` for finer control.
    """
    key = None if model is None else str(Path(model).resolve())
    upscaler = _cached_upscaler(key, _freeze(providers), batch_size)
    if scale is not None and scale != upscaler.scale:
        raise ModelMismatchError(f"this model upscales ×{upscaler.scale}, not ×{scale}")
    return upscaler.upscale(image, projection=projection, progress=progress, output=output, overwrite=overwrite)
