"""hf_vit: Vision Transformers as first-class Hugging Face transformers models.

Importing the package registers every family (`families.FAMILIES`) with the Auto classes, so `AutoConfig`,
`AutoModel`, `AutoModelForImageClassification`, `AutoImageProcessor`, `AutoBackbone`, `AutoModelForPreTraining`
(MAE) and `AutoModelForMaskedImageModeling` (SimMIM) resolve the `hf_*` model types, and checkpoints carry their
code.
"""

from .configuration_deit import DEIT_PRESETS, HfDeiTConfig
from .configuration_hybrid import HYBRID_PRESETS, HfViTHybridConfig
from .configuration_swin import SWIN_PRESETS, HfSwinConfig
from .configuration_vit import VIT_PRESETS, HfViTConfig
from .families import FAMILIES, Family
from .modeling_deit import HfDeiTBackbone, HfDeiTForImageClassification, HfDeiTForPreTraining, HfDeiTModel
from .modeling_hybrid import HfViTHybridBackbone, HfViTHybridForImageClassification, HfViTHybridModel
from .modeling_swin import HfSwinBackbone, HfSwinForImageClassification, HfSwinForMaskedImageModeling, HfSwinModel
from .modeling_vit import (
    HfViTBackbone, HfViTForImageClassification, HfViTForMaskedImageModeling, HfViTForPreTraining, HfViTModel,
    HfViTPreTrainedModel,
)  # fmt: skip

__version__ = "0.1.0"

__all__ = [
    "DEIT_PRESETS",
    "FAMILIES",
    "Family",
    "HYBRID_PRESETS",
    "HfDeiTBackbone",
    "HfDeiTConfig",
    "HfDeiTForImageClassification",
    "HfDeiTForPreTraining",
    "HfDeiTModel",
    "HfSwinBackbone",
    "HfSwinConfig",
    "HfSwinForImageClassification",
    "HfSwinForMaskedImageModeling",
    "HfSwinModel",
    "HfViTBackbone",
    "HfViTConfig",
    "HfViTForImageClassification",
    "HfViTForMaskedImageModeling",
    "HfViTForPreTraining",
    "HfViTHybridBackbone",
    "HfViTHybridConfig",
    "HfViTHybridForImageClassification",
    "HfViTHybridModel",
    "HfViTModel",
    "HfViTPreTrainedModel",
    "SWIN_PRESETS",
    "VIT_PRESETS",
]
