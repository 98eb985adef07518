"""Run a model bundle's one-step graphs with ONNX Runtime.

Providers are an ordered list, as `onnxruntime.InferenceSession` takes them: names, or
`(name, options)` pairs. Short aliases work too ("tensorrt", "cuda", "cpu"). The default list is
TensorRT → CUDA → CPU, keeping those this onnxruntime build offers, each with tuned options:

- TensorRT: fp16 kernels, int8 when the bundle is quantized, engine and timing caches in the user
  cache folder (`$OSR_CACHE_DIR`, else `$XDG_CACHE_HOME/osr-sdk`, else `~/.cache/osr-sdk`), so
  engines are built once per device and bundle.
- CUDA: `cudnn_conv_algo_search`, `prefer_nhwc`; graphs are chained with IO binding so that
  latents stay on the device; `cuda_graph=True` captures a CUDA graph for a fixed batch.
- CPU: the default options, with `threads` intra-op threads.

A provider named explicitly that this build lacks is an error (`ProviderUnavailableError`), never a
silent fallback; `Session.providers_in_use` says which provider really runs each graph.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort

from osr_runtime.bundle import Bundle, load_bundle
from osr_runtime.errors import OsrError, ProviderUnavailableError
from osr_runtime.nvml import Nvml

__all__ = ["Session", "ProviderSpec", "default_providers", "normalize_providers", "cache_dir"]

ProviderSpec = Union[str, tuple[str, Mapping[str, Any]]]

ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
#: (role, inputs, output) of the split graphs, in the order they run.
GRAPH_IO = (("encoder", ("lq",), "z"), ("unet", ("z",), "x0"), ("decoder", ("x0", "lq"), "sr"))
#: Conservative device memory per output pixel of one tile (activations of an SD2.1-size VAE
#: decoder in fp16 dominate); used to pick a batch size from free GPU memory.
GPU_BYTES_PER_PIXEL = {"fp16": 6_000, "fp32": 12_000}
MAX_AUTO_BATCH = 8


def cache_dir() -> Path:
    """The user cache folder of osr-sdk (TensorRT engines and timing caches)."""
    root = os.environ.get("OSR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "osr-sdk"
    )
    return Path(root)


def default_providers(bundle: Bundle, device_id: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """TensorRT → CUDA → CPU with tuned options, limited to the providers this build offers."""
    available = set(ort.get_available_providers())
    manifest = bundle.manifest
    quantized = manifest.precision not in ("fp32", "fp16")
    fingerprint = hashlib.sha256("".join(f.sha256 for f in manifest.files).encode()).hexdigest()[:16]
    engines = cache_dir() / "tensorrt" / f"{manifest.name}-{fingerprint}"
    chosen: list[tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available:
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": device_id,
            "trt_fp16_enable": True,
            "trt_int8_enable": quantized,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engines),
        }))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {
            "device_id": device_id,
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "prefer_nhwc": "0",  # measured slower for the SD UNet (DESIGN.md §6)
        }))
    chosen.append(("CPUExecutionProvider", {}))
    return chosen


def normalize_providers(
    providers: Sequence[ProviderSpec] | None,
    provider_options: Sequence[Mapping[str, Any]] | None = None,
    *,
    bundle: Bundle | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Resolve aliases, pair names with options, and check availability (no silent fallback)."""
    if providers is None:
        if provider_options is not None:
            raise OsrError("provider_options needs an explicit providers list")
        if bundle is None:
            raise OsrError("default providers need the bundle")
        return default_providers(bundle)
    if isinstance(providers, str):
        providers = [providers]
    if provider_options is not None and len(provider_options) != len(providers):
        raise OsrError(f"provider_options has {len(provider_options)} entries for {len(providers)} providers")
    available = ort.get_available_providers()
    resolved: list[tuple[str, dict[str, Any]]] = []
    for i, spec in enumerate(providers):
        name, options = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        name = ALIASES.get(name.lower(), name)
        if provider_options is not None:
            options.update(provider_options[i])
        if name not in available:
            hint = " (install onnxruntime-gpu: pip install 'osr-sdk[gpu]')" if name in GPU_PROVIDERS else ""
            raise ProviderUnavailableError(
                f"execution provider {name} is not available in this onnxruntime build{hint}; "
                f"available: {', '.join(available)}"
            )
        resolved.append((name, options))
    if not resolved:
        raise OsrError("providers must name at least one execution provider")
    return resolved


def _option_value(value: Any) -> str:
    """Provider options travel as strings; booleans as "1"/"0"."""
    return str(int(value)) if isinstance(value, bool) else str(value)


def _free_gpu_bytes(device_id: int) -> int | None:
    """Free memory of a GPU through NVML (part of the NVIDIA driver), or None when unknown."""
    with Nvml(device_id) as nvml:
        memory = nvml.memory()
    return None if memory is None else memory["free"]


class Session:
    """ONNX Runtime sessions for the encoder, UNet and decoder of a bundle, run as one step.

    Args:
        bundle: a `Bundle` or the path of a bundle folder (validated by `load_bundle`).
        providers: ordered execution providers (names or `(name, options)`); None for the default.
        provider_options: options per provider, aligned with `providers` (ONNX Runtime style).
        batch_size: tiles per graph call; None picks one (1 on the CPU, from free memory on a GPU).
        threads: intra-op threads of the CPU provider (None: ONNX Runtime's default).
        cuda_graph: capture CUDA graphs (CUDA provider, fixed batch and tile size).
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike[str],
        providers: Sequence[ProviderSpec] | None = None,
        provider_options: Sequence[Mapping[str, Any]] | None = None,
        *,
        batch_size: int | None = None,
        threads: int | None = None,
        cuda_graph: bool = False,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise OsrError(f"batch_size must be ≥ 1, got {batch_size}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.providers = normalize_providers(providers, provider_options, bundle=self.bundle)
        if cuda_graph:
            for name, options in self.providers:
                if name == "CUDAExecutionProvider":
                    options["enable_cuda_graph"] = "1"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        names = [name for name, _ in self.providers]
        opts = [{k: _option_value(v) for k, v in o.items()} for _, o in self.providers]
        self._sessions: dict[str, ort.InferenceSession] = {}
        for role, _, _ in GRAPH_IO:
            try:
                self._sessions[role] = ort.InferenceSession(
                    str(self.bundle.graph_path(role)), options, providers=names, provider_options=opts
                )
            except Exception as exc:  # onnxruntime raises its own, untyped, errors
                raise ProviderUnavailableError(f"could not create the {role} session with {names}: {exc}") from exc
        #: role -> the provider that really runs it (the first one ONNX Runtime registered).
        self.providers_in_use: dict[str, str] = {r: s.get_providers()[0] for r, s in self._sessions.items()}
        self.device = "cuda" if any(p in GPU_PROVIDERS for p in self.providers_in_use.values()) else "cpu"
        self.device_id = int(dict(self.providers).get(self.providers_in_use["unet"], {}).get("device_id", 0))
        self._batch_size = batch_size

    @property
    def provider(self) -> str:
        """The provider that runs the UNet (the bulk of the work)."""
        return self.providers_in_use["unet"]

    def batch_size(self, tile_hw: tuple[int, int]) -> int:
        """Tiles per call: the given batch size, else 1 on the CPU or what free GPU memory allows."""
        if self._batch_size is not None:
            return self._batch_size
        if self.device == "cpu":
            return 1
        free = _free_gpu_bytes(self.device_id)
        if free is None:
            return 1
        per_tile = GPU_BYTES_PER_PIXEL.get(self.bundle.manifest.precision, 12_000) * tile_hw[0] * tile_hw[1]
        return int(max(1, min(MAX_AUTO_BATCH, 0.6 * free // per_tile)))

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise OsrError unless shape is (N, 3, H, W) with H, W multiples of the bundle's size multiple."""
        multiple = self.bundle.manifest.size_multiple
        if len(shape) != 4 or shape[1] != 3 or 0 in shape:
            raise OsrError(f"lq must have shape (N, 3, H, W), got {tuple(shape)}")
        if shape[2] % multiple or shape[3] % multiple:
            raise OsrError(f"tile height and width must be multiples of {multiple}, got {shape[2]}×{shape[3]}")

    def run(self, lq: np.ndarray, seconds: dict[str, float] | None = None) -> np.ndarray:
        """Super-resolve (N, 3, H, W) float32 tiles in [0, 1] (already at the output size) → sr, same shape.

        With `seconds`, each graph's time is added to it by role ("encoder", "unet", "decoder"):
        the wall clock of its ONNX Runtime runs, which are synchronous. On a CUDA provider the
        graphs are chained with IO binding, so that is device time plus launch overhead, without
        the host↔device copies.
        """
        lq = self._checked(lq)
        step = self.batch_size(lq.shape[2:])
        parts = [self._run_batch(lq[i : i + step], seconds) for i in range(0, len(lq), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _checked(self, lq: np.ndarray) -> np.ndarray:
        lq = np.asarray(lq)
        self.check_input(lq.shape)
        if lq.dtype != np.float32:
            raise OsrError(f"lq must be float32, got {lq.dtype}")
        if not np.isfinite(lq).all():
            raise OsrError("lq contains NaN or Inf values")
        return np.ascontiguousarray(lq)

    def _run_batch(self, lq: np.ndarray, seconds: dict[str, float] | None = None) -> np.ndarray:
        if self.device == "cpu":
            values = {"lq": lq}
            for role, inputs, target in GRAPH_IO:
                start = time.perf_counter()
                values[target] = self._sessions[role].run([target], {name: values[name] for name in inputs})[0]
                if seconds is not None:
                    seconds[role] = seconds.get(role, 0.0) + time.perf_counter() - start
            return values["sr"]
        lq_dev = ort.OrtValue.ortvalue_from_numpy(lq, "cuda", self.device_id)
        return self._chain_on_device(lambda b: b.bind_ortvalue_input("lq", lq_dev), seconds=seconds).numpy()

    def run_device(
        self, lq_ptr: int, shape: tuple[int, int, int, int], out_ptr: int, seconds: dict[str, float] | None = None
    ) -> None:
        """Run on CUDA buffers (float32, C-contiguous, on this session's device): lq → out.

        For callers that keep tiles on the GPU (the SDK's 360° path); pointers are device addresses.
        With `seconds`, each graph's time is added to it by role, as `run` does.
        """
        if self.device != "cuda":
            raise OsrError("run_device needs a session on a CUDA provider")
        self.check_input(shape)
        dims = [int(d) for d in shape]

        def bind_lq(binding: ort.IOBinding) -> None:
            binding.bind_input("lq", "cuda", self.device_id, np.float32, dims, lq_ptr)

        self._chain_on_device(bind_lq, out=(dims, out_ptr), seconds=seconds)

    def _chain_on_device(
        self, bind_lq: Callable[[ort.IOBinding], None], out: tuple[list[int], int] | None = None,
        seconds: dict[str, float] | None = None,
    ) -> ort.OrtValue:
        """encoder → unet → decoder with every intermediate on the device (IO binding).

        With `seconds`, each graph's run is timed (synchronised on its outputs) and added to it by role.
        """
        did = self.device_id
        value = None
        for role, inputs, target in GRAPH_IO:
            session = self._sessions[role]
            binding = session.io_binding()
            if "lq" in inputs:
                bind_lq(binding)
            if value is not None:  # the previous graph's output, still on the device
                binding.bind_ortvalue_input(inputs[0], value)
            if target == "sr" and out is not None:
                binding.bind_output(target, "cuda", did, np.float32, out[0], out[1])
            else:
                binding.bind_output(target, "cuda", did)
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            if seconds is not None:
                binding.synchronize_outputs()
                seconds[role] = seconds.get(role, 0.0) + time.perf_counter() - start
            value = binding.get_outputs()[0]
        return value

    def __repr__(self) -> str:
        used = ", ".join(f"{r}: {p}" for r, p in self.providers_in_use.items())
        return f"Session({self.bundle.manifest.name!r}, {used})"
