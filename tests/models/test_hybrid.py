"""The hybrid (a transformers backbone under the ViT encoder) and the convolutional patch embedding."""

import re
from functools import partial

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import HybridEmbed
from transformers import BitConfig, ConvNextConfig, ResNetConfig, ResNetModel

from hf_vit import (
    HfDeiTConfig,
    HfDeiTModel,
    HfSwinConfig,
    HfViTHybridConfig,
    HfViTHybridForImageClassification,
    HfViTHybridModel,
)
from hf_vit.interop.key_maps import TIMM_VIT_RULES, load_converted_state_dict, rename_keys

from conftest import HYBRID_ENCODER, HYBRID_RESNET, randomize, tiny_hybrid_config


def resnet_block(match: re.Match) -> str:
    """timm / torchvision `layer{L}.{j}.conv{k}` / `bn{k}` / `downsample.{0,1}` -> transformers ResNet
    `stages.{L-1}.layers.{j}.layer.{k-1}` / `shortcut`."""
    stage, block, kind, index = int(match.group(1)) - 1, match.group(2), match.group(3), int(match.group(4))
    prefix = f"vit.patch_embeddings.backbone.encoder.stages.{stage}.layers.{block}."
    if kind == "downsample.":  # the projection shortcut: 0 is its convolution, 1 its norm
        return prefix + ("shortcut.convolution." if index == 0 else "shortcut.normalization.")
    return prefix + f"layer.{index - 1}." + ("convolution." if kind == "conv" else "normalization.")


# timm's hybrid VisionTransformer on a timm / torchvision ResNet (`HybridEmbed(backbone=resnet features)`): the
# ResNet becomes a transformers ResNet backbone (same architecture, v1.5 bottlenecks), the rest is timm's ViT.
_TIMM_RESNET = r"^patch_embed\.backbone\."


TIMM_VIT_HYBRID_RULES = [
    (_TIMM_RESNET + r"conv1\.", r"{base}.patch_embeddings.backbone.embedder.embedder.convolution."),
    (_TIMM_RESNET + r"bn1\.", r"{base}.patch_embeddings.backbone.embedder.embedder.normalization."),
    (_TIMM_RESNET + r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.", resnet_block),
    *TIMM_VIT_RULES,
]


@pytest.mark.parametrize(
    "backbone_config, image_size, grid, other_size, other_grid",
    [
        # ResNet-50 to its last stage, as the article: stride 32, 7x7 + CLS = 50 tokens at 224 px.
        (ResNetConfig(out_features=["stage4"]), 224, (7, 7), (160, 96), (5, 3)),
        # ResNet-18's first three stages: stride 16.
        (
            ResNetConfig(layer_type="basic", depths=[2, 2, 2], hidden_sizes=[64, 128, 256], out_features=["stage3"]),
            224,
            (14, 14),
            (96, 64),
            (6, 4),
        ),
        # BiT (ResNetV2) to stage 2: stem stride 4, then one stride-2 stage.
        (
            BitConfig(embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1], num_groups=8, out_features=["stage2"]),
            64,
            (8, 8),
            (48, 80),
            (6, 10),
        ),
        # ConvNeXt to stage 3: the 4x4 patchify stem, then two stride-2 stages.
        (
            ConvNextConfig(num_stages=3, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], out_features=["stage3"]),
            64,
            (4, 4),
            (96, 32),
            (6, 2),
        ),
        # hf_swin's own backbone to stage 2: patch 4, one merge.
        (
            HfSwinConfig(
                embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, image_size=64, out_features=["stage2"]
            ),
            64,
            (8, 8),
            (80, 48),
            (10, 6),
        ),
    ],
    ids=["resnet50", "resnet18", "bit", "convnext", "hf_swin"],
)
def test_tokens_follow_the_backbone_stride_at_any_size(backbone_config, image_size, grid, other_size, other_grid):
    config = HfViTHybridConfig(**HYBRID_ENCODER, image_size=image_size, backbone_config=backbone_config)
    model = HfViTHybridModel(config).eval()
    assert model.embeddings.position_embeddings.shape == (1, 1 + grid[0] * grid[1], 32)
    with torch.no_grad():
        output = model(torch.randn(2, 3, image_size, image_size))
        assert output.last_hidden_state.shape == (2, 1 + grid[0] * grid[1], 32) and output.pooler_output.shape == (
            2,
            32,
        )
        other = model(torch.randn(1, 3, *other_size), interpolate_pos_encoding=True)
    assert other.last_hidden_state.shape == (1, 1 + other_grid[0] * other_grid[1], 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(torch.randn(1, 3, *other_size))


def test_set_image_size_resamples_the_grid_for_good(tmp_path):
    model = randomize(HfViTHybridForImageClassification(tiny_hybrid_config()), std=0.05)
    pixels = torch.randn(1, 3, 48, 48)
    expected = model(pixels, interpolate_pos_encoding=True).logits
    model.set_image_size(48)  # stride 8: a 6x6 grid
    assert model.config.image_size == 48 and model.vit.embeddings.position_embeddings.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model(pixels).logits, expected)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(
        HfViTHybridForImageClassification.from_pretrained(tmp_path).eval()(pixels).logits, expected
    )


def test_default_is_the_articles_resnet50_hybrid_with_the_expected_parameter_count():
    config = HfViTHybridConfig(
        hidden_size=192, num_attention_heads=3, num_hidden_layers=2, intermediate_size=768, num_labels=10
    )
    model = HfViTHybridForImageClassification(config)
    resnet50_without_head = 23_508_032  # torchvision's resnet50 (25,557,032) minus its 2048 -> 1000 fc layer
    assert sum(p.numel() for p in model.vit.patch_embeddings.backbone.parameters()) == resnet50_without_head
    d, blocks = 192, 2
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d  # qkv, proj, MLP, 2 norms
    expected = resnet50_without_head + (2048 * d + d) + d + 50 * d + blocks * block + 2 * d + (d * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(
    "timm_resnet, out_index, backbone_config",
    [
        (
            "resnet18",
            2,
            ResNetConfig(layer_type="basic", depths=[2, 2], hidden_sizes=[64, 128], out_features=["stage2"]),
        ),
        ("resnet50", 4, ResNetConfig(out_features=["stage4"])),  # bottlenecks, projection shortcuts in every stage
    ],
)
def test_parity_with_timms_hybrid_vision_transformer(timm_resnet, out_index, backbone_config):
    torch.manual_seed(0)
    backbone = timm.create_model(timm_resnet, features_only=True, out_indices=(out_index,))
    reference = VisionTransformer(
        img_size=64,
        patch_size=1,
        embed_dim=64,
        depth=2,
        num_heads=4,
        num_classes=7,
        embed_layer=partial(HybridEmbed, backbone=backbone),
    )
    randomize(reference, std=0.05)
    for module in reference.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    config = HfViTHybridConfig(
        image_size=64,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=7,
        backbone_config=backbone_config,
    )
    ours = HfViTHybridForImageClassification(config).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TIMM_VIT_HYBRID_RULES))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixels)
        assert expected.std() > 0.1
        torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)


def test_frozen_backbone_gets_no_gradients_and_keeps_its_statistics():
    model = HfViTHybridForImageClassification(tiny_hybrid_config(freeze_backbone=True)).train()
    backbone = model.vit.patch_embeddings.backbone
    assert not backbone.training and model.vit.encoder.training
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = model(torch.randn(4, 3, 64, 64), labels=torch.tensor([0, 1, 2, 0])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in backbone.parameters())
    assert model.vit.patch_embeddings.projection.weight.grad.abs().sum() > 0
    for name, value in backbone.state_dict().items():  # weights and BatchNorm running statistics
        torch.testing.assert_close(value, before[name], msg=name)

    trainable = HfViTHybridForImageClassification(tiny_hybrid_config()).train()
    trainable(torch.randn(4, 3, 64, 64), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert all(p.grad is not None for p in trainable.vit.patch_embeddings.backbone.parameters())


def test_pretrained_backbone_initialises_a_fresh_model_and_is_not_refetched(tmp_path):
    resnet = randomize(ResNetModel(ResNetConfig(**{k: v for k, v in HYBRID_RESNET.items() if k != "model_type"})))
    resnet.save_pretrained(tmp_path / "resnet")
    # Without backbone_config the checkpoint's own configuration is used, tapping its last stage.
    config = HfViTHybridConfig(
        **HYBRID_ENCODER, image_size=64, backbone=str(tmp_path / "resnet"), use_pretrained_backbone=True
    )
    assert config.backbone_config.out_features == ["stage2"] and config.backbone_config.hidden_sizes == [8, 16]
    model = HfViTHybridForImageClassification(config).eval()
    for name, value in resnet.state_dict().items():
        torch.testing.assert_close(model.vit.patch_embeddings.backbone.state_dict()[name], value, msg=name)
    model.save_pretrained(tmp_path / "hybrid")
    (tmp_path / "resnet" / "model.safetensors").unlink()  # the saved hybrid holds the backbone weights itself
    reloaded = HfViTHybridForImageClassification.from_pretrained(tmp_path / "hybrid").eval()
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(reloaded(pixels).logits, model(pixels).logits)


def test_pretrained_backbone_that_does_not_fit_is_an_error(tmp_path):
    small = {k: v for k, v in HYBRID_RESNET.items() if k != "model_type"}
    ResNetModel(ResNetConfig(**{**small, "depths": [1], "hidden_sizes": [8]})).save_pretrained(tmp_path / "resnet")
    config = tiny_hybrid_config(backbone=str(tmp_path / "resnet"), use_pretrained_backbone=True)
    with pytest.raises(ValueError, match="does not fit backbone_config: missing"):
        HfViTHybridForImageClassification(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(backbone_config={**HYBRID_RESNET, "out_features": ["stage1", "stage2"]}), "exactly one stage"),
        (dict(backbone_config={"model_type": "bert"}), "has no AutoBackbone class"),
        (dict(num_channels=1), "num_channels"),
        (dict(use_pretrained_backbone=True), "needs `backbone`"),
        (dict(num_attention_heads=5), "hidden_size"),
        (dict(pooling="max"), "pooling"),
    ],
)
def test_bad_config_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_hybrid_config(**overrides)


def test_wrong_channels_or_size_name_expected_and_received_shapes():
    model = HfViTHybridModel(tiny_hybrid_config())
    with pytest.raises(ValueError, match="1 channels, the model expects num_channels=3"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="doesn't match the model's 64x64"):
        model(torch.randn(1, 3, 48, 64))


def test_conv_stem_on_deit_keeps_the_sequence_length():
    plain = HfDeiTModel(HfDeiTConfig(**HYBRID_ENCODER, image_size=32, patch_size=8))
    stem = HfDeiTModel(HfDeiTConfig(**HYBRID_ENCODER, image_size=32, patch_size=8, patch_embedding_type="conv_stem"))
    pixels = torch.randn(2, 3, 32, 32)
    assert stem(pixels).last_hidden_state.shape == plain(pixels).last_hidden_state.shape == (2, 2 + 16, 32)
    assert [type(m).__name__ for m in stem.patch_embeddings.stem][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]


def test_stages_after_the_tapped_one_are_reported(caplog):
    config = tiny_hybrid_config(backbone_config={**HYBRID_RESNET, "out_features": ["stage1"]})
    with caplog.at_level("WARNING", logger="hf_vit.models.modeling_hybrid"):
        HfViTHybridModel(config)
    assert "runs stages ['stage2'] after the tapped stage1" in caplog.text
