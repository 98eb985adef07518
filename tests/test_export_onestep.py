"""The one-step torch modules: colour fixes, x0 recovery, folded UNet at odd latent sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from osr_export.errors import ExportError
from osr_export.loading import Sources, load_unet, load_vae, rel_err
from osr_export.onestep import (
    FoldedUNet,
    LatentToX0,
    X0Decoder,
    adain_color_fix,
    use_explicit_attention,
    wavelet_color_fix,
)


def test_adain_takes_the_source_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 24, generator=gen)
    source = torch.rand(2, 3, 16, 24, generator=gen) * 0.3 + 0.5
    out = adain_color_fix(target, source)
    assert torch.allclose(out.mean((2, 3)), source.mean((2, 3)), atol=1e-5)
    assert torch.allclose(out.flatten(2).std(-1, correction=0), source.flatten(2).std(-1, correction=0), rtol=1e-3)


@pytest.mark.parametrize("fix", [adain_color_fix, wavelet_color_fix])
def test_colour_fixes_stay_finite_in_fp16_on_high_contrast_512_patches(fix) -> None:
    """fp16 graphs run the colour fix in fp16 on the GPU: a 0/1 stripe pattern over a 512² patch
    (mean squared deviation 0.25) must neither overflow nor drift from the fp32 result."""
    stripes = torch.zeros(1, 3, 512, 512)
    stripes[..., ::2, :] = 1.0
    target = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    half = fix(target.half(), stripes.half())
    assert torch.isfinite(half).all()
    assert (half.float() - fix(target, stripes)).abs().max() < 1e-2


def test_wavelet_keeps_detail_and_takes_colour() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=gen)
    assert torch.allclose(wavelet_color_fix(x, x), x, atol=1e-5)
    shifted = wavelet_color_fix(x, x + 0.25)  # a flat colour shift lives in the low band
    assert torch.allclose(shifted, x + 0.25, atol=1e-5)


def test_x0_recovery() -> None:
    class Eps(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.full_like(z, 0.5)

    z = torch.randn(1, 4, 3, 5)
    ab = 0.635742
    x0 = LatentToX0(Eps(), ab, "epsilon")(z)  # type: ignore[arg-type]
    assert torch.allclose(x0, (z - (1 - ab) ** 0.5 * 0.5) / ab**0.5)
    v = LatentToX0(Eps(), ab, "v_prediction")(z)  # type: ignore[arg-type]
    assert torch.allclose(v, ab**0.5 * z - (1 - ab) ** 0.5 * 0.5)
    with pytest.raises(ExportError, match="alpha_bar"):
        LatentToX0(Eps(), 1.0, "epsilon")  # type: ignore[arg-type]


def test_folded_unet_equals_diffusers(export_tiny_model: tuple[Path, Path]) -> None:
    """Timestep + K/V folds at latent sizes that are not multiples of 8 (the upsample path)."""
    base, _ = export_tiny_model
    unet = load_unet(base, Sources(base))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, 77, 32, generator=gen)
    zs = [torch.randn(1, 4, 8, 8, generator=gen), torch.randn(2, 4, 9, 5, generator=gen)]
    with torch.no_grad():
        refs = [unet(z, 273, encoder_hidden_states=prompt.expand(z.shape[0], -1, -1)).sample for z in zs]
        folded = FoldedUNet(unet, 273, prompt)
        assert all(rel_err(folded(z), r) < 1e-5 for z, r in zip(zs, refs))
        assert folded.fold_cross_attention() == 16
        assert folded.context is None
        assert all(rel_err(folded(z), r) < 1e-5 for z, r in zip(zs, refs))
        other = FoldedUNet(load_unet(base, Sources(base)), 500, prompt)
        assert rel_err(other(zs[0]), refs[0]) > 1e-3  # the timestep matters: t* is really folded


def test_decoder_color_fix_modes(export_tiny_model: tuple[Path, Path]) -> None:
    base, _ = export_tiny_model
    vae = load_vae(base, Sources(base))
    use_explicit_attention(vae)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 6, 5, generator=gen)
    lq = torch.rand(1, 3, 48, 40, generator=gen)
    with torch.no_grad():
        outs = {mode: X0Decoder(vae, mode)(x0, lq) for mode in ("adain", "wavelet", "none")}
        plain = ((vae.decode(x0 / 0.18215).sample.clamp(-1, 1) + 1) / 2).clamp(0, 1)
    assert torch.allclose(outs["none"], plain, atol=1e-5)
    for out in outs.values():
        assert out.shape == (1, 3, 48, 40) and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(outs["adain"], outs["none"])
    with pytest.raises(ExportError, match="colour fix"):
        X0Decoder(vae, "sepia")
