"""ONNX export of the torch graphs, fp16 conversion, ORT transformer optimizer, external data.

The graphs are exported with the TorchScript exporter (``torch.onnx.export(dynamo=False)``) at
opset 17. Graphs whose weights exceed protobuf's 2 GB limit are written with one external data
file beside them (``<graph>.onnx.data``). fp16 graphs keep float32 inputs/outputs; their attention
scores and softmax and every Resize stay in fp32 (DESIGN.md §3, §6).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from osr_export.errors import ExportError

__all__ = [
    "DEFAULT_OPSET",
    "LARGE_MODEL_BYTES",
    "attention_score_nodes",
    "convert_to_fp16",
    "export_onnx",
    "optimize_onnx",
    "save_onnx",
]

DEFAULT_OPSET = 17
#: graphs with more initializer bytes than this get external data (protobuf's limit is 2 GiB)
LARGE_MODEL_BYTES = 2_000_000_000
#: op types kept in fp32 in fp16 graphs: softmax (attention overflow) and Resize (its scales input)
FP16_OP_BLOCK_LIST: tuple[str, ...] = ("Softmax", "Resize", "Upsample")


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *,
                input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: Mapping[str, Mapping[int, str]], opset: int = DEFAULT_OPSET) -> tuple[str, ...]:
    """Trace ``module`` on ``args`` and write ``path``; returns its external data file names."""
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; the bundle needs opset >= 17")
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(raw), dynamo=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                do_constant_folding=True,
            )
        model = onnx.load(str(raw))
    _restore_unused_inputs(model, input_names, args, dynamic_axes)
    return save_onnx(model, path)


def _restore_unused_inputs(model: onnx.ModelProto, input_names: Sequence[str], args: tuple[torch.Tensor, ...],
                           dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """The tracer drops inputs the graph does not read (``lq`` of a decoder without colour fix);
    put them back, in order, so that every graph of a role has the same interface."""
    wanted = []
    for name, arg in zip(input_names, args):
        dims = [dynamic_axes.get(name, {}).get(i, size) for i, size in enumerate(arg.shape)]
        wanted.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    _keep_inputs(model, wanted)


def _keep_inputs(model: onnx.ModelProto, wanted: Sequence[onnx.ValueInfoProto]) -> None:
    """Make the graph inputs exactly ``wanted`` (in order), re-adding any a pass removed."""
    present = {i.name: i for i in model.graph.input}
    if [i.name for i in model.graph.input] == [w.name for w in wanted]:
        return
    ordered = [present.get(w.name, w) for w in wanted]
    del model.graph.input[:]
    model.graph.input.extend(ordered)


def _initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            n = 1
            for d in t.dims:
                n *= d
            total += n * 4
    return total


def save_onnx(model: onnx.ModelProto, path: Path) -> tuple[str, ...]:
    """Write ``model`` to ``path`` (external data past 2 GB) and run the ONNX checker on it."""
    path = Path(path)
    data_name = path.name + ".data"
    (path.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    if _initializer_bytes(model) > LARGE_MODEL_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024, convert_attribute=True)
        external: tuple[str, ...] = (data_name,)
    else:
        onnx.save_model(model, str(path))
        external = ()
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX checker refused {path.name}: {exc}") from exc
    return external


def attention_score_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes that compute attention scores (those feeding a Softmax)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "MatMul":
            if not src.name:
                raise ExportError("an attention MatMul node has no name; cannot keep it in fp32")
            names.append(src.name)
    return names


def convert_to_fp16(src: Path, dst: Path) -> tuple[str, ...]:
    """fp32 graph ``src`` → fp16 graph ``dst`` with fp32 inputs/outputs, attention scores,
    softmax and Resize kept in fp32. Returns ``dst``'s external data file names."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    skeleton = onnx.load(str(src), load_external_data=False)
    keep_fp32 = attention_score_nodes(skeleton)
    del skeleton
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model16 = convert_float_to_float16(
            str(src), keep_io_types=True,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_OP_BLOCK_LIST)),
            node_block_list=keep_fp32,
        )
    OnnxModel(model16).topological_sort()  # the converter appends its input casts at the end
    _keep_inputs(model16, list(onnx.load(str(src), load_external_data=False).graph.input))
    return save_onnx(model16, dst)


def optimize_onnx(src: Path, dst: Path, model_type: str) -> dict[str, Any]:
    """Run ONNX Runtime's transformer optimizer (``model_type`` "unet" or "vae") on ``src``.

    Attention fusion is off (it fails on this exporter's attention pattern, DESIGN.md §6), and so
    are the fusions into CUDA-only contrib ops (GroupNorm, NhwcConv, BiasSplitGelu, BiasAdd), so
    the optimized graph still runs on the CPU EP. The result stays fp32 (`convert_to_fp16` may
    follow). Returns the fused-op counts.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if model_type not in ("unet", "vae"):
        raise ExportError(f"optimizer model_type must be 'unet' or 'vae', got {model_type!r}")
    options = FusionOptions(model_type)
    options.enable_attention = False
    for name in ("enable_group_norm", "enable_skip_group_norm", "enable_nhwc_conv",
                 "enable_bias_splitgelu", "enable_bias_add", "enable_packed_kv", "enable_packed_qkv"):
        if hasattr(options, name):
            setattr(options, name, False)
    # quiet: the optimizer has its own progress bar, prints and warnings
    quiet = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0,
                                       opt_level=0, optimization_options=options, use_gpu=False)
    finally:
        logging.disable(logging.NOTSET)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    model = optimized.model
    _keep_inputs(model, list(onnx.load(str(src), load_external_data=False).graph.input))
    domains = {node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx")}
    imported = {op.domain for op in model.opset_import}
    for domain in sorted(domains - imported):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    save_onnx(model, dst)
    return stats

