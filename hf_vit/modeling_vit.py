"""The Vision Transformer (Dosovitskiy et al. 2020, "An Image Is Worth 16x16 Words").

Image -> patch embedding -> [CLS] + patches + learned 1D position embeddings -> pre-norm encoder -> LayerNorm
-> linear head on the CLS token (or on the mean of the patch tokens).
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_vit import HfViTConfig
from .layers import (
    ConvStemPatchEmbedding,
    Encoder,
    GridEmbedding,
    PatchEmbedding,
    TokenEmbeddings,
    check_pixel_values,
    classifier_output,
    init_transformer_weights,
    resolve_output_flags,
    to_2tuple,
)


class HfViTPreTrainedModel(PreTrainedModel):
    config: HfViTConfig
    config_class = HfViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["TokenEmbeddings", "EncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        init_transformer_weights(module, self.config.initializer_range)

    def head_reads_prefix_only(self, output_attentions: bool | None, output_hidden_states: bool | None) -> bool:
        """Whether a classifier call needs the prefix tokens only from the last block (`prefix_tokens_only`): CLS
        pooling, and no per-token output asked for by the call or the config."""
        output_attentions, output_hidden_states, _ = resolve_output_flags(
            self.config, output_attentions, output_hidden_states, None
        )
        return self.config.pooling == "cls" and not (output_attentions or output_hidden_states)

    def set_image_size(self, image_size) -> None:
        """Run at a new resolution from now on: the position embeddings are resampled (bicubic) to the new token
        grid and saved at that size, and `config.image_size` follows."""
        patch_embeddings = self.base_model.patch_embeddings
        for size, step in zip(to_2tuple(image_size), patch_embeddings.size_multiple):
            if size <= 0 or size % step:
                raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_embeddings.size_multiple}")
        self.config.image_size = image_size
        self.base_model.embeddings.resize_grid(patch_embeddings.grid_size(image_size))


class HfViTModel(HfViTPreTrainedModel):
    """ViT encoder. `forward` returns `last_hidden_state` (B, prefix + N, C) and `pooler_output` (B, C); the prefix is
    the CLS token (none with `class_token=False`)."""

    has_distillation_token = False

    def __init__(self, config: HfViTConfig):
        super().__init__(config)
        self.patch_embeddings = self.make_patch_embeddings(config)
        self.embeddings = TokenEmbeddings(
            config.hidden_size,
            self.patch_embeddings.grid_size(config.image_size),
            config.hidden_dropout_prob,
            class_token=config.class_token,
            distillation_token=self.has_distillation_token,
            antialias=config.interpolation_antialias,
        )
        self.num_prefix_tokens = self.embeddings.num_prefix_tokens
        self.encoder = Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def make_patch_embeddings(self, config) -> GridEmbedding:
        """The module that turns images into the (B, hidden, gh, gw) token grid."""
        patch_embedding = ConvStemPatchEmbedding if config.patch_embedding_type == "conv_stem" else PatchEmbedding
        return patch_embedding(config.patch_size, config.num_channels, config.hidden_size)

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        prefix_tokens_only: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """pixel_values: (B, num_channels, H, W), H x W = image_size unless `interpolate_pos_encoding`.

        `prefix_tokens_only`: the last block computes only the prefix tokens (CLS, distillation), all a CLS-pooling
        head reads, so `last_hidden_state` is (B, prefix, C); it skips most of that block's work.
        """
        config = self.config
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        if prefix_tokens_only and not self.head_reads_prefix_only(output_attentions, output_hidden_states):
            raise ValueError(
                "prefix_tokens_only needs pooling='cls' and no output_attentions / output_hidden_states (they need "
                f"every token of the last block); got pooling={config.pooling!r}, output_attentions="
                f"{output_attentions}, output_hidden_states={output_hidden_states}"
            )
        check_pixel_values(
            pixel_values,
            config.num_channels,
            config.image_size,
            self.patch_embeddings.size_multiple,
            bool(interpolate_pos_encoding),
        )

        pixel_values = pixel_values.to(self.dtype)
        patch_grid = self.patch_embeddings(pixel_values)
        hidden_states = self.embeddings(patch_grid, bool(interpolate_pos_encoding))
        last_layer_queries = self.num_prefix_tokens if prefix_tokens_only else None
        encoded = self.encoder(hidden_states, output_attentions, output_hidden_states, last_layer_queries)
        last_hidden_state = self.layernorm(encoded.last_hidden_state)
        if config.pooling == "mean":
            # timm's global_pool="avg": average the un-normalised patch tokens, then normalise.
            pooled = self.layernorm(encoded.last_hidden_state[:, self.num_prefix_tokens :].mean(dim=1))
        else:
            pooled = last_hidden_state[:, 0]

        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


class HfViTForImageClassification(HfViTPreTrainedModel):
    """ViT with a linear head on the pooled token: (B, C, H, W) -> logits (B, num_labels)."""

    base_model_class = HfViTModel

    def __init__(self, config: HfViTConfig):
        super().__init__(config)
        self.vit = self.base_model_class(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        """labels: (B,) class ids, or (B, num_labels) float targets (soft labels, multi-label, regression)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        features = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            prefix_tokens_only=self.head_reads_prefix_only(output_attentions, output_hidden_states),
        )
        return classifier_output(self.classifier(features.pooler_output), labels, features, self.config, return_dict)


__all__ = ["HfViTForImageClassification", "HfViTModel", "HfViTPreTrainedModel"]
