"""The later ViTs' options (registers, LayerScale, qk-norm, grid-only position embeddings, CLS + mean and attention
pooling) and the checkpoints that use them: timm's DINOv2, DINOv2 with registers, DeiT III and SigLIP, transformers'
Dinov2 and Dinov2WithRegisters, each converted from random weights with logit parity at two sizes."""

import copy
import logging

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
)

from hf_vit import HfDeiTConfig, HfDeiTForImageClassification, HfViTConfig, HfViTForImageClassification
from hf_vit.interop.convert import convert_checkpoint, from_transformers
from hf_vit.models.configuration_utils import CheckpointMismatchError
from hf_vit.training.finetune import finetune, parse_args

from conftest import TINY_VIT, randomize
from test_convert import assert_same_logits, save_timm
from test_ecosystem import assert_loads_as_remote_code
from test_finetune import make_imagefolder

TINY = {**TINY_VIT, "num_labels": 5}
OPTIONS = {
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


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
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
    model = classifier(OPTIONS["everything"])
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


TIMM_SOURCES = {
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
}


@pytest.mark.parametrize("architecture, model_args, expected", TIMM_SOURCES.values(), ids=TIMM_SOURCES.keys())
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
