"""DeiT (Touvron et al. 2021): the ViT encoder plus a learnable distillation token and a second head.

The CLS head learns from the labels, the distillation head from a teacher; at inference the two are averaged.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .configuration_deit import HfDeiTConfig
from .modeling_utils import distillation_loss, image_classification_loss
from .modeling_vit import HfViTBackbone, HfViTForPreTraining, HfViTModel, HfViTPreTrainedModel


@dataclass
class HfDeiTImageClassifierOutput(ModelOutput):
    """`logits` is the mean of `cls_logits` and `distillation_logits`, each (B, num_labels)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def deit_loss(cls_logits, distillation_logits, labels, teacher_logits, config) -> torch.Tensor:
    """`(1 - alpha) * CE(cls_logits, labels) + alpha * D`, D the distillation head's `distillation_loss` (hard or
    soft, `config.distillation_type`); without teacher logits the distillation head learns from the labels too.

    `labels` may be class ids or (B, num_labels) soft targets (Mixup / CutMix); they only enter the label terms.
    """
    alpha = config.distillation_alpha
    label_loss = image_classification_loss(cls_logits, labels, config)
    if teacher_logits is None:
        distillation = image_classification_loss(distillation_logits, labels, config)
    elif config.distillation_type == "none":
        raise ValueError("teacher_logits were given but distillation_type='none'; set it to 'hard' or 'soft'")
    else:
        distillation = distillation_loss(
            distillation_logits, teacher_logits, config.distillation_type, config.distillation_tau
        )
    return (1 - alpha) * label_loss + alpha * distillation


class HfDeiTPreTrainedModel(HfViTPreTrainedModel):
    config: HfDeiTConfig
    config_class = HfDeiTConfig
    base_model_prefix = "deit"


class HfDeiTModel(HfDeiTPreTrainedModel, HfViTModel):
    """The ViT encoder with a distillation token: `last_hidden_state` (B, 2 + N, C), [:, 0] CLS, [:, 1] distillation."""

    has_distillation_token = True


class HfDeiTForImageClassification(HfDeiTPreTrainedModel):
    """DeiT with its two heads: (B, C, H, W) -> logits (B, num_labels), the mean of both heads."""

    def __init__(self, config: HfDeiTConfig):
        super().__init__(config)
        self.deit = HfDeiTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.distillation_classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        spatial_shapes: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> HfDeiTImageClassifierOutput | tuple:
        """labels: (B,) ids or (B, num_labels) soft targets; teacher_logits: (B, num_labels) from a frozen teacher;
        `pixel_attention_mask` and `spatial_shapes`: of NaFlex patches (see `HfViTModel.forward`)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if teacher_logits is not None and labels is None:
            raise ValueError("teacher_logits need labels: the CLS head always learns from the labels")
        naflex = dict(pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes)
        features = self.encode_for_head(
            pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, **naflex
        )
        cls_logits = self.classifier(features.last_hidden_state[:, 0])
        distillation_logits = self.distillation_classifier(features.last_hidden_state[:, 1])
        loss = None
        if labels is not None:
            loss = deit_loss(cls_logits, distillation_logits, labels, teacher_logits, self.config)
        output = HfDeiTImageClassifierOutput(
            loss=loss,
            logits=(cls_logits + distillation_logits) / 2,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=features.hidden_states,
            attentions=features.attentions,
        )
        return output if return_dict else output.to_tuple()

    def head_features(self, pixel_values: torch.Tensor, **naflex) -> torch.Tensor:
        """The mean of the CLS and distillation tokens, (B, C, H, W) -> (B, hidden_size): with both heads the same
        linear map, the logits (the heads' mean) are that map of these features."""
        tokens = self.encode_for_head(pixel_values, None, None, None, **naflex).last_hidden_state
        return (tokens[:, 0] + tokens[:, 1]) / 2

    @torch.no_grad()
    def set_linear_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Both heads the linear map (num_labels, hidden_size), (num_labels,) on `head_features`."""
        for head in (self.classifier, self.distillation_classifier):
            head.weight.copy_(weight)
            head.bias.copy_(bias)


class HfDeiTForPreTraining(HfDeiTPreTrainedModel, HfViTForPreTraining):
    """MAE on the DeiT encoder: `HfViTForPreTraining` whose decoder also carries the distillation token."""

    base_model_class = HfDeiTModel


class HfDeiTBackbone(HfDeiTPreTrainedModel, HfViTBackbone):
    """`HfViTBackbone` on the DeiT encoder (CLS and distillation tokens dropped from the maps)."""

    base_model_class = HfDeiTModel


__all__ = [
    "HfDeiTBackbone",
    "HfDeiTForImageClassification",
    "HfDeiTForPreTraining",
    "HfDeiTImageClassifierOutput",
    "HfDeiTModel",
    "HfDeiTPreTrainedModel",
    "deit_loss",
]
