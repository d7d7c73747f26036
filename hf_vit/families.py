"""The four families, each declared once: its classes (the presets are its configuration's, its weight-decay and
layer groups its models'), the preset `finetune.py` trains by default, its model card, and the checkpoints it
converts from. Importing this module registers them (`registry.register`); `import hf_vit` does."""

from .interop.key_maps import (
    TIMM_EVA,
    TIMM_NAFLEXVIT,
    TIMM_SWIN,
    TIMM_VIT,
    TRANSFORMERS_AIMV2,
    TRANSFORMERS_CLIP,
    TRANSFORMERS_DINOV2,
    TRANSFORMERS_DINOV2_WITH_REGISTERS,
    TRANSFORMERS_DINOV3,
    TRANSFORMERS_SIGLIP,
    TRANSFORMERS_SIGLIP2,
    TRANSFORMERS_SWIN,
    TRANSFORMERS_VIT,
    TRANSFORMERS_VIT_MAE,
)
from .models.configuration_deit import HfDeiTConfig
from .models.configuration_hybrid import HfViTHybridConfig
from .models.configuration_swin import HfSwinConfig
from .models.configuration_vit import HfViTConfig
from .models.modeling_deit import HfDeiTBackbone, HfDeiTForImageClassification, HfDeiTForPreTraining, HfDeiTModel
from .models.modeling_hybrid import HfViTHybridBackbone, HfViTHybridForImageClassification, HfViTHybridModel
from .models.modeling_swin import (
    HfSwinBackbone,
    HfSwinForImageClassification,
    HfSwinForMaskedImageModeling,
    HfSwinModel,
)
from .models.modeling_vit import (
    HfViTBackbone,
    HfViTForImageClassification,
    HfViTForMaskedImageModeling,
    HfViTForPreTraining,
    HfViTModel,
)
from .registry import Family, register

VIT = register(
    Family(
        HfViTConfig,
        HfViTModel,
        HfViTForImageClassification,
        "vit-cifar-patch4-32",
        "hf_vit.md",
        backbone_class=HfViTBackbone,
        pretraining_class=HfViTForPreTraining,
        masked_image_modeling_class=HfViTForMaskedImageModeling,
        converters={
            "transformers:vit": TRANSFORMERS_VIT,
            "transformers:vit_mae": TRANSFORMERS_VIT_MAE,
            "transformers:dinov2": TRANSFORMERS_DINOV2,
            "transformers:dinov2_with_registers": TRANSFORMERS_DINOV2_WITH_REGISTERS,
            "transformers:dinov3_vit": TRANSFORMERS_DINOV3,
            "transformers:aimv2_vision_model": TRANSFORMERS_AIMV2,
            "transformers:clip_vision_model": TRANSFORMERS_CLIP,
            "transformers:siglip_vision_model": TRANSFORMERS_SIGLIP,
            "transformers:siglip2_vision_model": TRANSFORMERS_SIGLIP2,
            "timm:VisionTransformer": TIMM_VIT,
            "timm:Eva": TIMM_EVA,
            "timm:NaFlexVit": TIMM_NAFLEXVIT,
        },
    )
)

DEIT = register(
    Family(
        HfDeiTConfig,
        HfDeiTModel,
        HfDeiTForImageClassification,
        "deit-cifar-patch4-32",
        "hf_deit.md",
        backbone_class=HfDeiTBackbone,
        pretraining_class=HfDeiTForPreTraining,
        converters={"transformers:deit": TRANSFORMERS_VIT, "timm:VisionTransformerDistilled": TIMM_VIT},
    )
)

HYBRID = register(
    Family(
        HfViTHybridConfig,
        HfViTHybridModel,
        HfViTHybridForImageClassification,
        "vit-hybrid-resnet-tiny-32",
        "hf_vit_hybrid.md",
        backbone_class=HfViTHybridBackbone,
    )
)

SWIN = register(
    Family(
        HfSwinConfig,
        HfSwinModel,
        HfSwinForImageClassification,
        "swin-cifar-patch2-window4-32",
        "hf_swin.md",
        backbone_class=HfSwinBackbone,
        masked_image_modeling_class=HfSwinForMaskedImageModeling,
        converters={"transformers:swin": TRANSFORMERS_SWIN, "timm:SwinTransformer": TIMM_SWIN},
    )
)
