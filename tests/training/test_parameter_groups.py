"""Parameter groups: layer-wise learning-rate decay against timm's `param_groups_layer_decay`, the backbone's own
learning rate, and what takes no weight decay."""

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay
from transformers import TrainingArguments, pipeline

from hf_vit import (
    HfSwinConfig,
    HfSwinForImageClassification,
    HfViTConfig,
    HfViTForImageClassification,
    HfViTHybridConfig,
    HfViTHybridForImageClassification,
)
from hf_vit.data import load_digits_splits
from hf_vit.interop.key_maps import rename_keys
from hf_vit.registry import converter_for
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.finetune import finetune, parse_args
from hf_vit.training.recipes import Ingredients
from hf_vit.training.trainer import HfViTTrainer, ImageClassificationTrainer, layer_decay_scales

from conftest import TINY_CLASSIFIER, tiny_hybrid_config

OPTIMIZATION = dict(learning_rate=1e-3, weight_decay=0.05, warmup_steps=0.02)


def test_backbone_learning_rate_gets_its_own_parameter_groups(tmp_path):
    model = HfViTHybridForImageClassification(tiny_hybrid_config())
    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path), **OPTIMIZATION, backbone_learning_rate=1e-5, eval_strategy="no"
    )
    optimizer = ImageClassificationTrainer(model=model, args=args).create_optimizer()
    backbone_ids = {id(p) for p in model.vit.patch_embeddings.backbone.parameters()}
    learning_rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(learning_rates) == sum(1 for _ in model.parameters())  # every parameter, once
    assert all(lr == (1e-5 if key in backbone_ids else 1e-3) for key, lr in learning_rates.items())
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    conv = model.vit.patch_embeddings.backbone.embedder.embedder.convolution.weight
    norm = model.vit.patch_embeddings.backbone.embedder.embedder.normalization.weight
    assert decay[id(conv)] == args.weight_decay and decay[id(norm)] == 0.0


def test_backbone_learning_rate_needs_a_backbone(tmp_path, tiny_vit_config):
    from hf_vit import HfViTForImageClassification

    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path), **OPTIMIZATION, backbone_learning_rate=1e-5, eval_strategy="no"
    )
    with pytest.raises(ValueError, match="backbone_learning_rate needs a model with a CNN backbone"):
        ImageClassificationTrainer(model=HfViTForImageClassification(tiny_vit_config), args=args).create_optimizer()


def test_finetune_trains_a_hybrid_with_a_lower_backbone_learning_rate(tmp_path):
    args = ["--model_type", "hf_vit_hybrid", "--output_dir", str(tmp_path / "run"), "--num_train_epochs", "1",
            "--max_train_samples", "128", "--max_eval_samples", "64", "--per_device_train_batch_size", "64",
            "--backbone_learning_rate", "1e-4", "--disable_tqdm", "true"]  # fmt: skip
    metrics = finetune(*parse_args(args))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    model = HfViTHybridForImageClassification.from_pretrained(tmp_path / "run")
    assert model.config.backbone_config.model_type == "resnet" and model.config.image_size == 32
    classifier = pipeline("image-classification", model=str(tmp_path / "run"))
    assert len(classifier(load_digits_splits()["validation"][0]["image"])) == 5
    card = (tmp_path / "run" / "README.md").read_text()
    assert "resnet to stage1" in card and "backbone learning rate: 0.0001" in card and "$" not in card.replace("${", "")


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


TINY_SWIN = dict(
    image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4, num_labels=3
)


def test_swin_relative_position_bias_tables_and_tokens_take_no_weight_decay(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    swin = HfSwinForImageClassification(HfSwinConfig(**TINY_SWIN, use_absolute_embeddings=True))
    decayed = HfViTTrainer(model=swin, args=args).get_decay_parameter_names(swin)
    assert not [name for name in decayed if "relative_position_bias_table" in name or "position_embeddings" in name]
    assert "swin.stages.0.blocks.0.attention.qkv.weight" in decayed
    vit = HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER, num_register_tokens=2))
    decayed = HfViTTrainer(model=vit, args=args).get_decay_parameter_names(vit)
    assert not [name for name in decayed if name.startswith("vit.embeddings.")]
    assert "vit.encoder.layers.0.mlp.fc1.weight" in decayed
