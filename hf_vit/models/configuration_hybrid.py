"""Configuration of the hybrid CNN + transformer (model_type `hf_vit_hybrid`)."""

from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from .configuration_utils import PresetsMixin
from .configuration_vit import ViTEncoderConfig

# A small basic-block ResNet for 32 px images: the stem (stride 4) and one stage leave an 8x8 grid, the same 64
# tokens as the 32 px ViT's 4 px patches. Backbones end at the tapped stage: later stages would run for nothing.
SMALL_RESNET_32 = dict(
    model_type="resnet", embedding_size=32, hidden_sizes=[32], depths=[1], layer_type="basic", out_features=["stage1"]
)


def _encoder(hidden_size: int, depth: int, heads: int, image_size: int) -> dict:
    """The transformer's fields of a hybrid preset (MLP 4x the width)."""
    return dict(
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        image_size=image_size,
    )


HYBRID_PRESETS = {
    # The article's HybridViT: ResNet-50 cut after its last stage (224 px -> 7x7x2048, 49 + 1 tokens), d_model 768.
    "vit-hybrid-resnet50-224": dict(
        backbone_config=dict(model_type="resnet", out_features=["stage4"]),
        **_encoder(768, 6, 12, image_size=224),
    ),
    # ResNet-18's first three stages (stride 16, 14x14 tokens at 224 px) under a ViT-S/16-sized encoder.
    "vit-hybrid-resnet18-224": dict(
        backbone_config=dict(
            model_type="resnet",
            layer_type="basic",
            depths=[2, 2, 2],
            hidden_sizes=[64, 128, 256],
            out_features=["stage3"],
        ),
        **_encoder(384, 12, 6, image_size=224),
    ),
    # The article's CIFAR encoder (d_model 128, 4 heads, 4 layers, d_ff 512) on the small ResNet above.
    "vit-hybrid-resnet-tiny-32": dict(
        backbone_config=SMALL_RESNET_32,
        **_encoder(128, 4, 4, image_size=32),
    ),
}


class HfViTHybridConfig(PresetsMixin, ViTEncoderConfig):
    r"""Configuration of [`HfViTHybridModel`] and [`HfViTHybridForImageClassification`]: every `ViTEncoderConfig`
    field (image size, encoder width and depth, pooling, ...), plus the CNN backbone. Defaults give the article's
    hybrid: ResNet-50 to its last stage, then 6 blocks of width 768.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, defaults to ResNet-50 with `out_features=["stage4"]`): the
            architecture of the backbone, any model type `AutoBackbone` knows (resnet, bit, convnext, hf_swin, ...).
            Its `out_features` names the one stage whose feature map becomes the tokens.
        backbone (`str`, *optional*): a checkpoint (directory or Hub id) of the backbone. Without `backbone_config`
            its configuration is used (tapping its last stage); with `use_pretrained_backbone` its weights
            initialise a fresh model.
        use_pretrained_backbone (`bool`, defaults to `False`): load the weights of `backbone` when the model is built
            from this config (`from_pretrained` of a saved hybrid loads the saved weights instead).
        freeze_backbone (`bool`, defaults to `False`): keep the backbone fixed: no gradients, and its BatchNorm
            statistics stay as they are (the backbone stays in eval mode).
    """

    model_type = "hf_vit_hybrid"
    presets: ClassVar[dict] = HYBRID_PRESETS
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(AutoConfig, model_type="resnet", init_kwargs={"out_features": ["stage4"]})
    }

    num_hidden_layers: int = 6
    backbone_config: dict | PreTrainedConfig | None = None
    backbone: str | None = None
    use_pretrained_backbone: bool = False
    freeze_backbone: bool = False

    def __post_init__(self, **kwargs):
        if self.backbone_config is None and self.backbone is not None:
            self.backbone_config = AutoConfig.from_pretrained(self.backbone)
        super().__post_init__(**kwargs)
        backbone_config = self.backbone_config
        if type(backbone_config) not in MODEL_FOR_BACKBONE_MAPPING:
            raise ValueError(
                f"backbone_config: model_type {backbone_config.model_type!r} has no AutoBackbone class; use one that "
                "has (resnet, bit, convnext, hf_swin, ...)"
            )
        if len(backbone_config.out_features) != 1:
            raise ValueError(
                f"backbone_config.out_features must name exactly one stage to turn into tokens, got "
                f"{backbone_config.out_features} (stages: {backbone_config.stage_names})"
            )
        if backbone_config.num_channels != self.num_channels:
            raise ValueError(
                f"num_channels ({self.num_channels}) differs from backbone_config.num_channels "
                f"({backbone_config.num_channels})"
            )
        if self.use_pretrained_backbone and self.backbone is None:
            raise ValueError("use_pretrained_backbone=True needs `backbone`, the checkpoint to load the weights from")


__all__ = ["HYBRID_PRESETS", "HfViTHybridConfig"]
