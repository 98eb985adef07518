"""The whole export on a tiny SD2.1-structured model: merge, folds, parity, bundle, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from osr_export import cli
from osr_export.errors import FoldCheckError, ValidationError
from osr_export.loading import (
    Sources,
    encode_prompt,
    inject_lora,
    load_lora,
    load_schedule,
    load_unet,
    load_vae,
    lora_adapter_dir,
)
from osr_export.pipeline import STAGES, ExportOptions, build_onestep, export_bundle, psnr
from osr_export.synthetic import write_prompt_embedding
from osr_runtime import BundleError, load_bundle
from osr_runtime.bundle import sha256_file, write_manifest


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_chain(bundle: Any, lq: np.ndarray) -> np.ndarray:
    z = _session(bundle.graph_path("encoder")).run(None, {"lq": lq})[0]
    x0 = _session(bundle.graph_path("unet")).run(None, {"z": z})[0]
    return _session(bundle.graph_path("decoder")).run(None, {"x0": x0, "lq": lq})[0]


def _torch_onestep(base: Path, lora: Path, color_fix: str = "adain", prompt: Any = None, timestep: int = 273) -> Any:
    """The reference torch module, built with the public pieces."""
    unet, vae = load_unet(base, Sources(base)), load_vae(base, Sources(base))
    with torch.no_grad():
        if prompt is None:
            prompt = encode_prompt(base, "", Sources(base))
        for part, model in (("unet", unet), ("vae_encoder", vae.encoder)):
            adapter = load_lora(lora_adapter_dir(lora, part), model, Sources(lora))
            merged = inject_lora(model, adapter).merge_and_unload()
            if part == "vae_encoder":
                vae.encoder = merged
            else:
                unet = merged
        inputs = {"lq": [torch.rand(1, 3, 64, 64)], "z": [torch.randn(1, 4, 8, 8)]}
        return build_onestep(unet, vae, prompt, timestep, load_schedule(base).alpha_bar(timestep), "epsilon",
                             color_fix, check_inputs=inputs)


def test_fp32_bundle_manifest(export_fp32_bundle: Any, export_tiny_model: tuple[Path, Path]) -> None:
    base, lora = export_tiny_model
    assert export_fp32_bundle.stages == list(STAGES)
    bundle = load_bundle(export_fp32_bundle.bundle.path)
    m = bundle.manifest
    assert (m.format_version, m.layout, m.precision, m.color_fix, m.prediction_type) == \
        (1, "split", "fp32", "adain", "epsilon")
    assert (m.timestep, m.scale, m.patch_size, m.latent_channels, m.latent_downscale, m.size_multiple) == \
        (273, 4, 512, 4, 8, 8)
    assert m.alpha_bar == pytest.approx(0.635742, abs=2e-6)
    assert m.latent_scaling_factor == pytest.approx(0.18215)
    assert m.name == "lora-fp32"
    assert {f.path for f in m.files} == {"encoder.onnx", "unet.onnx", "decoder.onnx"}
    for f in m.files:
        assert f.sha256 == sha256_file(bundle.path / f.path)
    io = {role: ([t.name for t in g.inputs], [t.name for t in g.outputs]) for role, g in m.graphs.items()}
    assert io == {"encoder": (["lq"], ["z"]), "unet": (["z"], ["x0"]), "decoder": (["x0", "lq"], ["sr"])}
    assert m.graphs["encoder"].inputs[0].shape == ("N", 3, "H", "W")
    assert m.graphs["unet"].inputs[0].shape == ("N", 4, "H/8", "W/8")
    assert all(g.opset >= 17 and g.external_data == () for g in m.graphs.values())
    # sources with their hashes
    assert m.sources["base"]["files"]["unet/diffusion_pytorch_model.safetensors"] == \
        sha256_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    assert "text_encoder/model.safetensors" in m.sources["base"]["files"]
    assert m.sources["lora"]["files"]["unet_lora_adapter/adapter_model.safetensors"] == \
        sha256_file(lora / "unet_lora_adapter" / "adapter_model.safetensors")
    assert m.sources["prompt_embedding"] == {"kind": "text_encoder", "prompt": ""}
    versions = m.exporter["versions"]
    assert {"torch", "diffusers", "peft", "onnx", "onnxruntime", "osr_export"} <= set(versions)
    # validation figures
    v = m.validation
    assert set(v["folds"]) == {"lora_merge/unet", "lora_merge/vae_encoder", "timestep_embedding",
                               "cross_attention_kv", "vae_attention"}
    assert all(0 <= e <= 1e-5 for e in v["folds"].values())
    assert set(v["fp32"]["max_rel_err"]) == {"encoder", "unet", "decoder", "chain"}
    assert all(0 <= e <= 1e-4 for e in v["fp32"]["max_rel_err"].values())
    assert v["provider"] == "CPUExecutionProvider" and len(v["inputs"]) >= 3
    assert "fp16" not in v


def test_graphs_have_no_text_or_timestep(export_fp32_bundle: Any) -> None:
    bundle = export_fp32_bundle.bundle
    unet = onnx.load(str(bundle.graph_path("unet")))
    assert [i.name for i in unet.graph.input] == ["z"]
    ops = {n.op_type for n in unet.graph.node}
    assert not ops & {"Sin", "Cos", "Exp"}, "the sinusoidal timestep embedding was not folded"
    assert not [n.name for n in unet.graph.node if "attn2" in n.name and ("to_k" in n.name or "to_v" in n.name)]
    assert not [n.name for n in unet.graph.node if "time_emb_proj" in n.name]
    assert sum(n.op_type == "Softmax" for n in unet.graph.node) == 32  # 16 self- + 16 cross-attentions
    dims = [d.dim_param or d.dim_value for d in unet.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 4, "H/8", "W/8"]


def test_dynamic_batch_and_sizes_match_torch(export_fp32_bundle: Any, export_tiny_model: tuple[Path, Path]) -> None:
    """Sizes never seen at export (batch 3, 56×88: latent 7×11, not multiples of 8)."""
    onestep = _torch_onestep(*export_tiny_model)
    bundle = export_fp32_bundle.bundle
    lq = torch.rand(3, 3, 56, 88, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = onestep(lq).numpy()
    out = _run_chain(bundle, lq.numpy())
    assert out.shape == (3, 3, 56, 88)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4


def test_tampered_exported_bundle(export_fp32_bundle: Any, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(export_fp32_bundle.bundle.path, tmp_path / "b"))
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 of bundle file decoder.onnx"):
        load_bundle(copy)


def test_path_traversing_external_data_in_exported_bundle(export_fp32_bundle: Any, tmp_path: Path) -> None:
    """Re-save the exported encoder with external data, then point it out of the folder."""
    copy = Path(shutil.copytree(export_fp32_bundle.bundle.path, tmp_path / "b"))
    model = onnx.load(str(copy / "encoder.onnx"))
    onnx.save_model(model, str(copy / "encoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="encoder.onnx.data", size_threshold=0)
    from dataclasses import replace

    m = export_fp32_bundle.manifest
    graphs = dict(m.graphs)
    graphs["encoder"] = replace(graphs["encoder"], external_data=("encoder.onnx.data",))
    write_manifest(copy, replace(m, graphs=graphs))
    assert load_bundle(copy).manifest.graphs["encoder"].external_data == ("encoder.onnx.data",)
    # now the path-traversing version: the data moved out, the graph pointing at ../
    shutil.move(str(copy / "encoder.onnx.data"), str(tmp_path / "encoder.onnx.data"))
    model = onnx.load(str(copy / "encoder.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../encoder.onnx.data"
    (copy / "encoder.onnx").write_bytes(model.SerializeToString())
    write_manifest(copy, m)  # consistent hashes and names: only the location inside the graph is wrong
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        load_bundle(copy)


def test_fold_check_catches_a_broken_fold(export_tiny_model: tuple[Path, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from osr_export import onestep

    original = onestep.FoldedCrossAttnProcessor.__init__

    def broken(self: Any, attn: Any, context: Any) -> None:
        original(self, attn, context * 1.01)

    monkeypatch.setattr(onestep.FoldedCrossAttnProcessor, "__init__", broken)
    with pytest.raises(FoldCheckError, match="cross_attention_kv"):
        _torch_onestep(*export_tiny_model)


def test_validation_failure_leaves_nothing(export_tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    base, lora = export_tiny_model
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match="fp32 ONNX graphs differ"):
        export_bundle(base, lora, out, ExportOptions(fp32_tolerance=1e-12, validation_sizes=((1, 32, 32),)))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_fp16_wavelet_with_embedding_file(export_tiny_model: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    base, lora = export_tiny_model
    emb = write_prompt_embedding(tmp_path / "prompt.safetensors", 32, seed=3)
    out = tmp_path / "b16"
    rc = cli.main(["bundle", "--base", str(base), "--lora", str(lora), "--out", str(out), "--precision", "fp16",
                   "--timestep", "200", "--prompt-embedding", str(emb), "--color-fix", "wavelet"])
    assert rc == 0
    text = capsys.readouterr()
    assert "fp16     min PSNR" in text.out and "t*=200" in text.out
    assert "write bundle" in text.err  # the progress bar
    m = load_bundle(out).manifest
    assert (m.precision, m.color_fix, m.timestep) == ("fp16", "wavelet", 200)
    assert m.alpha_bar == pytest.approx(load_schedule(base).alpha_bar(200))
    assert m.sources["prompt_embedding"]["kind"] == "file"
    assert m.sources["prompt_embedding"]["files"] == {"prompt.safetensors": sha256_file(emb)}
    assert "text_encoder/model.safetensors" not in m.sources["base"]["files"]
    assert m.validation["fp16"]["min_psnr_db"] >= 45.0
    assert max(m.validation["fp32"]["max_rel_err"].values()) <= 1e-4
    # fp32 I/O, fp16 weights, attention scores and softmax in fp32
    unet = onnx.shape_inference.infer_shapes(onnx.load(str(out / "unet.onnx")))
    assert unet.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {vi.name: vi.type.tensor_type.elem_type for vi in unet.graph.value_info}
    softmax = [n for n in unet.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in softmax)
    convs = [n for n in unet.graph.node if n.op_type == "Conv"]
    assert all(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in convs)
    # at an unseen batch and size, still ≥ 45 dB against the torch fp32 module (same prompt, same t*)
    from safetensors.torch import load_file

    prompt = next(iter(load_file(str(emb)).values()))
    onestep = _torch_onestep(base, lora, "wavelet", prompt=prompt, timestep=200)
    lq = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = onestep(lq).numpy()
    out16 = _run_chain(load_bundle(out), lq.numpy())
    assert out16.shape == (2, 3, 48, 40)
    assert psnr(out16, ref) >= 45.0


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["bundle", "--base", str(tmp_path / "missing"), "--lora", str(tmp_path), "--out",
                   str(tmp_path / "o")])
    assert rc == 1
    assert "osr-export: error: base model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bundle", "--base", "x", "--lora", "y", "--out", "z", "--color-fix", "sepia"])


def test_optimized_bundle(export_tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    base, lora = export_tiny_model
    result = export_bundle(base, lora, tmp_path / "opt",
                           ExportOptions(optimize=True, color_fix="none", validation_sizes=((1, 64, 64), (2, 40, 48))))
    v = result.manifest.validation
    assert result.manifest.exporter["optimized"] is True
    assert max(v["optimized"]["max_rel_err"].values()) <= 1e-4
    assert "optimizer_fusions" in v
    assert load_bundle(tmp_path / "opt").manifest.color_fix == "none"


def test_psnr() -> None:
    a = np.zeros((2, 3, 4, 4))
    assert psnr(a, a) == float("inf")
    assert psnr(a + 0.01, a) == pytest.approx(40.0)
    assert json.loads(json.dumps({"x": psnr(a + 0.1, a)}))["x"] == pytest.approx(20.0)
