"""Converting the ViT backbones people fine-tune in 2026 (DINOv2/v3, EVA02, PE, AIMv2, CLIP, SigLIP) from timm and
transformers, with parity at two sizes; the variants hf_vit does not implement are named."""

import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
    AutoImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from hf_vit import HfViTBackbone, HfViTForImageClassification
from hf_vit.interop.convert import convert_checkpoint, from_timm, from_transformers
from hf_vit.models.configuration_utils import CheckpointMismatchError
from hf_vit.models.modeling_vit import HfViTModel
from hf_vit.training.finetune import finetune, parse_args

from conftest import assert_same_logits, make_imagefolder, randomize, save_timm

SMALL = dict(depth=2, embed_dim=64, num_heads=2)


# timm source, model_args, the sizes to compare at (a second, non-square one for rotary models)
TIMM_SOURCES = {
    "dinov3": ("vit_small_patch16_dinov3", dict(SMALL), [(64, 64), (48, 80)]),
    "dinov3_qkvb, CLS pooling": (
        "vit_small_patch16_dinov3_qkvb",
        dict(SMALL, global_pool="token"),
        [(64, 64), (48, 80)],
    ),
    "eva02 (fused SwiGLU)": ("eva02_small_patch14_224", dict(SMALL, dynamic_img_size=True), [(224, 224), (168, 252)]),
    "eva02 (SwiGLU, MLP norm, separate qkv)": (
        "eva02_base_patch14_224",
        dict(SMALL, dynamic_img_size=True),
        [(224, 224), (168, 252)],
    ),
    "eva02 clip (attention output norm)": ("eva02_base_patch16_clip_224", dict(SMALL), [(224, 224)]),
    "perception encoder": (
        "vit_pe_core_tiny_patch16_384",
        dict(SMALL, dynamic_img_size=True),
        [(384, 384), (256, 320)],
    ),
    "aimv2": ("aimv2_large_patch14_224", dict(SMALL), [(224, 224)]),
    "clip": ("vit_base_patch16_clip_224", dict(SMALL), [(224, 224)]),
    "clip quickgelu": ("vit_base_patch32_clip_quickgelu_224", dict(SMALL), [(224, 224)]),
    "siglip 2 (siglip-shaped)": ("vit_base_patch16_siglip_256", dict(SMALL), [(256, 256)]),
}


def assert_close_logits(ours, reference, pixels):
    with torch.no_grad():
        expected = reference(pixels)
        assert expected.std() > 0.1  # random weights that make a difference
        got = ours(pixels, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(TIMM_SOURCES))
def test_timm_sources_convert_with_logit_parity(name):
    architecture, model_args, sizes = TIMM_SOURCES[name]
    torch.manual_seed(0)
    reference = randomize(timm.create_model(architecture, pretrained=False, num_classes=7, **model_args))
    converted = from_timm(dict(architecture=architecture, num_classes=7, model_args=model_args), reference.state_dict())
    for size in sizes:
        assert_close_logits(converted, reference, torch.randn(2, 3, *size))


def test_a_timm_checkpoint_saved_with_smaller_model_args_converts_as_saved(tmp_path):
    reference, source = save_timm(tmp_path, "dinov3", "vit_base_patch16_dinov3", **SMALL)
    converted = convert_checkpoint(source, str(tmp_path / "out"))
    assert converted.config.num_hidden_layers == 2 and converted.config.hidden_size == 64
    assert converted.config.rope == "dinov3" and not converted.config.absolute_position_embeddings
    assert_close_logits(converted, reference, torch.randn(2, 3, 64, 96))


TRANSFORMERS_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


TRANSFORMERS_SOURCES = {
    "dinov3": (
        DINOv3ViTModel,
        DINOv3ViTConfig(**TRANSFORMERS_SMALL, image_size=64, num_register_tokens=4),
        [(64, 64), (48, 80)],
    ),
    "dinov3 gated, no key bias": (
        DINOv3ViTModel,
        DINOv3ViTConfig(
            **TRANSFORMERS_SMALL, image_size=64, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu"
        ),
        [(64, 64), (48, 80)],
    ),
    "aimv2 with its head": (
        Aimv2VisionModel,
        Aimv2VisionConfig(**TRANSFORMERS_SMALL, image_size=56, patch_size=14),
        [(56, 56)],
    ),
    "aimv2 without a head": (
        Aimv2VisionModel,
        Aimv2VisionConfig(**TRANSFORMERS_SMALL, image_size=56, patch_size=14, use_head=False),
        [(56, 56)],
    ),
    "clip": (CLIPVisionModel, CLIPVisionConfig(**TRANSFORMERS_SMALL, image_size=64, patch_size=16), [(64, 64)]),
}


@pytest.mark.parametrize("name", list(TRANSFORMERS_SOURCES))
def test_transformers_sources_convert_with_hidden_state_and_pooler_parity(name):
    model_class, config, sizes = TRANSFORMERS_SOURCES[name]
    torch.manual_seed(0)
    reference = randomize(model_class(config))
    converted = from_transformers(reference.config.to_dict(), reference.state_dict()).base_model
    for size in sizes:
        pixels = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, got = reference(pixel_values=pixels), converted(pixels, interpolate_pos_encoding=True)
        assert expected.last_hidden_state.std() > 0.1
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=0)
        if expected.pooler_output is not None:
            torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)


def dinov3_checkpoint(tmp_path, **fields):
    """A transformers DINOv3 (random weights) and its hf_vit conversion, written to disk."""
    torch.manual_seed(0)
    config = DINOv3ViTConfig(**TRANSFORMERS_SMALL, image_size=64, num_register_tokens=4, **fields)
    reference = randomize(DINOv3ViTModel(config))
    reference.save_pretrained(tmp_path / "source")
    convert_checkpoint(str(tmp_path / "source"), str(tmp_path / "dinov3"))
    return reference, tmp_path / "dinov3"


def test_a_converted_dinov3_is_an_autobackbone_at_any_size_like_transformers(tmp_path):
    reference, checkpoint = dinov3_checkpoint(tmp_path)
    backbone = HfViTBackbone.from_pretrained(checkpoint, out_indices=[1, 2]).eval()
    fields = {**reference.config.to_dict(), "out_indices": [1, 2], "out_features": None}
    expected_backbone = DINOv3ViTBackbone(reference.config.__class__(**fields))
    expected_backbone.load_state_dict(reference.state_dict())
    for size in ((64, 64), (48, 96)):
        pixels = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, got = expected_backbone.eval()(pixels).feature_maps, backbone(pixels).feature_maps
        assert [tuple(m.shape) for m in got] == [(2, 64, size[0] // 16, size[1] // 16)] * 2
        for ours, theirs in zip(got, expected):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    upernet = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone.config, num_labels=3, hidden_size=32, use_auxiliary_head=False)
    )
    upernet.backbone = backbone
    assert upernet(torch.randn(2, 3, 64, 96)).logits.shape == (2, 3, 64, 96)


def test_a_converted_dinov3_fine_tunes_with_layer_decay(tmp_path, capsys):
    from hf_vit.training.finetune import finetune, parse_args

    _, checkpoint = dinov3_checkpoint(tmp_path)
    train = make_imagefolder(tmp_path / "train", per_class=8, size=(64, 64))
    args = ["--output_dir", str(tmp_path / "tuned"), "--model_name_or_path", str(checkpoint), "--train_dir", str(train),
            "--layer_decay", "0.75", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
            "--disable_tqdm", "true", "--image_size", "48"]  # fmt: skip
    metrics = finetune(*parse_args(args))
    assert 0 <= metrics["eval_accuracy"] <= 1 and "layer_decay = 0.75: given" in capsys.readouterr().out
    tuned = HfViTForImageClassification.from_pretrained(tmp_path / "tuned")
    assert tuned.config.rope == "dinov3" and tuned.config.image_size == 48
    assert tuned(torch.randn(1, 3, 80, 64)).logits.shape == (1, 2)  # any size, nothing resampled


def test_a_converted_dinov3_exports_with_dynamic_height_and_width(tmp_path):
    from hf_vit.interop.export import export_checkpoint

    _, checkpoint = dinov3_checkpoint(tmp_path)
    report = export_checkpoint(str(checkpoint), str(tmp_path / "onnx"), sizes=["64", "48x96"])
    assert set(report["max_abs_difference"]) == {"1 x 64 x 64", "3 x 64 x 64", "1 x 48 x 96", "3 x 48 x 96"}
    assert max(report["max_abs_difference"].values()) <= 1e-4


@pytest.mark.parametrize("architecture, model_args, named", [
    ("vit_base_patch16_rope_mixed_224", dict(depth=1), "RotaryEmbeddingMixed rotary embeddings"),
    ("vit_small_patch16_dinov3", dict(depth=1, num_kv_heads=3, qkv_fused=False, attn_type="rope"), "grouped-query"),
    ("vit_pe_spatial_tiny_patch16_512", dict(depth=1), r"no final norm \(final_norm=False\)"),
    ("naflexvit_base_patch16_gap", dict(depth=1, pos_embed_use_grid_sample=True), "grid_sample"),
    ("naflexvit_base_patch16_gap", dict(depth=1, rope_type="axial", pos_embed="none"), "rotary position"),
])  # fmt: skip
def test_a_variant_still_unsupported_names_the_option_it_needs(architecture, model_args, named):
    with torch.device("meta"):
        reference = timm.create_model(architecture, pretrained=False, **model_args)
    with pytest.raises(ValueError, match=named):
        from_timm(dict(architecture=architecture, model_args=model_args), reference.state_dict())


def test_transformers_siglip_vision_converts_with_parity():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    for use_head in (True, False):
        config = SiglipVisionConfig(**TRANSFORMERS_SMALL, image_size=64, patch_size=16, vision_use_head=use_head)
        reference = randomize(SiglipVisionModel(config))
        converted = from_transformers(reference.config.to_dict(), reference.state_dict()).base_model
        pixels = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected, got = reference(pixel_values=pixels), converted(pixels)
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=0)
        if use_head:
            torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)


def test_the_vision_tower_of_a_whole_clip_or_siglip_checkpoint_converts(tmp_path):
    """`openai/clip-vit-base-patch16` and `google/siglip-base-patch16-224` are whole image-text models (model_type
    `clip`, `siglip`): their vision tower converts, the text tower is left out."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    vision = dict(**TRANSFORMERS_SMALL, image_size=64, patch_size=16)
    for name, model_class, config in (
        ("clip", CLIPModel, CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)),
        ("siglip", SiglipModel, SiglipConfig(text_config=text, vision_config=vision)),
    ):
        torch.manual_seed(0)
        reference = randomize(model_class(config))
        reference.save_pretrained(tmp_path / name)
        convert_checkpoint(str(tmp_path / name), str(tmp_path / f"{name}-vision"))
        converted = HfViTModel.from_pretrained(tmp_path / f"{name}-vision").eval()
        pixels = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected, got = reference.vision_model(pixel_values=pixels), converted(pixels)
        torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)


TIMM_DINOV2_SOURCES = {
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=56), dict(layer_scale_init_value=1e-5)),
    "dinov2 with registers": (
        "vit_small_patch14_reg4_dinov2",
        dict(img_size=56),
        dict(num_register_tokens=4, prefix_position_embeddings=False),
    ),
    "deit iii": (
        "deit3_small_patch16_224",
        dict(img_size=64),
        dict(layer_scale_init_value=1e-6, prefix_position_embeddings=False),
    ),
    "siglip": (
        "vit_base_patch16_siglip_224",
        dict(img_size=64, embed_dim=192, num_heads=3),
        dict(pooling="map", class_token=False),
    ),
    "qk-norm": ("vit_tiny_patch16_224", dict(img_size=64, qk_norm=True), dict(qk_norm=True)),
    # timm's MAP pooling reads the grid tokens only (pool_include_prefix=False), not the register
    "map with a register": (
        "vit_base_patch16_siglip_224",
        dict(img_size=64, embed_dim=192, num_heads=3, reg_tokens=1, no_embed_class=True),
        dict(pooling="map", num_register_tokens=1, pooling_prefix_tokens=False),
    ),
}


@pytest.mark.parametrize(
    "architecture, model_args, expected", TIMM_DINOV2_SOURCES.values(), ids=TIMM_DINOV2_SOURCES.keys()
)
def test_timm_sources_convert_with_parity_at_two_sizes(tmp_path, architecture, model_args, expected):
    reference, source = save_timm(
        tmp_path, "source", architecture, std=0.1, depth=2, dynamic_img_size=True, **model_args
    )
    converted = convert_checkpoint(source, str(tmp_path / "out"))
    assert {key: getattr(converted.config, key) for key in expected} == expected
    size, patch = model_args["img_size"], converted.config.patch_size[0]
    assert_same_logits(converted, reference, torch.randn(2, 3, size, size))
    # timm resamples its position embeddings as hf_vit does (antialiased bicubic, prefix apart)
    assert_same_logits(
        converted, reference, torch.randn(2, 3, size + 2 * patch, size + patch), interpolate_pos_encoding=True
    )


def test_unsupported_timm_variants_name_the_option(tmp_path):
    # DINOv2-g's fused SwiGLU (timm's GluMlp), refused until the fused SwiGLU came, now converts with parity
    reference, source = save_timm(
        tmp_path, "giant", "vit_giant_patch14_dinov2", img_size=28, depth=1, embed_dim=48, num_heads=2
    )
    giant = convert_checkpoint(source, str(tmp_path / "giant_out"))
    assert giant.config.mlp_type == "swiglu_fused"
    assert_same_logits(giant, reference, torch.randn(2, 3, 28, 28))
    _, source = save_timm(tmp_path, "registers", "vit_tiny_patch16_224", img_size=32, depth=1, reg_tokens=2)
    with pytest.raises(ValueError, match="position embeddings on register tokens"):
        convert_checkpoint(source, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


DINOV2_SMALL = dict(
    hidden_size=96,
    num_hidden_layers=2,
    num_attention_heads=3,
    image_size=56,
    patch_size=14,
    layerscale_value=0.5,
    num_labels=10,
)


@pytest.mark.parametrize(
    "model_class, config",
    [
        (Dinov2ForImageClassification, Dinov2Config(**DINOV2_SMALL)),
        (Dinov2WithRegistersForImageClassification, Dinov2WithRegistersConfig(**DINOV2_SMALL, num_register_tokens=4)),
    ],
    ids=["dinov2", "dinov2 with registers"],
)
def test_transformers_dinov2_converts_with_parity_at_two_sizes(tmp_path, caplog, model_class, config):
    reference = randomize(model_class(config), std=0.2)
    reference.save_pretrained(tmp_path / "source")  # a user's own save: no preprocessor_config.json
    with caplog.at_level(logging.WARNING, logger="hf_vit.interop.convert"):
        converted = convert_checkpoint(str(tmp_path / "source"), str(tmp_path / "out"))
    assert [record.getMessage() for record in caplog.records if "preprocessor_config.json" in record.getMessage()] != []
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert processor.size == {"height": 56, "width": 56}
    assert converted.config.pooling == "cls_mean" and converted.config.num_register_tokens == config.to_dict().get(
        "num_register_tokens", 0
    )
    assert_same_logits(converted, lambda x: reference(x).logits, torch.randn(2, 3, 56, 56))
    # Dinov2 resamples with plain bicubic, Dinov2WithRegisters with antialiased bicubic: each converted model keeps
    # its own
    assert_same_logits(
        converted, lambda x: reference(x).logits, torch.randn(2, 3, 84, 70), interpolate_pos_encoding=True
    )


def test_a_bare_dinov2_with_the_hubs_key_names_converts_and_a_register_mismatch_is_named():
    reference = randomize(Dinov2Model(Dinov2Config(**DINOV2_SMALL)), std=0.2)
    legacy = {}
    for key, tensor in reference.state_dict().items():  # the names the Hub checkpoints were saved with
        key = key.replace("attention.q_proj", "attention.attention.query").replace(
            "attention.k_proj", "attention.attention.key"
        )
        key = key.replace("attention.v_proj", "attention.attention.value").replace(
            "attention.o_proj", "attention.output.dense"
        )
        legacy[key] = tensor
    converted = from_transformers(reference.config.to_dict(), legacy)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            converted.vit(pixels).last_hidden_state, reference(pixels).last_hidden_state, atol=1e-4, rtol=0
        )
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): vit\.embeddings\.register_tokens"):
        from_transformers(
            Dinov2Config(**DINOV2_SMALL).to_dict(),
            {
                **{f"dinov2.{key}": tensor for key, tensor in legacy.items()},
                "dinov2.embeddings.register_tokens": torch.zeros(1, 4, 96),
            },
        )
    with pytest.raises(ValueError, match=r"uses \['use_swiglu_ffn=True'\]"):
        from_transformers(Dinov2Config(**DINOV2_SMALL, use_swiglu_ffn=True).to_dict(), legacy)


def test_a_pooling_mismatch_is_named(tmp_path):
    reference, source = save_timm(
        tmp_path, "siglip", "vit_base_patch16_siglip_224", img_size=32, depth=1, embed_dim=48, num_heads=2
    )
    state = {key: tensor for key, tensor in reference.state_dict().items() if not key.startswith("attn_pool.")}
    save_file(state, tmp_path / "siglip" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): vit\.pooler\.kv\.bias"):
        convert_checkpoint(source, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_converted_dinov2_with_registers_fine_tunes_at_its_own_size_with_the_finetune_recipe(tmp_path):
    _, source = save_timm(tmp_path, "source", "vit_small_patch14_reg4_dinov2", img_size=56, depth=2)
    convert_checkpoint(source, str(tmp_path / "dinov2"))  # timm configs store the size as [56, 56]
    images = make_imagefolder(tmp_path / "images", per_class=6, size=(56, 56))
    metrics = finetune(
        *parse_args(
            [
                "--model_name_or_path",
                str(tmp_path / "dinov2"),
                "--train_dir",
                str(images),
                "--output_dir",
                str(tmp_path / "tuned"),
                "--recipe",
                "finetune",
                "--num_train_epochs",
                "1",
                "--disable_tqdm",
                "true",
                "--report_to",
                "none",
                "--save_strategy",
                "no",
            ]
        )
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    tuned = HfViTForImageClassification.from_pretrained(tmp_path / "tuned")
    assert (tuned.config.num_register_tokens, tuned.config.num_labels, tuned.config.layer_scale_init_value) == (
        4,
        2,
        1e-5,
    )
    assert AutoImageProcessor.from_pretrained(tmp_path / "tuned").crop_size == {"height": 56, "width": 56}
