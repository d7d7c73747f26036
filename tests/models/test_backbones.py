"""ViT, DeiT and the hybrid as `AutoBackbone`s (normalised NCHW maps of chosen blocks, prefix tokens dropped, any
size), the feature pyramid, and UperNet segmentation on hf_vit and hf_swin backbones through the Trainer."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoBackbone,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from hf_vit import (
    HfDeiTConfig,
    HfSwinConfig,
    HfViTBackbone,
    HfViTConfig,
    HfViTForImageClassification,
    HfViTHybridConfig,
)

from conftest import TINY_VIT, randomize

TINY = {**TINY_VIT, "num_hidden_layers": 3}


CONFIGS = {
    "hf_vit with registers": HfViTConfig(**TINY, num_register_tokens=2, out_indices=[0, 2, 3]),
    "hf_deit": HfDeiTConfig(**TINY, out_features=["stage1", "stage3"]),
    "hf_vit_hybrid": HfViTHybridConfig.from_preset("vit-hybrid-resnet-tiny-32", num_hidden_layers=2, out_indices=[2]),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_backbones_return_normalised_maps_of_the_chosen_blocks_at_any_size(config):
    backbone = randomize(AutoBackbone.from_config(config), std=0.05)
    encoder = backbone.base_model
    for height, width in ((32, 32), (48, 64)):
        pixels = torch.randn(2, 3, height, width)
        maps = backbone(pixels).feature_maps
        hidden_states = encoder(pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        grid = encoder.patch_embeddings.grid_size((height, width))
        assert len(maps) == len(config.out_indices) == len(backbone.channels)
        for index, feature_map in zip(config.out_indices, maps):
            assert feature_map.shape == (2, config.hidden_size, *grid)
            expected = encoder.layernorm(hidden_states[index][:, encoder.num_prefix_tokens :])  # no CLS, no registers
            torch.testing.assert_close(feature_map.flatten(2).transpose(1, 2), expected)


def test_a_classifier_checkpoint_loads_as_a_backbone_and_bad_indices_are_named(tmp_path):
    classifier = randomize(HfViTForImageClassification(HfViTConfig(**TINY, num_labels=3)))
    classifier.save_pretrained(tmp_path / "vit")
    # (transformers' AutoBackbone.from_pretrained takes Hub ids only: it asks the Hub whether the repo exists)
    backbone = HfViTBackbone.from_pretrained(tmp_path / "vit", out_indices=[3]).eval()
    assert backbone.out_features == ["stage3"]
    torch.testing.assert_close(
        backbone.vit.embeddings.position_embeddings, classifier.vit.embeddings.position_embeddings
    )
    with pytest.raises(
        ValueError,
        match=r"out_indices must be valid indices for stage_names \['stem', 'stage1', 'stage2', 'stage3'\], got \[4\]",
    ):
        HfViTConfig(**TINY, out_indices=[4])
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        HfViTConfig(**TINY, out_features=["stage9"])


def test_the_feature_pyramid_gives_four_scales_from_the_last_map():
    config = HfViTConfig(
        **{**TINY, "patch_size": 16, "image_size": 64}, out_indices=[2, 3], feature_pyramid_channels=24
    )
    backbone = AutoBackbone.from_config(config).eval()
    maps = backbone(torch.randn(2, 3, 64, 96)).feature_maps
    assert backbone.channels == [24] * 4
    assert [tuple(m.shape) for m in maps] == [
        (2, 24, 16, 24),
        (2, 24, 8, 12),
        (2, 24, 4, 6),
        (2, 24, 2, 3),
    ]  # strides 4-32
    with pytest.raises(ValueError, match="feature_pyramid_channels needs hidden_size divisible by 4"):
        HfViTConfig(**{**TINY, "hidden_size": 30, "num_attention_heads": 3}, feature_pyramid_channels=24)


def segmentation_data(count: int, size: int = 32, num_labels: int = 4) -> Dataset:
    """Squares of a class-coloured brightness on noise, labelled per pixel (background 0)."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(count):
        pixels, labels = rng.normal(0, 0.3, (3, size, size)).astype(np.float32), np.zeros((size, size), dtype=np.int64)
        label, top, left = rng.integers(1, num_labels), *rng.integers(0, size // 2, 2)
        pixels[:, top : top + size // 2, left : left + size // 2] += label
        labels[top : top + size // 2, left : left + size // 2] = label
        rows.append({"pixel_values": pixels, "labels": labels})
    return Dataset.from_list(rows).with_format("torch")


BACKBONE_CONFIGS = {
    "hf_vit": HfViTConfig(**TINY, out_indices=[1, 2, 3]),
    "hf_vit with a feature pyramid": HfViTConfig(**TINY, feature_pyramid_channels=24),
    "hf_swin": HfSwinConfig(
        image_size=32,
        patch_size=2,
        embed_dim=16,
        depths=[1, 1, 1],
        num_heads=[1, 2, 4],
        window_size=4,
        out_features=["stage1", "stage2", "stage3"],
    ),
}


@pytest.mark.parametrize("backbone_config", BACKBONE_CONFIGS.values(), ids=BACKBONE_CONFIGS.keys())
def test_upernet_on_hf_vit_and_hf_swin_backbones_trains_through_the_trainer(tmp_path, backbone_config):
    channels = AutoBackbone.from_config(backbone_config).channels  # the auxiliary FCN head reads the third map
    config = UperNetConfig(
        backbone_config=backbone_config, hidden_size=32, auxiliary_in_channels=channels[2], num_labels=4
    )
    model = UperNetForSemanticSegmentation(config)
    assert type(model.backbone).__name__ in ("HfViTBackbone", "HfSwinBackbone")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    before = [param.detach().clone() for param in model.backbone.parameters()]
    result = Trainer(model=model, args=args, train_dataset=segmentation_data(8)).train()
    assert np.isfinite(result.training_loss)
    assert any(
        not torch.equal(old, new) for old, new in zip(before, model.backbone.parameters())
    )  # the backbone learned
    logits = model.eval()(torch.randn(1, 3, 32, 32)).logits
    assert logits.shape == (1, 4, 32, 32)
