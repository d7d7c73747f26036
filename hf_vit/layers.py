"""Building blocks shared by every hf_vit family.

Checkpoints carry this file next to their modeling file (``trust_remote_code``), so it imports only torch and
transformers, never the rest of hf_vit.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import ForSequenceClassificationLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def to_2tuple(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates growing linearly from 0 at the first block to `drop_path_rate` at the last."""
    return torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also while building on meta


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescaling survivors by 1 / keep_prob."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention, the one implementation that can return the attention maps.

    query, key, value: (B, heads, N, head_dim); attention_mask: additive, broadcastable to (B, heads, N, N).
    Returns (B, N, heads, head_dim) and the (B, heads, N, N) weights.
    """
    attn_weights = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = attn_weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)
    return attn_output, attn_weights


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection: (B, N, dim) -> (B, N, dim).

    The kernel comes from transformers' attention interface (`config._attn_implementation`: eager, sdpa, flash,
    flex). `attention_mask` is additive and broadcastable to (B, heads, N, N); Swin passes its relative position
    bias plus shift mask there. With `num_queries`, every token still serves as key and value but only the first
    `num_queries` ask: (B, N, dim) -> (B, num_queries, dim).
    """

    def __init__(self, config, dim: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, num_queries: int | None = None):
        batch_size, seq_len, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn_output, attn_weights = self.attend(query[:, :, :num_queries], key, value, attention_mask)
        attn_output = self.proj_dropout(self.proj(attn_output.reshape(batch_size, -1, dim)))
        return attn_output, attn_weights

    def attend(self, query, key, value, attention_mask=None):
        """(B, heads, N, head_dim) each -> (B, N, heads, head_dim) output and the weights (eager only)."""
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        return attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout: (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, hidden_dim: int, hidden_act: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class PreNormBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)), each branch with stochastic depth.

    Works on any (..., dim) layout the attention accepts: (B, N, C) for ViT, (B, H, W, C) for Swin's windows.
    `attention_kwargs` go to the attention (ViT's `num_queries`).
    """

    def __init__(self, config, dim: int, attention: nn.Module, mlp_dim: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = attention
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, mlp_dim, config.hidden_act, config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **attention_kwargs):
        branch, attn_weights = self.attention(self.norm1(hidden_states), **attention_kwargs)
        # The attention may answer for a prefix of the tokens only (`num_queries`); the residual keeps those.
        hidden_states = hidden_states[:, : branch.shape[1]] + self.drop_path(branch)
        del branch  # frees the attention output before the MLP allocates its buffers
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states, attn_weights


class EncoderLayer(PreNormBlock):
    """The ViT block: global multi-head self-attention over all tokens, (B, N, C) -> (B, N, C)."""

    def __init__(self, config, drop_path_rate: float = 0.0):
        attention = MultiHeadSelfAttention(config, config.hidden_size, config.num_attention_heads)
        super().__init__(config, config.hidden_size, attention, config.intermediate_size, drop_path_rate)


class Encoder(nn.Module):
    """A stack of `EncoderLayer`s with linearly growing stochastic depth: (B, N, C) -> (B, N, C)."""

    def __init__(self, config):
        super().__init__()
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList([EncoderLayer(config, rate) for rate in rates])

    def forward(
        self, hidden_states, output_attentions=False, output_hidden_states=False, last_layer_queries: int | None = None
    ) -> BaseModelOutput:
        """`last_layer_queries`: the last layer computes only the first this many tokens, so `last_hidden_state` is
        (B, last_layer_queries, C); for heads that read nothing else."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            num_queries = last_layer_queries if layer is self.layers[-1] else None
            hidden_states, attn_weights = layer(hidden_states, num_queries=num_queries)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


def resolve_output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
    """A forward call's (output_attentions, output_hidden_states, return_dict): the call's values, else the
    config's. Attention maps only exist under the eager kernel, so asking for them otherwise is an error."""
    output_attentions = config.output_attentions if output_attentions is None else output_attentions
    output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    return_dict = config.return_dict if return_dict is None else return_dict
    if output_attentions and config._attn_implementation != "eager":
        raise ValueError(
            f"output_attentions=True needs attn_implementation='eager' (this model uses "
            f"{config._attn_implementation!r}); load it with attn_implementation='eager' or call "
            "model.set_attn_implementation('eager')"
        )
    return output_attentions, output_hidden_states, return_dict


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size, multiple_of, any_size: bool):
    """Raise a ValueError naming expected and received shapes unless `pixel_values` fits the model.

    With `any_size` the height and width only need to be multiples of `multiple_of` (the patch size).
    """
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, channels, height, width), got {tuple(pixel_values.shape)}"
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


class GridEmbedding(nn.Module):
    """Base of the modules that turn (B, C, H, W) images into a (B, hidden, gh, gw) token grid.

    `size_multiple`: (h, w) the image sides must be multiples of; `grid_size(image_size)`: the grid it gives.
    """

    size_multiple: tuple[int, int] = (1, 1)

    def grid_size(self, image_size) -> tuple[int, int]:
        return tuple(size // step for size, step in zip(to_2tuple(image_size), self.size_multiple))


class PatchEmbedding(GridEmbedding):
    """Cuts the image into non-overlapping patches and projects each to `hidden_size`.

    A Conv2d with kernel = stride = patch_size is exactly "flatten each patch, multiply by one matrix".
    (B, C, H, W) -> (B, hidden, H / p, W / p).
    """

    def __init__(self, patch_size, num_channels: int, hidden_size: int):
        super().__init__()
        self.size_multiple = to_2tuple(patch_size)
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=self.size_multiple, stride=self.size_multiple)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values)


class ConvStemPatchEmbedding(GridEmbedding):
    """Convolutional stem (Xiao et al. 2021): 3x3 stride-2 conv + BatchNorm + ReLU blocks, then a 1x1 projection.

    The strides multiply to `patch_size`, so the token grid equals the plain patch embedding's.
    (B, C, H, W) -> (B, hidden, H / p, W / p).
    """

    def __init__(self, patch_size, num_channels: int, hidden_size: int):
        super().__init__()
        self.size_multiple = to_2tuple(patch_size)
        side = self.size_multiple[0]
        if self.size_multiple[1] != side or side & (side - 1):
            raise ValueError(
                f"patch_embedding_type='conv_stem' needs a square power-of-two patch_size, got {self.size_multiple}"
            )
        num_blocks = side.bit_length() - 1
        channels = [num_channels] + [max(hidden_size // 2 ** (num_blocks - i), 16) for i in range(num_blocks)]
        blocks = []
        for in_channels, out_channels in zip(channels[:-1], channels[1:]):
            blocks += [
                nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        self.stem = nn.Sequential(*blocks)
        self.projection = nn.Conv2d(channels[-1], hidden_size, kernel_size=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.stem(pixel_values))


def resample_position_embeddings(
    position_embeddings: torch.Tensor, num_prefix_tokens: int, old_grid, new_grid, antialias: bool = False
) -> torch.Tensor:
    """Bicubically resamples the patch part of (1, prefix + gh * gw, C) position embeddings to a new grid.

    The prefix tokens (CLS, distillation) have no place on the grid and are kept as they are.
    """
    if tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([prefix, grid], dim=1)


class TokenEmbeddings(nn.Module):
    """Prepends the learnable CLS token (unless `class_token=False`) and DeiT's distillation token (if asked), and
    adds learned 1D position embeddings.

    (B, C, gh, gw) feature grid -> (B, prefix + gh * gw, C). A grid other than the trained one needs
    `interpolate_pos_encoding=True` (bicubic resampling of the grid part).
    """

    def __init__(
        self, hidden_size: int, grid_size, dropout: float, class_token=True, distillation_token=False, antialias=False
    ):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.antialias = antialias
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if class_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if distillation_token else None
        self.num_prefix_tokens = int(class_token) + int(distillation_token)
        num_positions = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, hidden_size))
        self.dropout = nn.Dropout(dropout)

    @torch.no_grad()
    def resize_grid(self, grid_size) -> None:
        """Resample the position embeddings to a new grid for good (they are saved at the new size)."""
        resampled = resample_position_embeddings(
            self.position_embeddings, self.num_prefix_tokens, self.grid_size, grid_size, self.antialias
        )
        self.position_embeddings = nn.Parameter(resampled.contiguous())
        self.grid_size = tuple(grid_size)

    def forward(self, feature_grid: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch_size, _, grid_h, grid_w = feature_grid.shape
        if (grid_h, grid_w) != self.grid_size and not interpolate_pos_encoding:
            raise ValueError(
                f"The input gives a {grid_h}x{grid_w} token grid but the position embeddings are for "
                f"{self.grid_size[0]}x{self.grid_size[1]}; pass interpolate_pos_encoding=True to resample them"
            )
        prefix = [token for token in (self.cls_token, self.distillation_token) if token is not None]
        tokens = torch.cat([t.expand(batch_size, -1, -1) for t in prefix] + [feature_grid.flatten(2).transpose(1, 2)], 1)
        position_embeddings = resample_position_embeddings(
            self.position_embeddings, self.num_prefix_tokens, self.grid_size, (grid_h, grid_w), self.antialias
        )
        return self.dropout(tokens + position_embeddings)


@torch.no_grad()
def init_transformer_weights(module: nn.Module, std: float) -> None:
    """ViT initialisation: normal(std) weights truncated at two standard deviations, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        if getattr(module, "running_mean", None) is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
    elif isinstance(module, TokenEmbeddings):
        for token in (module.cls_token, module.distillation_token, module.position_embeddings):
            if token is not None:
                init.trunc_normal_(token, std=std, a=-2 * std, b=2 * std)


def image_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Loss for a (B, num_labels) head.

    Float label distributions of shape (B, num_labels) (Mixup, CutMix, label smoothing) give soft-target
    cross-entropy unless `config.problem_type` says multi-label or regression; everything else follows
    transformers: integer labels -> cross-entropy, `problem_type` multi_label_classification -> BCE,
    regression -> MSE.
    """
    soft_targets = labels.is_floating_point() and labels.shape == logits.shape and config.num_labels > 1
    if soft_targets and config.problem_type in (None, "single_label_classification"):
        return torch.sum(-labels.to(logits.device) * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return ForSequenceClassificationLoss(labels, logits, config)


def classifier_output(logits, labels, features, config, return_dict: bool):
    """The `ImageClassifierOutput` (or tuple) of a single-head classifier: logits, loss from `labels` if given, and
    the encoder's hidden states and attentions."""
    loss = None if labels is None else image_classification_loss(logits, labels, config)
    output = ImageClassifierOutput(
        loss=loss, logits=logits, hidden_states=features.hidden_states, attentions=features.attentions
    )
    return output if return_dict else output.to_tuple()
