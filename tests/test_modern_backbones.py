"""The ViT backbones people fine-tune in 2026, and the options they are made of: rotary positions (DINOv3's, EVA02's,
Perception Encoder's), SwiGLU, RMSNorm, a norm before the encoder, masked key biases, models without a class token.
Every source converts with parity against transformers and timm on random weights, at its own size and (rotary
models) at a non-square one; the options work under SDPA and eager attention, gradient checkpointing, bf16 / fp16 and
remote code; a converted DINOv3 fine-tunes, serves as an AutoBackbone and UperNet's backbone, and exports."""

import json

import pytest
import timm
import torch
from transformers import (
    Aimv2VisionConfig,
    Aimv2VisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from hf_vit import HfDeiTConfig, HfDeiTForImageClassification, HfViTBackbone, HfViTConfig, HfViTForImageClassification
from hf_vit.interop.convert import convert_checkpoint, from_timm, from_transformers
from hf_vit.models.configuration_utils import CheckpointMismatchError
from hf_vit.models.modeling_vit import HfViTForMaskedImageModeling, HfViTForPreTraining, HfViTModel

from conftest import TINY_VIT, randomize
from test_convert import save_timm
from test_ecosystem import assert_loads_as_remote_code

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

    from test_finetune import make_imagefolder

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


OPTIONS = {
    "dinov3 rotary": dict(rope="dinov3", absolute_position_embeddings=False, num_register_tokens=2, key_bias=False),
    "eva rotary beside absolute positions": dict(rope="eva", rope_reference_grid=[4, 4], rope_layout="interleaved"),
    "swiglu and rmsnorm": dict(mlp_type="swiglu", hidden_act="silu", norm_type="rms_norm", mlp_norm=True),
    "fused swiglu, pre-norm, no biases": dict(
        mlp_type="swiglu_fused",
        hidden_act="silu",
        pre_norm=True,
        qkv_bias=False,
        proj_bias=False,
        mlp_bias=False,
        patch_embedding_bias=False,
    ),
    "no class token, normalised mean": dict(class_token=False, pooling="normalized_mean", patch_embedding_norm=True),
    "attention pooling without query projection or mlp": dict(
        class_token=False, pooling="map", pooling_query_projection=False, pooling_mlp=False, pooling_num_heads=4
    ),
    "clip's pooled norm": dict(pre_norm=True, pooled_norm_only=True, attention_output_norm=True),
}


def options_model(options: dict, **more):
    torch.manual_seed(0)
    return randomize(HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=3, **options, **more)))


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_works_under_eager_and_sdpa_checkpointing_and_remote_code(tmp_path, name):
    model = options_model(OPTIONS[name])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sdpa = model(pixels).logits
        model.set_attn_implementation("eager")
        eager = model(pixels, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa, atol=1e-5, rtol=0)
    model.train()
    labels = torch.tensor([0, 2])
    torch.manual_seed(1)
    model(pixels, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    torch.manual_seed(1)
    model(pixels, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], atol=1e-5, rtol=1e-4, msg=n)
    model.gradient_checkpointing_disable()
    assert_loads_as_remote_code(model, tmp_path / "model", pixels)


@pytest.mark.parametrize("name", ["dinov3 rotary", "eva rotary beside absolute positions"])
def test_rotary_models_pretrain_with_mae_and_simmim_and_serve_a_deit(name):
    config = HfViTConfig(**TINY_VIT, **OPTIONS[name], decoder_hidden_size=16, decoder_num_hidden_layers=1,
                         decoder_num_attention_heads=2, decoder_intermediate_size=32)  # fmt: skip
    pixels = torch.randn(2, 3, 32, 32)
    for model_class in (HfViTForPreTraining, HfViTForMaskedImageModeling):
        output = model_class(config)(pixels)
        output.loss.backward()
        assert torch.isfinite(output.loss)
    deit = HfDeiTForImageClassification(HfDeiTConfig(**TINY_VIT, **OPTIONS[name], num_labels=3))
    assert deit(torch.randn(2, 3, 32, 48), interpolate_pos_encoding=True).logits.shape == (2, 3)


def test_the_prefix_only_last_block_gives_the_same_logits_with_rotary_positions():
    model = options_model(OPTIONS["dinov3 rotary"])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.vit(pixels, output_hidden_states=True).pooler_output
        fast = model(pixels).logits
    torch.testing.assert_close(model.classifier(full), fast, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["dinov3-small-patch16-224", "eva02-tiny-patch14-224", "aimv2-large-patch14-224"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_new_presets_train_in_bf16_and_fp16_without_overflow(preset, dtype):
    config = HfViTConfig.from_preset(
        preset,
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        image_size=112,
        num_labels=3,
    )
    model = HfViTForImageClassification(config)
    pixels = torch.randn(2, 3, 112, 112) * 3  # brighter than normalised images
    with torch.autocast("cpu", dtype=dtype):
        output = model(pixels, labels=torch.tensor([0, 1]))
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.logits).all()
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.to(dtype)  # the weights themselves in half precision too
    assert torch.isfinite(model(pixels.to(dtype)).logits).all()


def test_a_high_norm_channel_beyond_fp16s_range_stays_finite_under_fp16_autocast():
    """Where DINOv3 breaks in fp16: trained DINOv3s grow high-norm channels in the residual stream, past fp16's 65504.
    Weights cast to fp16 overflow there; under autocast (the Trainer's `--fp16`) the stream stays in float32 and the
    norms, rotary angles and softmax run in float32, so the logits match float32's."""
    config = HfViTConfig.from_preset(
        "dinov3-small-patch16-224", num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
        image_size=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = HfViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.vit.encoder.layers[0].layer_scale2.gamma[5] = 3e6
        assert model.vit(pixels, output_hidden_states=True).hidden_states[1].abs().max() > 65504
        expected = model(pixels).logits
        with torch.autocast("cpu", dtype=torch.float16):
            got = model(pixels).logits
        torch.testing.assert_close(got.float(), expected, atol=1e-3, rtol=1e-3)
        assert not torch.isfinite(model.half()(pixels.half()).logits).all()  # the failure autocast avoids


def test_new_presets_train_from_scratch_through_finetune(tmp_path):
    from hf_vit.training.finetune import finetune, parse_args

    args = ["--output_dir", str(tmp_path / "run"), "--preset", "dinov3-small-patch16-224", "--config_overrides",
            "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64,patch_size=4",
            "--image_size", "32", "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
            "--disable_tqdm", "true", "--save_strategy", "no"]  # fmt: skip
    finetune(*parse_args(args))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["rope"] == "dinov3" and config["num_register_tokens"] == 4


@pytest.mark.parametrize("fields, message", [
    (dict(rope_theta=50.0), r"\['rope_theta'\] set rotary position embeddings, which need rope"),
    (dict(absolute_position_embeddings=False), "leaves the model no position information"),
    (dict(rope="dinov3", absolute_position_embeddings=False, interpolation_antialias=True),
     r"\['interpolation_antialias'\] set absolute position embeddings"),
    (dict(rope="eva", hidden_size=40, num_attention_heads=4), "head width divisible by 4"),
    (dict(rope="dinov3", rope_reference_grid=[4, 4]), "rope_reference_grid .* rescales rope='eva' coordinates"),
    (dict(rope="dinov3", rope_jitter=0.5), "rope_jitter must be a number of at least 1.0"),
    (dict(mlp_type="geglu"), r"mlp_type must be one of \['mlp', 'swiglu', 'swiglu_fused'\]"),
    (dict(norm_type="batch_norm"), r"norm_type must be one of"),
    (dict(pooled_norm_only=True, pooling="mean"), "pooled_norm_only normalises the pooled CLS token"),
])  # fmt: skip
def test_options_that_cannot_work_together_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        HfViTConfig(**{**TINY_VIT, **fields})


def test_a_config_that_does_not_describe_the_checkpoint_is_refused(tmp_path):
    options_model(OPTIONS["dinov3 rotary"]).save_pretrained(tmp_path / "model")
    HfViTModel.from_pretrained(tmp_path / "model")
    for override, named in (
        (dict(rope_theta=10000.0), "rope_theta: checkpoint 100.0, config 10000.0"),
        (dict(norm_type="rms_norm"), "norm_type: checkpoint 'layer_norm', config 'rms_norm'"),
        (dict(mlp_type="swiglu"), "mlp_type"),
        (dict(num_register_tokens=4), "num_register_tokens: checkpoint 2, config 4"),
        (dict(num_register_tokens=0), "num_register_tokens: checkpoint 2, config 0"),
    ):
        with pytest.raises(CheckpointMismatchError, match=named):
            HfViTForImageClassification.from_pretrained(tmp_path / "model", **override)


@pytest.mark.parametrize("architecture, model_args, named", [
    ("vit_base_patch16_rope_mixed_224", dict(depth=1), "RotaryEmbeddingMixed rotary embeddings"),
    ("vit_small_patch16_dinov3", dict(depth=1, num_kv_heads=3, qkv_fused=False, attn_type="rope"), "grouped-query"),
    ("vit_pe_spatial_tiny_patch16_512", dict(depth=1), r"no final norm \(final_norm=False\)"),
    ("naflexvit_base_patch16_siglip", dict(depth=1), r"\(NaFlexVit\) is not a model hf_vit converts"),
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


def test_a_siglip2_naflex_checkpoint_is_refused_by_name():
    from transformers import Siglip2Config, Siglip2Model

    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    vision = dict(**TRANSFORMERS_SMALL, patch_size=16, num_patches=16)
    reference = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    with pytest.raises(ValueError, match="'siglip2_vision_model' \\(SigLIP 2's NaFlex tower"):
        from_transformers(reference.config.to_dict(), reference.state_dict())
