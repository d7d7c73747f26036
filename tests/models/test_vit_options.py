"""The options modern ViTs are made of (rotary positions, registers, layer scale, SwiGLU, RMSNorm, pre-norm, attention
pooling): each under eager and SDPA, at other sizes, as remote code; what starts fresh on loading; a checkpoint
loaded under a config that does not describe it is refused."""

import copy

import pytest
import torch

from hf_vit import (
    HfDeiTConfig,
    HfDeiTForImageClassification,
    HfSwinBackbone,
    HfSwinConfig,
    HfSwinForMaskedImageModeling,
    HfSwinModel,
    HfViTBackbone,
    HfViTConfig,
    HfViTForImageClassification,
    HfViTForMaskedImageModeling,
    HfViTForPreTraining,
    HfViTModel,
)
from hf_vit.models.configuration_utils import CheckpointMismatchError

from conftest import TINY_CLASSIFIER, TINY_VIT, assert_loads_as_remote_code, randomize

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


TINY = {**TINY_VIT, "num_labels": 5}


BLOCK_OPTIONS = {
    "registers": dict(num_register_tokens=3),
    "layer scale": dict(layer_scale_init_value=0.1),
    "qk-norm": dict(qk_norm=True),
    "grid-only position embeddings": dict(prefix_position_embeddings=False, num_register_tokens=2),
    "cls_mean pooling": dict(pooling="cls_mean", num_register_tokens=2),
    "map pooling without CLS": dict(pooling="map", class_token=False),
    "everything": dict(
        num_register_tokens=4, layer_scale_init_value=0.1, qk_norm=True, prefix_position_embeddings=False, pooling="map"
    ),
}


def classifier(options, attn_implementation="sdpa", model_class=HfViTForImageClassification):
    config = model_class.config_class(**TINY, **options)
    return randomize(model_class._from_config(config, attn_implementation=attn_implementation), std=0.1)


@pytest.mark.parametrize("options", BLOCK_OPTIONS.values(), ids=BLOCK_OPTIONS.keys())
def test_every_option_under_sdpa_and_eager_checkpointing_and_other_sizes(options):
    eager, sdpa = classifier(options, "eager"), classifier(options, "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    torch.testing.assert_close(eager(pixels).logits, sdpa(pixels).logits, atol=1e-5, rtol=1e-5)
    out = eager(pixels, output_attentions=True, output_hidden_states=True)
    tokens = int(eager.config.class_token) + eager.config.num_register_tokens + 16
    assert out.attentions[0].shape == (2, 4, tokens, tokens) and out.hidden_states[-1].shape == (2, tokens, 32)
    # the same logits when every token of the last block is computed (the prefix-only path, where it applies)
    torch.testing.assert_close(out.logits, eager(pixels).logits)
    # other sizes resample the grid's position embeddings only; the trained size stays exact
    assert sdpa(torch.randn(2, 3, 48, 40), interpolate_pos_encoding=True).logits.shape == (2, 5)
    torch.testing.assert_close(sdpa(pixels, interpolate_pos_encoding=True).logits, sdpa(pixels).logits)
    # gradient checkpointing: the same gradients
    gradients = []
    for checkpointing in (False, True):
        model = copy.deepcopy(sdpa).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(pixels, labels=labels).loss.backward()
        gradients.append([param.grad for param in model.parameters()])
    assert all(grad is not None for grad in gradients[0])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(plain, checkpointed)


def test_registers_have_no_position_embedding_and_layer_scale_starts_at_its_value():
    model = HfViTForImageClassification(HfViTConfig(**TINY, num_register_tokens=3, layer_scale_init_value=1e-5))
    embeddings = model.vit.embeddings
    assert embeddings.register_tokens.shape == (1, 3, 32) and embeddings.register_tokens.std() > 0
    assert embeddings.position_embeddings.shape == (1, 1 + 16, 32)  # CLS + grid, no registers
    assert model.vit.num_prefix_tokens == 4
    assert torch.equal(model.vit.encoder.layers[1].layer_scale2.gamma, torch.full((32,), 1e-5))
    grid_only = HfViTForImageClassification(HfViTConfig(**TINY, prefix_position_embeddings=False))
    assert grid_only.vit.embeddings.position_embeddings.shape == (1, 16, 32)
    grid_only.set_image_size(48)
    assert grid_only.vit.embeddings.position_embeddings.shape == (1, 36, 32)


def test_cls_mean_pooling_reads_the_cls_token_and_the_grid_mean_not_the_registers():
    model = classifier(dict(pooling="cls_mean", num_register_tokens=2))
    assert model.classifier.in_features == 64
    out = model.vit(torch.randn(2, 3, 32, 32))
    tokens = out.last_hidden_state
    torch.testing.assert_close(out.pooler_output, torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], -1))


def test_deit_with_registers_and_layer_scale_keeps_its_two_heads_on_their_tokens():
    model = classifier(
        dict(num_register_tokens=2, layer_scale_init_value=0.1), model_class=HfDeiTForImageClassification
    )
    pixels = torch.randn(2, 3, 32, 32)
    out = model(pixels)
    full = model.deit(pixels).last_hidden_state  # every token, prefix first: CLS, distillation, 2 registers
    torch.testing.assert_close(out.cls_logits, model.classifier(full[:, 0]))
    torch.testing.assert_close(out.distillation_logits, model.distillation_classifier(full[:, 1]))


def test_every_option_loads_as_remote_code(tmp_path):
    model = classifier(BLOCK_OPTIONS["everything"])
    assert_loads_as_remote_code(model, tmp_path / "modern", torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(num_register_tokens=-1), "num_register_tokens must be a non-negative integer, got -1"),
        (dict(num_register_tokens=1.5), "num_register_tokens must be a non-negative integer"),
        (dict(layer_scale_init_value=0.0), "layer_scale_init_value must be positive"),
        (dict(pooling="max"), r"pooling must be one of \['cls', 'mean', 'normalized_mean', 'cls_mean', 'map'\]"),
        (
            dict(class_token=False, pooling="cls_mean"),
            "class_token=False needs pooling='mean', 'normalized_mean' or 'map'",
        ),
    ],
)
def test_bad_option_values_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        HfViTConfig(**TINY, **config)
    with pytest.raises(ValueError, match="pooling must be 'cls' for hf_deit"):
        HfDeiTConfig(**TINY, pooling="map")


TINY_SWIN = dict(
    image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4, num_labels=3
)


def assert_started_as_new(loaded: torch.nn.Module, fresh: torch.nn.Module, missing) -> None:
    """Every weight `from_pretrained` did not find in the checkpoint starts as a new model's does: a constant one
    (ones, zeros) at the same constant, a random one finite and at about the same scale."""
    assert missing, "the test needs weights that the checkpoint lacks"
    fresh_state = fresh.state_dict()
    for name in missing:
        got, expected = loaded.state_dict()[name].float(), fresh_state[name].float()
        assert torch.isfinite(got).all(), f"{name} holds non-finite values"
        if torch.all(expected == expected.flatten()[0]):
            assert torch.all(got == expected.flatten()[0]), f"{name} should start at {expected.flatten()[0]}"
        else:
            ratio = float(got.std() / expected.std())
            assert 0.5 < ratio < 2.0, f"{name}: std {float(got.std()):.3g} vs a new model's {float(expected.std()):.3g}"


@pytest.mark.parametrize(
    "model_class, base_config, added",
    [
        (HfViTBackbone, TINY_CLASSIFIER, dict(feature_pyramid_channels=16)),  # ViTDet's pyramid on a pretrained ViT
        (HfViTForImageClassification, TINY_CLASSIFIER, {}),  # a new classifier head
        (
            HfViTForPreTraining,
            TINY_CLASSIFIER,
            dict(
                decoder_hidden_size=16,
                decoder_num_hidden_layers=1,
                decoder_num_attention_heads=2,
                decoder_intermediate_size=32,
            ),
        ),  # MAE's decoder
        (HfViTForMaskedImageModeling, TINY_CLASSIFIER, {}),  # SimMIM's decoder and mask token
        (HfSwinBackbone, TINY_SWIN, dict(out_features=["stage1", "stage2"])),  # the backbone's norms
        (HfSwinForMaskedImageModeling, TINY_SWIN, {}),
    ],
)
def test_what_a_head_or_option_adds_starts_initialised_on_the_from_pretrained_path(
    tmp_path, model_class, base_config, added
):
    config_class = HfSwinConfig if "Swin" in model_class.__name__ else HfViTConfig
    base = HfSwinModel if config_class is HfSwinConfig else HfViTModel
    base(config_class(**base_config)).save_pretrained(tmp_path / "base")
    loaded, info = model_class.from_pretrained(tmp_path / "base", **added, output_loading_info=True)
    torch.manual_seed(0)
    assert_started_as_new(loaded, model_class(loaded.config), info["missing_keys"])
    pixels = torch.randn(2, 3, 32, 32)
    outputs = loaded.eval()(pixels)
    for tensor in outputs.feature_maps if hasattr(outputs, "feature_maps") else [outputs[0]]:
        assert torch.isfinite(tensor).all()


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
