"""Numerical parity with the reference implementations, randomly initialised and mapped into hf_vit."""

import pytest
import timm
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.interop.key_maps import TIMM_VIT_RULES, TRANSFORMERS_VIT_RULES, load_converted_state_dict, rename_keys
from hf_vit.models.configuration_utils import CheckpointMismatchError

from conftest import SMALL_VIT, randomize

SMALL = SMALL_VIT


def transformers_vit(attn_implementation):
    config = ViTConfig(**SMALL, layer_norm_eps=1e-12, attn_implementation=attn_implementation)
    return randomize(ViTForImageClassification(config))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_transformers_vit_parity_at_224_and_at_a_resampled_size(attn_implementation):
    reference = transformers_vit(attn_implementation)
    ours = HfViTForImageClassification(HfViTConfig(**SMALL, layer_norm_eps=1e-12)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TRANSFORMERS_VIT_RULES))
    with torch.no_grad():
        pixels = torch.randn(2, 3, 224, 224)
        expected = reference(pixels).logits
        assert expected.std() > 0.1
        torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)
        pixels = torch.randn(2, 3, 288, 256)
        expected = reference(pixels, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(ours(pixels, interpolate_pos_encoding=True).logits, expected, atol=1e-4, rtol=0)


def test_legacy_transformers_key_names_on_the_hub_are_accepted():
    reference = transformers_vit("eager")
    legacy = {}
    for key, tensor in reference.state_dict().items():
        key = key.replace("vit.layers.", "vit.encoder.layer.").replace("attention.o_proj", "attention.output.dense")
        for new, old in (("q_proj", "attention.query"), ("k_proj", "attention.key"), ("v_proj", "attention.value")):
            key = key.replace(f"attention.{new}", f"attention.{old}")
        key = key.replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")
        legacy[key] = tensor
    assert "vit.encoder.layer.0.attention.attention.query.weight" in legacy
    ours = HfViTForImageClassification(HfViTConfig(**SMALL, layer_norm_eps=1e-12)).eval()
    load_converted_state_dict(ours, rename_keys(legacy, TRANSFORMERS_VIT_RULES))
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("global_pool, pooling", [("token", "cls"), ("avg", "mean")])
def test_timm_vit_parity(global_pool, pooling):
    reference = randomize(
        timm.create_model(
            "vit_tiny_patch16_224", depth=2, num_classes=10, global_pool=global_pool, dynamic_img_size=True
        )
    )
    ours = HfViTForImageClassification(HfViTConfig(**SMALL, pooling=pooling, interpolation_antialias=True)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TIMM_VIT_RULES))
    with torch.no_grad():
        for size in (224, 288):
            pixels = torch.randn(2, 3, size, size)
            expected = reference(pixels)
            assert expected.std() > 0.1
            got = ours(pixels, interpolate_pos_encoding=size != 224).logits
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_mismatched_checkpoints_fail_loudly_with_the_key_names():
    reference = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=10)
    state_dict = rename_keys(reference.state_dict(), TIMM_VIT_RULES)
    ours = HfViTForImageClassification(HfViTConfig(**{**SMALL, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): vit\.encoder\.layers\.2\.attention"):
        load_converted_state_dict(ours, state_dict)
    ours = HfViTForImageClassification(HfViTConfig(**{**SMALL, "num_labels": 7}))
    with pytest.raises(
        CheckpointMismatchError, match=r"classifier\.weight: checkpoint \(10, 192\) vs model \(7, 192\)"
    ):
        load_converted_state_dict(ours, state_dict)
    state_dict["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): extra\.weight"):
        load_converted_state_dict(HfViTForImageClassification(HfViTConfig(**SMALL)), state_dict)
