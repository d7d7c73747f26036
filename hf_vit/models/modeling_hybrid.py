"""The hybrid Vision Transformer: a CNN backbone's feature map, one token per position, under the ViT encoder.

Image -> backbone (any transformers backbone, cut after one stage) -> 1x1 conv to hidden_size -> [CLS] + tokens +
learned position embeddings for the feature-map grid -> pre-norm encoder -> LayerNorm -> head on the CLS token.
The CNN handles edges and textures, where locality matters; attention handles the global relations.
"""

import torch
from torch import nn
from transformers.backbone_utils import load_backbone
from transformers.modeling_utils import get_torch_context_manager_or_global_device
from transformers.utils import logging

from .configuration_hybrid import HfViTHybridConfig
from .configuration_utils import to_2tuple
from .layers import GridEmbedding
from .modeling_vit import HfViTBackbone, HfViTForImageClassification, HfViTModel, HfViTPreTrainedModel

logger = logging.get_logger(__name__)


def load_backbone_weights(backbone: nn.Module, name_or_path: str) -> nn.Module:
    """`backbone`'s class with the weights of a checkpoint (directory or Hub id); any key it lacks is an error."""
    loaded, info = type(backbone).from_pretrained(name_or_path, config=backbone.config, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"The backbone checkpoint {name_or_path!r} does not fit backbone_config: missing "
            f"{sorted(info['missing_keys'])}, mismatched {[key for key, *_ in info['mismatched_keys']]}"
        )
    return loaded


class BackbonePatchEmbedding(GridEmbedding):
    """A transformers backbone cut after one stage, then a 1x1 convolution: each feature-map position is a token.

    (B, C, H, W) -> (B, hidden, h, w), the grid of the tapped stage (7x7 for ResNet-50's last stage at 224 px).
    """

    def __init__(self, config: HfViTHybridConfig):
        super().__init__()
        self.backbone = load_backbone(config)
        stages = config.backbone_config.stage_names
        if stages[-1] != config.backbone_config.out_features[0]:
            logger.warning(
                "The backbone runs stages %s after the tapped %s but their output is never used; end "
                "backbone_config at the tapped stage (shorter depths / hidden_sizes) to save the compute.",
                stages[stages.index(config.backbone_config.out_features[0]) + 1 :],
                config.backbone_config.out_features[0],
            )
        # Built on the meta device, the model is about to receive a checkpoint's weights: no need to fetch these.
        if config.use_pretrained_backbone and get_torch_context_manager_or_global_device() != torch.device("meta"):
            self.backbone = load_backbone_weights(self.backbone, config.backbone)
        self.freeze_backbone = config.freeze_backbone
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.projection = nn.Conv2d(self.backbone.channels[-1], config.hidden_size, kernel_size=1)

    def grid_size(self, image_size) -> tuple[int, int]:
        """The feature-map grid at `image_size`, from a forward pass on the meta device: exact for any backbone's
        strides and paddings, and nothing is computed."""
        with torch.device("meta"):
            probe = type(self.backbone)(self.backbone.config).eval()
            feature_map = probe(torch.empty(1, self.backbone.config.num_channels, *to_2tuple(image_size))).feature_maps[
                -1
            ]
        return tuple(feature_map.shape[-2:])

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone keeps its BatchNorm statistics too
            self.backbone.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(pixel_values).feature_maps[-1])


class HfViTHybridPreTrainedModel(HfViTPreTrainedModel):
    config: HfViTHybridConfig
    config_class = HfViTHybridConfig
    _no_split_modules = ["BackbonePatchEmbedding", "TokenEmbeddings", "EncoderLayer"]

    def backbone_parameters(self) -> list:
        return list(self.base_model.patch_embeddings.backbone.parameters())


class HfViTHybridModel(HfViTHybridPreTrainedModel, HfViTModel):
    """The ViT encoder on a backbone's feature map: `last_hidden_state` (B, 1 + h * w, C), `pooler_output` (B, C).

    Any input size runs with `interpolate_pos_encoding=True` (the grid follows the backbone's stride).
    """

    def make_patch_embeddings(self, config) -> BackbonePatchEmbedding:
        return BackbonePatchEmbedding(config)

    def make_patch_norm(self, config) -> None:
        """None: the backbone's feature map is normalised by the backbone."""
        return None


class HfViTHybridForImageClassification(HfViTHybridPreTrainedModel, HfViTForImageClassification):
    """The hybrid with a linear head on the CLS token: (B, C, H, W) -> logits (B, num_labels)."""

    base_model_class = HfViTHybridModel


class HfViTHybridBackbone(HfViTHybridPreTrainedModel, HfViTBackbone):
    """`HfViTBackbone` on the hybrid: maps at the CNN backbone's stride."""

    base_model_class = HfViTHybridModel


__all__ = ["HfViTHybridBackbone", "HfViTHybridForImageClassification", "HfViTHybridModel", "HfViTHybridPreTrainedModel"]
