"""The family registry: what an hf_vit family is, and where the jobs look it up.

Family                   config, base model, classifier, backbone, pretraining classes, default preset, card,
                         converters
register(family)         -> FAMILIES[model_type], the Auto classes and remote code (`hf_vit.families` declares
                         the four families and registers them when hf_vit is imported)
family_of(model_type) / converter_for("timm:SwinTransformer")   the lookups
"""

from dataclasses import dataclass, field

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForPreTraining,
    ViTImageProcessor,
    ViTImageProcessorPil,
)


@dataclass(frozen=True)
class Family:
    """One model family: its classes, the preset `finetune.py --model_type` trains by default, its model card
    template (in `model_cards/`), and the source architectures it converts from (`"transformers:<model_type>"` or
    `"timm:<class name>"` -> key map). Its masked-image-modeling pretraining: `pretraining_class` (MAE,
    `AutoModelForPreTraining`) and `masked_image_modeling_class` (SimMIM, `AutoModelForMaskedImageModeling`)."""

    config_class: type
    base_model_class: type
    classifier_class: type
    default_preset: str
    card_template: str
    backbone_class: type | None = None
    pretraining_class: type | None = None
    masked_image_modeling_class: type | None = None
    converters: dict = field(default_factory=dict)  # source -> interop.key_maps.KeyMap

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    def model_class_for(self, architecture: str | None) -> type:
        """The class that holds a source architecture's weights: the pretraining class for a `...ForPreTraining`
        (MAE), the masked-image-modeling class for a `...ForMaskedImageModeling` (SimMIM), else the classifier."""
        for suffix, model_class in (
            ("ForPreTraining", self.pretraining_class),
            ("ForMaskedImageModeling", self.masked_image_modeling_class),
        ):
            if (architecture or "").endswith(suffix):
                if model_class is None:
                    raise ValueError(
                        f"{architecture} has no {self.model_type} counterpart (hf_vit pretrains "
                        f"{self.model_type} with {self.pretraining_methods or 'nothing'})"
                    )
                return model_class
        return self.classifier_class

    @property
    def pretraining_methods(self) -> list[str]:
        """The masked-image-modeling methods the family has: "mae" and / or "simmim"."""
        return [
            name
            for name, model_class in (("mae", self.pretraining_class), ("simmim", self.masked_image_modeling_class))
            if model_class is not None
        ]

    def config(self, preset: str | None = None, **overrides):
        """The config of `preset` (default: `default_preset`) with `overrides` applied."""
        return self.config_class.from_preset(preset or self.default_preset, **overrides)


FAMILIES: dict[str, "Family"] = {}  # model_type -> Family, filled by `register` (hf_vit.families)


def family_of(model_type: str) -> Family:
    """The family of an hf_vit model type; a clear error for anything else."""
    if model_type not in FAMILIES:
        raise ValueError(f"{model_type!r} is not an hf_vit model type; choose one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def converter_for(source: str) -> tuple[Family, object] | None:
    """The family and key map that convert `source` ("transformers:vit", "timm:SwinTransformer", ...), or None."""
    for family in FAMILIES.values():
        if source in family.converters:
            return family, family.converters[source]
    return None


def register(family: Family) -> Family:
    """Add `family` to `FAMILIES`, make the Auto classes resolve its model type, and let checkpoints carry its code."""
    FAMILIES[family.model_type] = family
    config_class = family.config_class
    AutoConfig.register(family.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, family.base_model_class, exist_ok=True)
    AutoModelForImageClassification.register(config_class, family.classifier_class, exist_ok=True)
    # Both backends: registered as one (positional) class, transformers files it under "pil", looks for the
    # default "torchvision" first, and warns on every load that it fell back.
    AutoImageProcessor.register(
        config_class,
        image_processor_classes={"torchvision": ViTImageProcessor, "pil": ViTImageProcessorPil},
        exist_ok=True,
    )
    config_class.register_for_auto_class()
    family.base_model_class.register_for_auto_class("AutoModel")
    family.classifier_class.register_for_auto_class("AutoModelForImageClassification")
    for auto_class, model_class in (
        (AutoBackbone, family.backbone_class),
        (AutoModelForPreTraining, family.pretraining_class),
        (AutoModelForMaskedImageModeling, family.masked_image_modeling_class),
    ):
        if model_class is not None:
            auto_class.register(config_class, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_class.__name__)
    return family
