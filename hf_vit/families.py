"""The family registry: what each hf_vit family is, declared once.

    FAMILIES[model_type] -> Family: config, base model, classifier, backbone, default preset, card, converters

`finetune`, `convert`, the card writer and the benchmark read it. Importing this module registers every family
with transformers' Auto classes and marks the classes for remote code, so `save_pretrained` writes `auto_map` and
copies the code files into the checkpoint.
"""

from dataclasses import dataclass, field

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ViTImageProcessor,
    ViTImageProcessorPil,
)

from .configuration_deit import HfDeiTConfig
from .configuration_hybrid import HfViTHybridConfig
from .configuration_swin import HfSwinConfig
from .configuration_vit import HfViTConfig
from .key_maps import (
    TIMM_SWIN, TIMM_VIT, TRANSFORMERS_DINOV2, TRANSFORMERS_DINOV2_WITH_REGISTERS, TRANSFORMERS_SWIN, TRANSFORMERS_VIT, KeyMap,
)  # fmt: skip
from .modeling_deit import HfDeiTBackbone, HfDeiTForImageClassification, HfDeiTModel
from .modeling_hybrid import HfViTHybridBackbone, HfViTHybridForImageClassification, HfViTHybridModel
from .modeling_swin import HfSwinBackbone, HfSwinForImageClassification, HfSwinModel
from .modeling_vit import HfViTBackbone, HfViTForImageClassification, HfViTModel


@dataclass(frozen=True)
class Family:
    """One model family: its classes, the preset `finetune.py --model_type` trains by default, its model card
    template (in `model_cards/`), and the source architectures it converts from (`"transformers:<model_type>"` or
    `"timm:<class name>"` -> key map)."""

    config_class: type
    base_model_class: type
    classifier_class: type
    default_preset: str
    card_template: str
    backbone_class: type | None = None
    converters: dict[str, KeyMap] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def config(self, preset: str | None = None, **overrides):
        """The config of `preset` (default: `default_preset`) with `overrides` applied."""
        return self.config_class.from_preset(preset or self.default_preset, **overrides)


FAMILIES = {
    family.model_type: family
    for family in (
        Family(
            HfViTConfig, HfViTModel, HfViTForImageClassification, "vit-cifar-patch4-32", "hf_vit.md",
            backbone_class=HfViTBackbone,
            converters={
                "transformers:vit": TRANSFORMERS_VIT, "transformers:dinov2": TRANSFORMERS_DINOV2,
                "transformers:dinov2_with_registers": TRANSFORMERS_DINOV2_WITH_REGISTERS, "timm:VisionTransformer": TIMM_VIT,
            },
        ),
        Family(
            HfDeiTConfig, HfDeiTModel, HfDeiTForImageClassification, "deit-cifar-patch4-32", "hf_deit.md",
            backbone_class=HfDeiTBackbone,
            converters={"transformers:deit": TRANSFORMERS_VIT, "timm:VisionTransformerDistilled": TIMM_VIT},
        ),
        Family(
            HfViTHybridConfig, HfViTHybridModel, HfViTHybridForImageClassification, "vit-hybrid-resnet-tiny-32",
            "hf_vit_hybrid.md", backbone_class=HfViTHybridBackbone,
        ),
        Family(
            HfSwinConfig, HfSwinModel, HfSwinForImageClassification, "swin-cifar-patch2-window4-32", "hf_swin.md",
            backbone_class=HfSwinBackbone,
            converters={"transformers:swin": TRANSFORMERS_SWIN, "timm:SwinTransformer": TIMM_SWIN},
        ),
    )
}  # fmt: skip


def family_of(model_type: str) -> Family:
    """The family of an hf_vit model type; a clear error for anything else."""
    if model_type not in FAMILIES:
        raise ValueError(f"{model_type!r} is not an hf_vit model type; choose one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def converter_for(source: str) -> tuple[Family, KeyMap] | None:
    """The family and key map that convert `source` ("transformers:vit", "timm:SwinTransformer", ...), or None."""
    for family in FAMILIES.values():
        if source in family.converters:
            return family, family.converters[source]
    return None


def register(family: Family) -> None:
    """Make the Auto classes resolve the family's model type, and let checkpoints carry its code."""
    config_class = family.config_class
    AutoConfig.register(family.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, family.base_model_class, exist_ok=True)
    AutoModelForImageClassification.register(config_class, family.classifier_class, exist_ok=True)
    # Both backends: registered as one (positional) class, transformers files it under "pil", looks for the
    # default "torchvision" first, and warns on every load that it fell back.
    AutoImageProcessor.register(
        config_class, image_processor_classes={"torchvision": ViTImageProcessor, "pil": ViTImageProcessorPil}, exist_ok=True
    )
    config_class.register_for_auto_class()
    family.base_model_class.register_for_auto_class("AutoModel")
    family.classifier_class.register_for_auto_class("AutoModelForImageClassification")
    if family.backbone_class is not None:
        AutoBackbone.register(config_class, family.backbone_class, exist_ok=True)
        family.backbone_class.register_for_auto_class("AutoBackbone")


for _family in FAMILIES.values():
    register(_family)
