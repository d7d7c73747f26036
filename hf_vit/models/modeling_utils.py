"""What every family's models share around their layers: the input check, the output flags, the loss from the
labels, the classifier and backbone outputs, and what a model declares about its parameters for training
(`ParameterGroupsMixin`).

Checkpoints carry this file beside their modeling file (``trust_remote_code``), so it imports only torch,
transformers and the configuration helpers.
"""

import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput

from .configuration_utils import to_2tuple


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size, multiple_of, any_size: bool):
    """Raise a ValueError naming expected and received shapes unless `pixel_values` fits the model.

    With `any_size` the height and width only need to be multiples of `multiple_of` (the patch size).
    """
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, channels, height, width), got {tuple(pixel_values.shape)} (NaFlex "
            "patches (batch, patches, p * p * channels) come with spatial_shapes, for the models that take them)"
        )
    batch_size, channels, height, width = pixel_values.shape
    if channels != num_channels:
        raise ValueError(
            f"pixel_values has {channels} channels, the model expects num_channels={num_channels} "
            f"(got shape {tuple(pixel_values.shape)})"
        )
    image_height, image_width = to_2tuple(image_size)
    if any_size:
        step_h, step_w = to_2tuple(multiple_of)
        if height % step_h or width % step_w:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {step_h}x{step_w}; "
                "resize or pad the images first"
            )
    elif (height, width) != (image_height, image_width):
        raise ValueError(
            f"Input image size {height}x{width} doesn't match the model's {image_height}x{image_width}: expected "
            f"pixel_values of shape ({batch_size}, {num_channels}, {image_height}, {image_width}), got "
            f"{tuple(pixel_values.shape)}. Pass interpolate_pos_encoding=True to run other sizes."
        )


# transformers' fused attention kernels: none of them returns the attention maps
FUSED_ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def resolve_output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
    """A forward call's (output_attentions, output_hidden_states, return_dict): the call's values, else the
    config's. Attention maps come from the eager kernel (or a registered attention function that returns them),
    never from a fused one, so asking a fused kernel for them is an error."""
    output_attentions = config.output_attentions if output_attentions is None else output_attentions
    output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    return_dict = config.return_dict if return_dict is None else return_dict
    if output_attentions and str(config._attn_implementation).split("|")[-1] in FUSED_ATTENTION:
        raise ValueError(
            f"output_attentions=True needs attn_implementation='eager' (this model uses "
            f"{config._attn_implementation!r}); load it with attn_implementation='eager' or call "
            "model.set_attn_implementation('eager')"
        )
    return output_attentions, output_hidden_states, return_dict


def problem_type(config, labels: torch.Tensor) -> str:
    """`config.problem_type`, or what transformers would infer from the labels, without writing it into the config
    as transformers' loss does (a config changed by the first step makes a compiled model compile again)."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification"


def image_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Loss for (B, num_labels) logits, computed in fp32.

    Float label distributions of shape (B, num_labels) (Mixup, CutMix, label smoothing) give soft-target
    cross-entropy unless the problem is multi-label or regression; otherwise transformers' rules: integer labels ->
    cross-entropy (ignoring -100), multi-label -> BCE on the (B, num_labels) targets, regression -> MSE.
    """
    logits = logits.float()  # in fp32 whatever the model computes in: a bf16 / fp16 softmax loses the small terms
    labels = labels.to(logits.device)
    soft_targets = labels.is_floating_point() and labels.shape == logits.shape and config.num_labels > 1
    if soft_targets and config.problem_type in (None, "single_label_classification"):
        return torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean()
    kind = problem_type(config, labels)
    if kind == "regression":
        predictions = logits.squeeze(-1) if config.num_labels == 1 else logits
        return F.mse_loss(predictions, labels.float().view_as(predictions))
    if kind == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1), ignore_index=-100)


def distillation_loss(student_logits, teacher_logits, distillation_type: str, tau: float) -> torch.Tensor:
    """What a student's (B, num_labels) logits pay for differing from a frozen teacher's, in fp32:

    - "hard": `CE(student_logits, teacher_logits.argmax(-1))` (DeiT's hard distillation);
    - "soft": `KL(softmax(teacher / tau) || softmax(student / tau)) * tau**2`, averaged over the batch (the usual
      knowledge-distillation scaling; DeiT's own code divides the summed KL by batch x classes instead).
    """
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if distillation_type == "hard":
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
    if distillation_type != "soft":
        raise ValueError(f"distillation_type must be 'hard' or 'soft' with teacher logits, got {distillation_type!r}")
    return F.kl_div(
        F.log_softmax(student_logits / tau, dim=-1),
        F.log_softmax(teacher_logits / tau, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (tau**2)


def classifier_output(logits, labels, features, config, return_dict: bool):
    """The `ImageClassifierOutput` (or tuple) of a single-head classifier: logits, loss from `labels` if given, and
    the encoder's hidden states and attentions."""
    loss = None if labels is None else image_classification_loss(logits, labels, config)
    output = ImageClassifierOutput(
        loss=loss, logits=logits, hidden_states=features.hidden_states, attentions=features.attentions
    )
    return output if return_dict else output.to_tuple()


class BackboneForwardMixin:
    """The `forward` of a dense-prediction backbone (ViT, the hybrid, Swin): the family implements
    `feature_maps(pixel_values, output_attentions) -> (maps, hidden_states, attentions)`."""

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        """pixel_values (B, C, H, W) -> `BackboneOutput`: (B, C_i, H / s_i, W / s_i) maps of `config.out_features`,
        and the hidden states when the call (else the config) asks for them."""
        config = self.config
        return_dict = config.return_dict if return_dict is None else return_dict
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        feature_maps, hidden_states, attentions = self.feature_maps(pixel_values, output_attentions)
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


class LinearClassifierMixin:
    """A classifier whose linear head reads the base model's `pooler_output` (ViT, the hybrid, Swin): the head and
    `forward` they share; the class sets `base_model_class` and implements `encode_for_head`."""

    def __init__(self, config):
        """The base model under `base_model_prefix`, and a (config.pooled_size -> num_labels) head (none for
        num_labels=0)."""
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.classifier = nn.Linear(config.pooled_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> ImageClassifierOutput | tuple:
        """pixel_values (B, C, H, W) -> logits (B, num_labels). labels: (B,) class ids, or (B, num_labels) float
        targets (soft labels, multi-label, regression). `pixel_attention_mask` and `spatial_shapes`: of NaFlex
        patches (B, N, p * p * C), for the families that take them."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        naflex = dict(pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes)
        features = self.encode_for_head(
            pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, **naflex
        )
        return classifier_output(self.classifier(features.pooler_output), labels, features, self.config, return_dict)

    def head_features(self, pixel_values: torch.Tensor, **naflex) -> torch.Tensor:
        """What the head reads, (B, C, H, W) -> (B, width): the frozen features a linear probe learns from."""
        return self.encode_for_head(pixel_values, None, None, None, **naflex).pooler_output

    @torch.no_grad()
    def set_linear_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Make the head the linear map (num_labels, width), (num_labels,) on `head_features`."""
        self.classifier.weight.copy_(weight)
        self.classifier.bias.copy_(bias)


class ParameterGroupsMixin:
    """What the training application asks a model about its parameters, each family declaring its own (as timm's
    `no_weight_decay()` and `group_matcher()`): `no_weight_decay()`, `layer_ids()` for layer-wise learning-rate
    decay, `backbone_parameters()` for a backbone's own learning rate."""

    no_weight_decay_names: tuple[str, ...] = ()  # endings of the parameter names that take no weight decay

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters besides biases and norms (every 1-D parameter) that take no weight decay."""
        return {name for name, _ in self.named_parameters() if name.endswith(self.no_weight_decay_names)}

    def block_of(self, name: str) -> int | None:
        """The transformer block (1 to `num_blocks`, in forward order) a parameter belongs to, or None."""
        raise NotImplementedError

    @property
    def num_blocks(self) -> int:
        raise NotImplementedError

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """({parameter name: layer}, layers) for layer-wise learning-rate decay, numbered as timm's
        `param_groups_layer_decay`: i for the i-th block (`block_of`); 0 for the embeddings and what they hold (prefix
        tokens, a hybrid's CNN backbone); the base model's final norm with the last block; the heads (an
        attention-pooling head too) one above it."""

        def layer(name: str) -> int:
            block = self.block_of(name)
            if block is not None:
                return block
            if re.search(r"(?:^|\.)(?:patch_)?embeddings\.", name):
                return 0
            return self.num_blocks if re.search(r"(?:^|\.)layernorm\.", name) else self.num_blocks + 1

        return {name: layer(name) for name, _ in self.named_parameters()}, self.num_blocks + 2

    def backbone_parameters(self) -> list:
        """The parameters of a CNN backbone the model runs (a hybrid's), which may learn at a rate of their own."""
        return []

    def repeated_blocks(self) -> list:
        """The transformer blocks regional compilation compiles (`compile_repeated_blocks`)."""
        raise NotImplementedError

    def compile_repeated_blocks(self, **compile_kwargs) -> None:
        """Regional compilation: each of `repeated_blocks()` compiled in place (`nn.Module.compile`; the weights and
        their names stay as they are). Blocks of one class and shape share one compiled graph, so compiling costs
        about one block's, not the whole model's; what lies between the blocks runs eager."""
        for block in self.repeated_blocks():
            block.compile(**compile_kwargs)


class ImagePreTrainedModel(ParameterGroupsMixin, PreTrainedModel):
    """What every hf_vit model declares to transformers beside its config: pixel inputs, gradient checkpointing,
    and its parameter groups for training."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
