"""The ViT (`hf_vit.models.modeling_vit`): outputs and losses, sizes, position embeddings, pooling, stochastic depth,
initialisation, the prefix-only last block, the masked key bias."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, AutoModelForImageClassification
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from hf_vit import HfDeiTForImageClassification, HfViTConfig, HfViTForImageClassification, HfViTModel
from hf_vit.models.layers import DropPath
from hf_vit.models.modeling_mim import sincos_position_embeddings

from conftest import TINY_VIT, randomize

TINY_FIELDS = (
    "image_size",
    "patch_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_labels",
)


def test_base_model_outputs_and_shapes(tiny_vit_config):
    model = AutoModel.from_config(tiny_vit_config, attn_implementation="eager").eval()
    assert isinstance(model, HfViTModel)
    out = model(torch.randn(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert isinstance(out, BaseModelOutputWithPooling)
    assert out.last_hidden_state.shape == (2, 1 + 16, 32)  # CLS + (32 / 8) ** 2 patches
    assert out.pooler_output.shape == (2, 32)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2  # embeddings + 2 blocks
    assert out.attentions[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(2, 4, 17))


def test_classifier_output_loss_and_tuple_return(tiny_vit_config):
    model = AutoModelForImageClassification.from_config(tiny_vit_config).eval()
    assert isinstance(model, HfViTForImageClassification)
    pixels, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 4, 2])
    out = model(pixels, labels=labels)
    assert isinstance(out, ImageClassifierOutput) and out.logits.shape == (3, 5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    loss, logits = model(pixels, labels=labels, return_dict=False)
    torch.testing.assert_close(logits, out.logits)


def test_soft_label_distributions_give_soft_target_cross_entropy(tiny_vit_config):
    model = randomize(HfViTForImageClassification(tiny_vit_config))
    pixels = torch.randn(4, 3, 32, 32)
    soft = torch.softmax(torch.randn(4, 5), dim=-1)
    out = model(pixels, labels=soft)
    expected = -(soft * torch.log_softmax(out.logits, -1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)
    one_hot = F.one_hot(torch.tensor([1, 0, 3, 2]), 5).float()
    torch.testing.assert_close(model(pixels, labels=one_hot).loss, model(pixels, labels=one_hot.argmax(-1)).loss)


def test_multi_label_and_regression_follow_problem_type(tiny_vit_config):
    tiny_vit_config.problem_type = "multi_label_classification"
    model = randomize(HfViTForImageClassification(tiny_vit_config))
    pixels, targets = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    out = model(pixels, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    regression = HfViTForImageClassification(
        HfViTConfig(**{**tiny_vit_config.to_dict(), "num_labels": 1, "problem_type": "regression", "id2label": None})
    )
    out = regression.eval()(pixels, labels=torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(), torch.tensor([0.5, -1.0])))


def test_wrong_size_or_channels_name_expected_and_received_shapes(tiny_vit_config):
    model = HfViTModel(tiny_vit_config).eval()
    with pytest.raises(ValueError, match=r"48x48 doesn't match the model's 32x32.*\(1, 3, 32, 32\).*\(1, 3, 48, 48\)"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"1 channels, the model expects num_channels=3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model(torch.randn(1, 3, 36, 36), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"shape \(batch, channels, height, width\)"):
        model(torch.randn(3, 32, 32))


def test_interpolate_pos_encoding_runs_other_sizes_and_keeps_the_trained_grid_exact(tiny_vit_config):
    model = randomize(HfViTModel(tiny_vit_config))
    out = model(torch.randn(2, 3, 64, 40), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape == (2, 1 + 8 * 5, 32)
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        model(pixels).last_hidden_state, model(pixels, interpolate_pos_encoding=True).last_hidden_state
    )


def test_set_image_size_resamples_position_embeddings_for_good(tiny_vit_config, tmp_path):
    model = randomize(HfViTForImageClassification(tiny_vit_config))
    pixels = torch.randn(1, 3, 48, 48)
    expected = model(pixels, interpolate_pos_encoding=True).logits
    model.set_image_size(48)
    assert model.config.image_size == 48 and model.vit.embeddings.position_embeddings.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model(pixels).logits, expected)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(HfViTForImageClassification.from_pretrained(tmp_path).eval()(pixels).logits, expected)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model.set_image_size(50)


def test_mean_pooling_normalises_the_average_of_patch_tokens(tiny_vit_config):
    tiny_vit_config.pooling = "mean"
    model = randomize(HfViTModel(tiny_vit_config))
    out = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    expected = model.layernorm(out.hidden_states[-1][:, 1:].mean(1))
    torch.testing.assert_close(out.pooler_output, expected)


def test_conv_stem_keeps_the_sequence_length(tiny_vit_config):
    tiny_vit_config.patch_embedding_type = "conv_stem"
    model = HfViTModel(tiny_vit_config).eval()
    assert len([m for m in model.patch_embeddings.stem if isinstance(m, torch.nn.Conv2d)]) == 3  # 2 ** 3 = 8
    assert model(torch.randn(2, 3, 32, 32)).last_hidden_state.shape == (2, 17, 32)


def test_stochastic_depth_grows_linearly_and_is_off_in_eval(tiny_vit_config):
    tiny_vit_config.num_hidden_layers, tiny_vit_config.drop_path_rate = 5, 0.2
    model = HfViTModel(tiny_vit_config)
    rates = [layer.drop_path.drop_prob for layer in model.encoder.layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    drop = DropPath(0.5).train()
    out = drop(torch.ones(4000, 3))
    kept = out[:, 0] != 0
    assert 0.4 < kept.float().mean() < 0.6 and torch.all(out[kept] == 2.0)
    assert torch.equal(drop.eval()(torch.ones(5, 3)), torch.ones(5, 3))


def test_initialisation_uses_truncated_normal_position_embeddings(tiny_vit_config):
    tiny_vit_config.hidden_size, tiny_vit_config.num_attention_heads = 256, 4
    model = HfViTModel(tiny_vit_config)
    positions = model.embeddings.position_embeddings
    assert positions.std().item() == pytest.approx(0.88 * 0.02, rel=0.1)  # std of a normal cut at +-2 sigma
    assert positions.abs().max().item() <= 2 * 0.02 + 1e-6  # truncated at two standard deviations


@pytest.mark.parametrize("model_class", [HfViTForImageClassification, HfDeiTForImageClassification])
def test_sincos_position_start_is_maes_table_learnable_and_kept_when_loading(tiny_vit_config, tmp_path, model_class):
    config = model_class.config_class(
        **{name: getattr(tiny_vit_config, name) for name in TINY_FIELDS}, position_embedding_init="sincos"
    )
    model = model_class(config)
    embeddings = model.base_model.embeddings
    prefix = embeddings.num_positioned_prefix  # CLS (and distillation) token: zeros
    assert prefix == (2 if model_class is HfDeiTForImageClassification else 1)
    positions = embeddings.position_embeddings
    torch.testing.assert_close(positions[0, prefix:], sincos_position_embeddings((4, 4), 32))
    assert torch.count_nonzero(positions[0, :prefix]) == 0 and positions.requires_grad
    assert torch.count_nonzero(embeddings.cls_token) > 0  # the tokens keep their truncated-normal start
    with torch.no_grad():
        positions.add_(1.0)  # trained weights are loaded as saved, not restarted at the table
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.base_model.embeddings.position_embeddings, positions)
    with pytest.raises(ValueError, match="position_embedding_init='sincos' needs hidden_size divisible by 4"):
        HfViTConfig(hidden_size=30, num_attention_heads=3, position_embedding_init="sincos")
    with pytest.raises(ValueError, match=r"position_embedding_init must be one of \['trunc_normal', 'sincos'\]"):
        HfViTConfig(position_embedding_init="learned")


def test_xavier_patch_start_is_maes_bound_and_kept_when_loading(tiny_vit_config, tmp_path):
    default = HfViTForImageClassification(tiny_vit_config)
    model = HfViTForImageClassification(HfViTConfig(**tiny_vit_config.to_dict() | {"patch_embedding_init": "xavier"}))
    weight = model.base_model.patch_embeddings.projection.weight  # (hidden 32, 3, 8, 8): a linear map 192 -> 32
    bound = (6 / (3 * 8 * 8 + 32)) ** 0.5  # MAE: xavier_uniform_ over weight.view(32, -1)
    assert 0.9 * bound < weight.abs().max().item() <= bound and weight.std().item() == pytest.approx(
        bound / 3**0.5, rel=0.1
    )
    assert weight.std().item() > 4 * default.base_model.patch_embeddings.projection.weight.std().item()
    with torch.no_grad():
        weight.mul_(0.5)  # trained weights are loaded as saved, not restarted
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(
        HfViTForImageClassification.from_pretrained(tmp_path).base_model.patch_embeddings.projection.weight, weight
    )
    with pytest.raises(ValueError, match=r"patch_embedding_init must be one of \['trunc_normal', 'xavier'\]"):
        HfViTConfig(patch_embedding_init="kaiming")
    with pytest.raises(ValueError, match="patch_embedding_type='conv_stem' has none"):
        HfViTConfig(patch_embedding_type="conv_stem", patch_embedding_init="xavier")


@pytest.mark.parametrize("model_class", [HfViTForImageClassification, HfDeiTForImageClassification])
def test_classifiers_compute_the_last_block_for_the_prefix_tokens_only(tiny_vit_config, model_class):
    config = model_class.config_class(**{key: getattr(tiny_vit_config, key) for key in TINY_FIELDS})
    model = randomize(model_class(config)).train()  # dropout is 0; train mode checks the gradients too
    pixels, labels = torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 0])
    results = []
    for everything in (False, True):  # asking for the hidden states makes the last block compute every token
        model.zero_grad()
        with FlopCounterMode(display=False) as flops:
            out = model(pixels, labels=labels, output_hidden_states=everything)
        out.loss.backward()
        results.append((flops.get_total_flops(), out.logits, [p.grad.clone() for p in model.parameters()]))
    (fast_flops, fast_logits, fast_grads), (full_flops, full_logits, full_grads) = results
    assert fast_flops < 0.8 * full_flops  # 2 blocks: the last one shrinks to its prefix rows
    torch.testing.assert_close(fast_logits, full_logits)
    for fast, full in zip(fast_grads, full_grads):
        torch.testing.assert_close(fast, full)

    encoder = model.base_model
    full = encoder(pixels).last_hidden_state
    prefix = encoder(pixels, prefix_tokens_only=True).last_hidden_state
    assert prefix.shape == (3, encoder.num_prefix_tokens, 32)
    torch.testing.assert_close(prefix, full[:, : encoder.num_prefix_tokens])
    with pytest.raises(ValueError, match="prefix_tokens_only needs pooling='cls' and no output_attentions"):
        encoder(pixels, prefix_tokens_only=True, output_hidden_states=True)


def test_mean_pooling_classifier_keeps_every_token(tiny_vit_config):
    tiny_vit_config.pooling = "mean"
    model = randomize(HfViTForImageClassification(tiny_vit_config)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = model.classifier(model.vit(pixels).pooler_output)
    torch.testing.assert_close(model(pixels).logits, expected)
    with pytest.raises(ValueError, match="got pooling='mean'"):
        model.vit(pixels, prefix_tokens_only=True)


def test_the_masked_key_bias_stays_zero_and_keeps_bf16_activations_under_autocast():
    """DINOv3's masked key bias: q / k / v in the activation dtype under autocast (the bias is masked there, not
    subtracted in fp32 afterwards), and the key third gets exactly no gradient, so it stays zero under AdamW."""
    from hf_vit.models.layers import KeyMaskedLinear

    config = HfViTConfig(**TINY_VIT, num_labels=3, key_bias=False)
    model = HfViTForImageClassification(config)
    attention = model.vit.encoder.layers[0].attention
    assert isinstance(attention.qkv, KeyMaskedLinear)
    dtypes = []
    attention.qkv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert set(dtypes) == {torch.bfloat16}
    for layer in model.vit.encoder.layers:
        _, key_bias, value_bias = layer.attention.qkv.bias.chunk(3)
        assert torch.count_nonzero(key_bias) == 0 and torch.count_nonzero(value_bias) > 0


def test_maes_encoder_starts_at_the_sine_cosine_table():
    from hf_vit import HfViTForPreTraining

    model = HfViTForPreTraining(HfViTConfig(**TINY_VIT))
    embeddings = model.vit.embeddings
    assert torch.allclose(embeddings.position_embeddings, embeddings.sincos_table())
    assert HfViTConfig(**TINY_VIT).position_embedding_init == "trunc_normal"  # the config is not changed for it


def test_a_checkpoint_loaded_with_another_activation_is_refused(tmp_path):
    from hf_vit.models.configuration_utils import CheckpointMismatchError

    HfViTForImageClassification(HfViTConfig(**TINY_VIT, hidden_act="silu")).save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="hidden_act: checkpoint 'silu', config 'gelu'"):
        HfViTForImageClassification.from_pretrained(tmp_path, hidden_act="gelu")
