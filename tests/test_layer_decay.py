"""Layer-wise learning-rate decay: each parameter's scale against timm's `param_groups_layer_decay`, and the
optimizer the Trainer builds from it."""

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

from hf_vit import HfViTHybridConfig, HfViTHybridForImageClassification
from hf_vit.interop.key_maps import rename_keys
from hf_vit.registry import converter_for
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.recipes import Ingredients
from hf_vit.training.trainer import ImageClassificationTrainer, layer_decay_scales

DECAY = 0.65


def timm_scales(reference: torch.nn.Module) -> dict[str, float]:
    """{timm parameter name: lr_scale} from timm's own layer-decay parameter groups."""
    names = {id(param): name for name, param in reference.named_parameters()}
    groups = param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=DECAY)
    return {names[id(param)]: group["lr_scale"] for group in groups for param in group["params"]}


@pytest.mark.parametrize(
    "architecture, model_args",
    [
        ("vit_tiny_patch16_224", dict(depth=3)),
        ("deit_tiny_distilled_patch16_224", dict(depth=3)),
        ("vit_small_patch14_reg4_dinov2", dict(depth=3, img_size=56)),  # registers, LayerScale
        ("vit_base_patch16_siglip_224", dict(depth=3, embed_dim=96, num_heads=3)),  # attention pooling above the norm
        ("swin_tiny_patch4_window7_224", dict(embed_dim=24, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4))),
    ],
)
def test_every_parameter_gets_timms_layer_decay_scale(architecture, model_args):
    with torch.device("meta"):
        reference = timm.create_model(architecture, num_classes=10, **model_args)
    family, key_map = next(filter(None, (converter_for(f"timm:{cls.__name__}") for cls in type(reference).__mro__)))
    with torch.device("meta"):
        model = family.classifier_class(family.config_class(**key_map.config_fields(reference), num_labels=10))
    expected = timm_scales(reference)
    ours_to_timm = rename_keys({name: name for name in expected}, key_map.rules, base=model.base_model_prefix)
    ours = layer_decay_scales(model, DECAY)
    assert set(ours) == set(ours_to_timm)
    for name, timm_name in ours_to_timm.items():
        assert ours[name] == pytest.approx(expected[timm_name]), (name, timm_name)
    assert len(set(ours.values())) == len(set(expected.values())) > 3


def test_the_trainer_splits_its_weight_decay_groups_by_layer_and_keeps_the_backbone_lowest(tmp_path):
    config = HfViTHybridConfig.from_preset("vit-hybrid-resnet-tiny-32", num_hidden_layers=2, num_labels=3)
    model = HfViTHybridForImageClassification(config)
    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05, warmup_steps=0, eval_strategy="no"
    )
    optimizer = ImageClassificationTrainer(
        model=model, args=args, ingredients=Ingredients.off(layer_decay=0.5)
    ).create_optimizer()
    rate = {id(param): group["lr"] for group in optimizer.param_groups for param in group["params"]}
    decay = {id(param): group["weight_decay"] for group in optimizer.param_groups for param in group["params"]}
    assert len(rate) == sum(1 for _ in model.parameters())  # every parameter, once
    assert {rate[id(param)] for param in model.backbone_parameters()} == {1e-3 * 0.5**3}  # 2 blocks + 2 - 1
    assert rate[id(model.vit.embeddings.position_embeddings)] == 1e-3 * 0.5**3
    assert rate[id(model.vit.encoder.layers[1].mlp.fc1.weight)] == 1e-3 * 0.5
    assert rate[id(model.vit.layernorm.weight)] == 1e-3 * 0.5  # the final norm goes with the last block, as in timm
    assert rate[id(model.classifier.weight)] == 1e-3
    assert decay[id(model.classifier.weight)] == 0.05 and decay[id(model.classifier.bias)] == 0.0
    with pytest.raises(ValueError, match="layer_decay must be in"):
        ImageClassificationTrainer(model=model, args=args, ingredients=Ingredients.off(layer_decay=1.5))


def test_layer_decay_needs_transformer_blocks():
    with pytest.raises(ValueError, match="layer_decay needs a model made of transformer blocks; Sequential has none"):
        layer_decay_scales(torch.nn.Sequential(torch.nn.Linear(2, 2)), DECAY)
