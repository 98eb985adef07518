"""osr_export.loading: base model, scheduler, pickles, LoRA checks, prompt embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from osr_export.errors import (
    ExportError,
    LoraMismatchError,
    MissingComponentError,
    PickleRefusedError,
    PromptEmbeddingError,
    UnknownSchedulerError,
)
from osr_export.loading import (
    Sources,
    encode_prompt,
    inject_lora,
    load_lora,
    load_prompt_embedding,
    load_schedule,
    load_unet,
    load_vae,
    lora_adapter_dir,
    rel_err,
)
from osr_export.pipeline import ExportOptions, export_bundle
from osr_export.synthetic import write_prompt_embedding
from osr_runtime.errors import OsrError
from safetensors.torch import load_file, save_file


@pytest.fixture()
def base(export_tiny_model: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_tiny_model[0], tmp_path / "base"))


@pytest.fixture()
def lora(export_tiny_model: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_tiny_model[1], tmp_path / "lora"))


def test_loads_components_and_hashes_sources(base: Path) -> None:
    sources = Sources(base)
    unet, vae = load_unet(base, sources), load_vae(base, sources)
    assert not unet.training and next(unet.parameters()).dtype == torch.float32
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert set(sources.files) == {"unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                  "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}
    assert all(len(h) == 64 for h in sources.files.values())


def test_schedule_is_sd21(base: Path) -> None:
    s = load_schedule(base)
    assert s.class_name == "PNDMScheduler" and s.prediction_type == "epsilon"
    assert s.num_train_timesteps == 1000
    assert s.alpha_bar(273) == pytest.approx(0.635742, abs=2e-6)
    with pytest.raises(ExportError, match="outside the scheduler's range"):
        s.alpha_bar(1000)


@pytest.mark.parametrize("component", ["unet", "vae", "scheduler"])
def test_missing_component(base: Path, component: str) -> None:
    shutil.rmtree(base / component)
    with pytest.raises(MissingComponentError, match=f"lacks the {component}/ component"):
        export_bundle(base, None, base.parent / "out")
    assert not (base.parent / "out").exists()


def test_missing_text_encoder_is_fine_with_an_embedding_file(base: Path, tmp_path: Path) -> None:
    shutil.rmtree(base / "text_encoder")
    with pytest.raises(MissingComponentError, match="text_encoder"):
        encode_prompt(base, "", Sources(base))
    emb = write_prompt_embedding(tmp_path / "e.safetensors", 32)
    assert load_prompt_embedding(emb, 32).shape == (1, 77, 32)


def test_missing_weights_file(base: Path) -> None:
    (base / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingComponentError, match="has no weights"):
        load_vae(base, Sources(base))


def test_weights_that_do_not_fit_the_config(base: Path) -> None:
    cfg = json.loads((base / "vae" / "config.json").read_text())
    cfg["latent_channels"] = 8
    (base / "vae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="do not fit its config.json"):
        load_vae(base, Sources(base))


def test_unknown_scheduler(base: Path) -> None:
    path = base / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "_class_name": "MysterySampler"}))
    with pytest.raises(UnknownSchedulerError, match="unknown scheduler 'MysterySampler'"):
        load_schedule(base)
    path.write_text(json.dumps({**cfg, "beta_schedule": "cubic"}))
    with pytest.raises(UnknownSchedulerError, match="unknown beta_schedule 'cubic'"):
        load_schedule(base)
    path.write_text(json.dumps({**cfg, "prediction_type": "flow"}))
    with pytest.raises(UnknownSchedulerError, match="prediction_type"):
        load_schedule(base)


def _to_pickle(folder: Path) -> None:
    st = folder / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(st)), folder / "diffusion_pytorch_model.bin")
    st.unlink()


def test_pickled_checkpoint_refused_unless_allowed(base: Path) -> None:
    reference = load_unet(base, Sources(base))
    _to_pickle(base / "unet")
    with pytest.raises(PickleRefusedError, match="pickled checkpoint"):
        load_unet(base, Sources(base))
    with pytest.raises(PickleRefusedError):
        export_bundle(base, None, base.parent / "out")
    loaded = load_unet(base, Sources(base), allow_pickle=True)
    for (k, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt"])
def test_pickle_with_code_refused_even_when_allowed(base: Path, suffix: str) -> None:
    folder = base / "unet"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"weight": _Evil()}, folder / f"diffusion_pytorch_model{suffix}")
    with pytest.raises(PickleRefusedError, match="weights_only=True"):
        load_unet(base, Sources(base), allow_pickle=True)


def test_lora_adapters_fit_and_merge(base: Path, lora: Path) -> None:
    unet = load_unet(base, Sources(base))
    sources = Sources(lora)
    adapter = load_lora(lora_adapter_dir(lora, "unet"), unet, sources)
    assert adapter.config.r == 32 and adapter.config.lora_alpha == 32
    assert set(adapter.config.target_modules) == {"conv1", "conv2", "conv_in", "conv_shortcut", "conv",
                                                  "conv_out", "to_k", "to_q", "to_v", "to_out.0"}
    names = set(adapter.modules)
    assert {"conv_in", "conv_out", "down_blocks.0.downsamplers.0.conv",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"} <= names
    assert "time_embedding.linear_1" not in names
    vae = load_vae(base, Sources(base))
    vae_adapter = load_lora(lora_adapter_dir(lora, "vae_encoder"), vae.encoder, sources)
    assert vae_adapter.config.r == 16 and "mid_block.attentions.0.to_q" in vae_adapter.modules
    assert set(sources.files) == {
        "unet_lora_adapter/adapter_config.json", "unet_lora_adapter/adapter_model.safetensors",
        "vae_encoder_lora_adapter/adapter_config.json", "vae_encoder_lora_adapter/adapter_model.safetensors"}
    # the merge changes the model and equals the unmerged adapter
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = vae.encoder(x)
        peft_model = inject_lora(vae.encoder, vae_adapter)
        active = peft_model.get_base_model()(x)
        merged = peft_model.merge_and_unload()(x)
    assert rel_err(active, plain) > 1e-3
    assert rel_err(merged, active) < 1e-5


def test_missing_lora_folder(base: Path, lora: Path) -> None:
    shutil.rmtree(lora / "vae_encoder_lora_adapter")
    with pytest.raises(MissingComponentError, match="lacks vae_encoder_lora_adapter/"):
        lora_adapter_dir(lora, "vae_encoder")
    with pytest.raises(MissingComponentError, match="OMGSR-S layout"):
        export_bundle(base, lora, base.parent / "out")


def test_lora_for_another_model(base: Path, lora: Path) -> None:
    unet = load_unet(base, Sources(base))
    with pytest.raises(LoraMismatchError, match="do not select|do not exist"):
        load_lora(lora / "vae_encoder_lora_adapter", unet, Sources(lora))


def test_lora_targets_matching_nothing(base: Path, lora: Path) -> None:
    folder = lora / "unet_lora_adapter"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["target_modules"] = ["qkv_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoraMismatchError, match="match no module"):
        load_lora(folder, load_unet(base, Sources(base)), Sources(lora))


def _edit_adapter(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = folder / "adapter_model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_lora_shape_mismatch(base: Path, lora: Path) -> None:
    folder = lora / "unet_lora_adapter"
    key = "base_model.model.conv_in.lora_A.weight"
    _edit_adapter(folder, lambda s: s.__setitem__(key, torch.zeros(32, 5, 3, 3)))
    with pytest.raises(LoraMismatchError, match=r"LoRA shapes for conv_in are A\(32, 5, 3, 3\)"):
        load_lora(folder, load_unet(base, Sources(base)), Sources(lora))


def test_lora_rank_mismatch(base: Path, lora: Path) -> None:
    folder = lora / "vae_encoder_lora_adapter"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(LoraMismatchError, match="rank 16, adapter_config.json says r=8"):
        load_lora(folder, load_vae(base, Sources(base)).encoder, Sources(lora))


def test_lora_missing_and_unknown_keys(base: Path, lora: Path) -> None:
    folder = lora / "unet_lora_adapter"
    unet = load_unet(base, Sources(base))
    _edit_adapter(folder, lambda s: s.pop("base_model.model.conv_out.lora_B.weight"))
    with pytest.raises(LoraMismatchError, match="lacks lora_A/lora_B weights for 1 targeted modules: \\['conv_out'\\]"):
        load_lora(folder, unet, Sources(lora))
    _edit_adapter(folder, lambda s: s.__setitem__("base_model.model.conv_out.lora_magnitude_vector", torch.ones(4)))
    with pytest.raises(LoraMismatchError, match="unexpected key"):
        load_lora(folder, unet, Sources(lora))


def test_pickled_lora_refused(base: Path, lora: Path) -> None:
    folder = lora / "unet_lora_adapter"
    torch.save(load_file(str(folder / "adapter_model.safetensors")), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    unet = load_unet(base, Sources(base))
    with pytest.raises(PickleRefusedError):
        load_lora(folder, unet, Sources(lora))
    assert load_lora(folder, unet, Sources(lora), allow_pickle=True).config.r == 32


def test_prompt_embedding_file_checks(tmp_path: Path) -> None:
    good = write_prompt_embedding(tmp_path / "good.safetensors", 32)
    assert load_prompt_embedding(good, 32).dtype == torch.float32
    with pytest.raises(PromptEmbeddingError, match=r"\(1, 77, 64\)"):
        load_prompt_embedding(good, 64)
    save_file({"a": torch.zeros(1, 77, 32), "b": torch.zeros(1, 77, 32)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(PromptEmbeddingError, match="exactly one tensor"):
        load_prompt_embedding(tmp_path / "two.safetensors", 32)
    save_file({"a": torch.zeros(2, 77, 32)}, str(tmp_path / "batch.safetensors"))
    with pytest.raises(PromptEmbeddingError, match=r"\(2, 77, 32\)"):
        load_prompt_embedding(tmp_path / "batch.safetensors", 32)
    torch.save({"a": torch.zeros(1, 77, 32)}, tmp_path / "e.pt")
    with pytest.raises(PickleRefusedError):
        load_prompt_embedding(tmp_path / "e.pt", 32)
    with pytest.raises(MissingComponentError):
        load_prompt_embedding(tmp_path / "nope.safetensors", 32)


def test_encode_prompt_matches_text_encoder(base: Path) -> None:
    emb = encode_prompt(base, "", Sources(base))
    assert emb.shape == (1, 77, 32) and emb.dtype == torch.float32
    assert not torch.equal(emb, encode_prompt(base, "a photo", Sources(base)))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (ExportOptions(precision="int8"), "precision"),  # type: ignore[arg-type]
        (ExportOptions(color_fix="sepia"), "color_fix"),  # type: ignore[arg-type]
        (ExportOptions(timestep=-1), "timestep"),
        (ExportOptions(alpha_bar=1.0), "alpha_bar"),
        (ExportOptions(validation_sizes=((1, 60, 64),)), "multiples of 8"),
        (ExportOptions(patch_size=500), "patch_size"),
        (ExportOptions(opset=13), "opset"),
        (ExportOptions(timestep=1000), "outside the scheduler's range"),
    ],
)
def test_bad_options(base: Path, tmp_path: Path, options: ExportOptions, match: str) -> None:
    with pytest.raises(OsrError, match=match):
        export_bundle(base, None, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_out_folder_protection(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="--overwrite"):
        export_bundle(base, None, out)
    with pytest.raises(ExportError, match="not a model bundle"):
        export_bundle(base, None, out, ExportOptions(overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"
