"""Masked-image-modeling pretraining: MAE (hf_vit, hf_deit) and SimMIM (hf_swin, hf_vit) against transformers,
their checkpoints in the other model classes, the pretraining script and the fine-tuning that follows it."""

import pytest
import torch
from transformers import (
    AutoModelForMaskedImageModeling,
    SwinConfig,
    SwinForMaskedImageModeling,
    ViTConfig,
    ViTForMaskedImageModeling,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

import hf_vit
from hf_vit.interop.convert import convert_checkpoint
from hf_vit.models.modeling_mim import random_block_mask, sincos_position_embeddings

from conftest import TINY_VIT, randomize, run_without_hf_vit

TINY_MAE = dict(
    **TINY_VIT,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)


HUB_NAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "vit.layers.": "vit.encoder.layer.",
}


def converted(reference, directory):
    """`reference` saved as transformers saves it, then converted by hf_vit's converter (config.json and all)."""
    reference.save_pretrained(directory / "source")
    return convert_checkpoint(str(directory / "source"), str(directory / "converted")), directory / "converted"


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_matches_transformers_loss_predictions_and_mask(tmp_path, norm_pix_loss):
    reference = randomize(ViTMAEForPreTraining(ViTMAEConfig(**TINY_MAE, norm_pix_loss=norm_pix_loss)))
    model, _ = converted(reference, tmp_path)
    assert type(model) is hf_vit.HfViTForPreTraining and model.config.norm_pix_loss == norm_pix_loss
    pixels, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        expected, ours = reference(pixels, noise=noise), model(pixels, noise=noise)
    torch.testing.assert_close(ours.loss, expected.loss, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.logits, expected.logits, atol=1e-4, rtol=0)
    assert torch.equal(ours.mask, expected.mask) and torch.equal(ours.ids_restore, expected.ids_restore)
    assert ours.mask.sum(dim=1).tolist() == [12.0] * 3  # 75 % of the 16 patches


def test_mae_converts_from_the_hubs_key_names_and_its_positions_are_maes():
    reference = randomize(ViTMAEForPreTraining(ViTMAEConfig(**TINY_MAE)))
    legacy = {}
    for key, tensor in reference.state_dict().items():  # facebook/vit-mae-* were saved with these names
        for new, old in HUB_NAMES.items():
            key = key.replace(new, old)
        legacy[key] = tensor
    assert "decoder.decoder_layers.1.attention.attention.query.weight" in legacy
    model = hf_vit.interop.convert.from_transformers(
        {**reference.config.to_dict(), "architectures": ["ViTMAEForPreTraining"]}, legacy
    )
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixels, noise=noise).loss, reference(pixels, noise=noise).loss, atol=1e-4, rtol=0
        )
    # MAE's released sine-cosine layout (transformers rotates its builder's halves to get it)
    table = build_2d_sinusoidal_position_embedding(height=3, width=5, embed_dim=16, cls_token=False)
    torch.testing.assert_close(sincos_position_embeddings((3, 5), 16), torch.cat([table[:, 8:], table[:, :8]], dim=1))
    fresh = hf_vit.HfViTForPreTraining(hf_vit.HfViTConfig(**TINY_MAE))
    torch.testing.assert_close(fresh.decoder.position_embeddings[0, 1:], sincos_position_embeddings((4, 4), 16))
    assert (
        not fresh.decoder.position_embeddings.requires_grad and fresh.vit.embeddings.position_embeddings.requires_grad
    )


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_simmim_matches_transformers_loss_and_reconstruction(tmp_path, family):
    if family == "vit":
        reference = ViTForMaskedImageModeling(
            ViTConfig(**{k: v for k, v in TINY_MAE.items() if "decoder" not in k}, encoder_stride=8)
        )
        expected_class, num_patches = hf_vit.HfViTForMaskedImageModeling, 16
    else:
        reference = SwinForMaskedImageModeling(
            SwinConfig(
                image_size=32,
                patch_size=2,
                embed_dim=16,
                depths=[2, 2],
                num_heads=[2, 2],
                window_size=4,
                encoder_stride=4,
            )
        )
        expected_class, num_patches = hf_vit.HfSwinForMaskedImageModeling, 256
    model, _ = converted(randomize(reference), tmp_path)
    assert type(model) is expected_class
    pixels, masked = torch.randn(3, 3, 32, 32), torch.rand(3, num_patches) < 0.5
    with torch.no_grad():
        expected, ours = reference(pixels, bool_masked_pos=masked), model(pixels, bool_masked_pos=masked)
    torch.testing.assert_close(ours.loss, expected.loss, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.reconstruction, expected.reconstruction, atol=1e-4, rtol=0)


def test_simmim_draws_block_masks_at_its_ratio_and_runs_at_any_size():
    masks = random_block_mask(4, (8, 8), 4, 0.5)
    assert masks.shape == (4, 64) and masks.float().mean().item() == 0.5
    blocks = masks.view(4, 2, 4, 2, 4)  # each 4x4 block is all masked or all visible
    assert torch.all(blocks.all(dim=(2, 4)) | ~blocks.any(dim=(2, 4)))
    config = hf_vit.HfSwinConfig.from_preset(
        "swin-cifar-patch2-window4-32", embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 4]
    )
    model = AutoModelForMaskedImageModeling.from_config(config).eval()
    assert (
        type(model) is hf_vit.HfSwinForMaskedImageModeling and config.mask_patch_size is None
    )  # blocks of total_stride
    output = model(torch.randn(2, 3, 40, 36))  # not a multiple of the total stride: padded, cut back
    assert output.reconstruction.shape == (2, 3, 40, 36) and output.mask.shape == (2, 20 * 18)
    assert output.loss.item() > 0 and model.reconstruct(torch.zeros(2, 3, 40, 36), output).shape == (2, 3, 40, 36)


def test_mae_on_deit_carries_the_distillation_token_and_loads_as_remote_code(tmp_path):
    model = randomize(hf_vit.HfDeiTForPreTraining(hf_vit.HfDeiTConfig(**TINY_MAE)))
    assert model.decoder.num_prefix_tokens == 2 and model.decoder.position_embeddings.shape[1] == 2 + 16
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    model.save_pretrained(tmp_path / "mae")
    expected = tmp_path / "expected.pt"
    torch.save({"pixels": pixels, "noise": noise, "logits": model(pixels, noise=noise).logits.detach()}, expected)
    run_without_hf_vit(
        f"""
        import torch
        from transformers import AutoModelForPreTraining
        model = AutoModelForPreTraining.from_pretrained({str(tmp_path / "mae")!r}, trust_remote_code=True).eval()
        expected = torch.load({str(expected)!r})
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.testing.assert_close(model(expected["pixels"], noise=expected["noise"]).logits, expected["logits"])
        """,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(mask_ratio=0.0), r"mask_ratio must be in \(0, 1\), got 0.0"),
        (dict(mask_ratio=1.5), r"mask_ratio must be in \(0, 1\), got 1.5"),
        (
            dict(decoder_hidden_size=30, decoder_num_attention_heads=4),
            r"decoder_hidden_size \(30\) must be divisible by decoder_num_attention_heads \(4\)",
        ),
        (
            dict(decoder_hidden_size=18, decoder_num_attention_heads=2),
            r"decoder_hidden_size must be divisible by 4, got 18",
        ),
        (dict(mask_patch_size=12), r"mask_patch_size 12 must be a multiple of the patch size 8"),
        (dict(image_size=36), r"image_size 36 must be divisible by patch_size 8"),
    ],
)
def test_bad_pretraining_configs_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        hf_vit.HfViTConfig(**{**TINY_MAE, **overrides})


def test_mae_refuses_a_convolutional_stem():
    with pytest.raises(ValueError, match=r"MAE needs patch_embedding_type='patch'"):
        hf_vit.HfViTForPreTraining(hf_vit.HfViTConfig(**TINY_MAE, patch_embedding_type="conv_stem"))
