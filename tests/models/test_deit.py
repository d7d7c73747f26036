"""DeiT: the distillation token and losses, teacher distillation through the Trainer, the data-efficient recipe."""

import pytest
import timm
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
)

from hf_vit import HfDeiTConfig, HfDeiTForImageClassification, HfDeiTModel
from hf_vit.interop.key_maps import TIMM_VIT_RULES, TRANSFORMERS_VIT_RULES, load_converted_state_dict, rename_keys

from conftest import SMALL_VIT, randomize

SMALL = SMALL_VIT


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_distillation_losses_match_the_formulas(tiny_deit_config, distillation_type):
    tiny_deit_config.distillation_type, tiny_deit_config.distillation_alpha = distillation_type, 0.3
    tiny_deit_config.distillation_tau = 2.0
    model = randomize(HfDeiTForImageClassification(tiny_deit_config)).train()
    torch.manual_seed(0)
    pixels, labels, teacher = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 4, 2]), torch.randn(4, 5) * 3
    out = model(pixels, labels=labels, teacher_logits=teacher)
    cls, dist = out.cls_logits, out.distillation_logits
    label_term = -torch.log_softmax(cls, -1)[torch.arange(4), labels].mean()
    if distillation_type == "hard":
        distill_term = -torch.log_softmax(dist, -1)[torch.arange(4), teacher.argmax(-1)].mean()
    else:
        p_teacher, log_p_student = torch.softmax(teacher / 2, -1), torch.log_softmax(dist / 2, -1)
        distill_term = (p_teacher * (torch.log(p_teacher) - log_p_student)).sum() / 4 * 2**2
    torch.testing.assert_close(out.loss, 0.7 * label_term + 0.3 * distill_term)


def test_without_a_teacher_both_heads_learn_from_the_labels_including_soft_ones(tiny_deit_config):
    model = randomize(HfDeiTForImageClassification(tiny_deit_config))
    pixels = torch.randn(3, 3, 32, 32)
    soft = torch.softmax(torch.randn(3, 5), -1)
    out = model(pixels, labels=soft)
    soft_ce = lambda logits: -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(out.loss, 0.5 * soft_ce(out.cls_logits) + 0.5 * soft_ce(out.distillation_logits))
    # the article's code trained the CLS head against zeros; here it follows the labels
    assert not torch.allclose(out.loss, model(pixels, labels=torch.zeros(3, dtype=torch.long)).loss)


def test_inference_averages_both_heads_and_bad_combinations_fail(tiny_deit_config):
    model = randomize(HfDeiTForImageClassification(tiny_deit_config))
    out = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    assert out.loss is None
    with pytest.raises(ValueError, match="teacher_logits need labels"):
        model(torch.randn(2, 3, 32, 32), teacher_logits=torch.randn(2, 5))
    tiny_deit_config.distillation_type = "none"
    with pytest.raises(ValueError, match="distillation_type='none'"):
        HfDeiTForImageClassification(tiny_deit_config)(
            torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]), teacher_logits=torch.randn(2, 5)
        )


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(distillation_type="kl"), "distillation_type"),
        (dict(distillation_alpha=1.5), "distillation_alpha"),
        (dict(distillation_tau=0), "distillation_tau"),
        (dict(pooling="mean"), "pooling"),
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
    ],
)
def test_invalid_deit_config_names_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        HfDeiTConfig(**fields)


def test_base_model_has_two_prefix_tokens_and_resamples_around_them(tiny_deit_config):
    model = randomize(HfDeiTModel(tiny_deit_config))
    assert model(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 2 + 16, 32)
    assert model(torch.randn(1, 3, 48, 32), interpolate_pos_encoding=True).last_hidden_state.shape == (1, 2 + 24, 32)


def test_transformers_deit_with_teacher_parity_at_224_and_at_a_resampled_size():
    reference = randomize(DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL, layer_norm_eps=1e-12)))
    ours = HfDeiTForImageClassification(HfDeiTConfig(**SMALL, layer_norm_eps=1e-12)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TRANSFORMERS_VIT_RULES, base="deit"))
    with torch.no_grad():
        for shape, interpolate in (((2, 3, 224, 224), False), ((2, 3, 256, 288), True)):
            pixels = torch.randn(shape)
            expected = reference(pixels, interpolate_pos_encoding=interpolate)
            got = ours(pixels, interpolate_pos_encoding=interpolate)
            assert expected.logits.std() > 0.1
            torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.cls_logits, expected.cls_logits, atol=1e-4, rtol=0)


def test_timm_distilled_deit_parity():
    reference = randomize(timm.create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=10))
    reference.set_distilled_training(False)
    ours = HfDeiTForImageClassification(HfDeiTConfig(**SMALL, interpolation_antialias=True)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TIMM_VIT_RULES, base="deit"))
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixels)
        assert expected.std() > 0.1
        torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)
