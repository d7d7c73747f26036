"""What checkpoints carry: the configurations and models of the four families, and the blocks they share. Every file
here imports only the others, torch and transformers, so that `save_pretrained` can copy them into a checkpoint."""

from .configuration_deit import DEIT_PRESETS, HfDeiTConfig
from .configuration_hybrid import HYBRID_PRESETS, HfViTHybridConfig
from .configuration_swin import SWIN_PRESETS, HfSwinConfig
from .configuration_vit import VIT_PRESETS, HfViTConfig
from .modeling_deit import HfDeiTBackbone, HfDeiTForImageClassification, HfDeiTForPreTraining, HfDeiTModel
from .modeling_hybrid import HfViTHybridBackbone, HfViTHybridForImageClassification, HfViTHybridModel
from .modeling_swin import HfSwinBackbone, HfSwinForImageClassification, HfSwinForMaskedImageModeling, HfSwinModel
from .modeling_vit import (
    HfViTBackbone,
    HfViTForImageClassification,
    HfViTForMaskedImageModeling,
    HfViTForPreTraining,
    HfViTModel,
    HfViTPreTrainedModel,
)

__all__ = [
    "DEIT_PRESETS",
    "HYBRID_PRESETS",
    "SWIN_PRESETS",
    "VIT_PRESETS",
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
]
