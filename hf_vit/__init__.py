"""hf_vit: Vision Transformers as first-class Hugging Face transformers models.

Importing the package registers every family with the Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification`, `AutoImageProcessor` (and `AutoBackbone` for Swin) resolve the `hf_*` model
types, and marks the classes
for remote code so that `save_pretrained` writes `auto_map` and copies the modeling files into the checkpoint.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ViTImageProcessor,
)

from .configuration_deit import DEIT_PRESETS, HfDeiTConfig
from .configuration_hybrid import HYBRID_PRESETS, HfViTHybridConfig
from .configuration_swin import SWIN_PRESETS, HfSwinConfig
from .configuration_vit import VIT_PRESETS, HfViTConfig
from .modeling_deit import HfDeiTForImageClassification, HfDeiTModel
from .modeling_hybrid import HfViTHybridForImageClassification, HfViTHybridModel
from .modeling_swin import HfSwinBackbone, HfSwinForImageClassification, HfSwinModel
from .modeling_vit import HfViTForImageClassification, HfViTModel, HfViTPreTrainedModel

__version__ = "0.1.0"

FAMILIES = {
    # model_type: (config, base model, classifier)
    "hf_vit": (HfViTConfig, HfViTModel, HfViTForImageClassification),
    "hf_deit": (HfDeiTConfig, HfDeiTModel, HfDeiTForImageClassification),
    "hf_vit_hybrid": (HfViTHybridConfig, HfViTHybridModel, HfViTHybridForImageClassification),
    "hf_swin": (HfSwinConfig, HfSwinModel, HfSwinForImageClassification),
}


def _register(config_class, base_model_class, classifier_class) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, base_model_class, exist_ok=True)
    AutoModelForImageClassification.register(config_class, classifier_class, exist_ok=True)
    AutoImageProcessor.register(config_class, ViTImageProcessor, exist_ok=True)
    config_class.register_for_auto_class()
    base_model_class.register_for_auto_class("AutoModel")
    classifier_class.register_for_auto_class("AutoModelForImageClassification")


for _classes in FAMILIES.values():
    _register(*_classes)
AutoBackbone.register(HfSwinConfig, HfSwinBackbone, exist_ok=True)
HfSwinBackbone.register_for_auto_class("AutoBackbone")

__all__ = [
    "DEIT_PRESETS",
    "FAMILIES",
    "HfDeiTConfig",
    "HfDeiTForImageClassification",
    "HfDeiTModel",
    "HYBRID_PRESETS",
    "HfViTHybridConfig",
    "HfViTHybridForImageClassification",
    "HfViTHybridModel",
    "HfSwinBackbone",
    "HfSwinConfig",
    "HfSwinForImageClassification",
    "HfSwinModel",
    "SWIN_PRESETS",
    "VIT_PRESETS",
    "HfViTConfig",
    "HfViTForImageClassification",
    "HfViTModel",
    "HfViTPreTrainedModel",
]
