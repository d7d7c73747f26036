"""Building blocks that ViT and Swin share: attention through transformers' attention interface, MLP, stochastic
depth, LayerScale, the pre-norm block, attention pooling, the patch embedding, position-embedding resampling and
the ViT initialisation.

Checkpoints carry this file next to their modeling file (``trust_remote_code``), so it imports only torch,
transformers and the configuration helpers, never the rest of hf_vit.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_utils import to_2tuple


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


class AttentionKernel(nn.Module):
    """What an attention module needs to call transformers' attention interface (`config._attn_implementation`:
    eager, sdpa, flash, flex): heads, scaling, dropout; subclasses make the queries, keys and values."""

    def __init__(self, config, dim: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_probs_dropout_prob

    def attend(self, query, key, value, attention_mask=None):
        """query (B, heads, Nq, head_dim), key and value (B, heads, N, head_dim) -> (B, Nq, heads, head_dim) output
        and the weights (eager only)."""
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


class MultiHeadSelfAttention(AttentionKernel):
    """Multi-head self-attention with one fused QKV projection: (B, N, dim) -> (B, N, dim).

    `attention_mask` is additive and broadcastable to (B, heads, N, N); Swin passes its relative position bias plus
    shift mask there. With `num_queries`, every token still serves as key and value but only the first
    `num_queries` ask: (B, N, dim) -> (B, num_queries, dim). `qk_norm` normalises each head's queries and keys
    (LayerNorm over head_dim).
    """

    def __init__(self, config, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__(config, dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, num_queries: int | None = None
    ):
        batch_size, seq_len, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        query, key = self.q_norm(query[:, :, :num_queries]), self.k_norm(key)
        attn_output, attn_weights = self.attend(query, key, value, attention_mask)
        attn_output = self.proj_dropout(self.proj(attn_output.reshape(batch_size, -1, dim)))
        return attn_output, attn_weights


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


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT), starting at `init_value`: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.gamma


class PreNormBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)), each branch with stochastic depth
    (and, with `layer_scale_init_value`, LayerScale).

    Works on any (..., dim) layout the attention accepts: (B, N, C) for ViT, (B, H, W, C) for Swin's windows.
    `attention_kwargs` go to the attention (ViT's `num_queries`).
    """

    def __init__(
        self,
        config,
        dim: int,
        attention: nn.Module,
        mlp_dim: int,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = attention
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, mlp_dim, config.hidden_act, config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path_rate)
        scaled = layer_scale_init_value is not None
        self.layer_scale1 = LayerScale(dim, layer_scale_init_value) if scaled else nn.Identity()
        self.layer_scale2 = LayerScale(dim, layer_scale_init_value) if scaled else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, **attention_kwargs):
        branch, attn_weights = self.attention(self.norm1(hidden_states), **attention_kwargs)
        # The attention may answer for a prefix of the tokens only (`num_queries`); the residual keeps those.
        hidden_states = hidden_states[:, : branch.shape[1]] + self.drop_path(self.layer_scale1(branch))
        del branch  # frees the attention output before the MLP allocates its buffers
        hidden_states = hidden_states + self.drop_path(self.layer_scale2(self.mlp(self.norm2(hidden_states))))
        return hidden_states, attn_weights


class AttentionPooling(AttentionKernel):
    """Multihead attention pooling (MAP; Zhai et al. 2022, SigLIP): a learned probe attends over every token, then
    a residual MLP. (B, N, dim) -> (B, dim).

    The layout is timm's `AttentionPoolLatent` with one latent (probe, q, kv, proj, norm, mlp).
    """

    def __init__(self, config, dim: int, num_heads: int, mlp_dim: int):
        super().__init__(config, dim, num_heads)
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, mlp_dim, config.hidden_act, config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, dim = hidden_states.shape
        query = self.q(self.probe).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = (
            self.kv(hidden_states).reshape(batch_size, seq_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        pooled, _ = self.attend(query.expand(batch_size, -1, -1, -1), key, value)
        pooled = self.proj(pooled.reshape(batch_size, 1, dim))
        return (pooled + self.mlp(self.norm(pooled)))[:, 0]


class GridEmbedding(nn.Module):
    """Base of the modules that turn (B, C, H, W) images into a (B, hidden, gh, gw) token grid.

    `input_multiple`: (h, w) the image sides must be multiples of; `grid_size(image_size)`: the grid it gives.
    """

    input_multiple: tuple[int, int] = (1, 1)

    def grid_size(self, image_size) -> tuple[int, int]:
        return tuple(size // step for size, step in zip(to_2tuple(image_size), self.input_multiple))


class PatchProjection(nn.Conv2d):
    """A Conv2d with kernel = stride = patch size: one linear map (C * p * p) -> hidden applied to every patch."""

    def linear_xavier_bound(self) -> float:
        """Xavier-uniform's bound for that linear map (MAE's start; torch's Conv2d fans would count the kernel in
        the output too)."""
        hidden_size, *patch = self.weight.shape
        return math.sqrt(6.0 / (math.prod(patch) + hidden_size))


class PatchEmbedding(GridEmbedding):
    """Cuts the image into non-overlapping patches and projects each to `hidden_size`.

    A Conv2d with kernel = stride = patch_size is exactly "flatten each patch, multiply by one matrix".
    (B, C, H, W) -> (B, hidden, H / p, W / p).
    """

    def __init__(self, patch_size, num_channels: int, hidden_size: int):
        super().__init__()
        self.input_multiple = to_2tuple(patch_size)
        self.projection = PatchProjection(
            num_channels, hidden_size, kernel_size=self.input_multiple, stride=self.input_multiple
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values)


def resample_position_embeddings(
    position_embeddings: torch.Tensor, num_prefix_tokens: int, old_grid, new_grid, antialias: bool = False
) -> torch.Tensor:
    """Bicubically resamples the patch part of (1, prefix + gh * gw, C) position embeddings to a new grid.

    The prefix tokens (CLS, distillation) have no place on the grid and are kept as they are. While torch.export
    traces, the resampling always runs (at the same size it is the identity), so the graph serves every grid.
    """
    if not torch.compiler.is_exporting() and tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([prefix, grid], dim=1)


@torch.no_grad()
def init_transformer_weights(module: nn.Module, std: float) -> None:
    """ViT initialisation: normal(std) weights truncated at two standard deviations, zero biases, unit norms,
    LayerScale at its initial value, the attention-pooling probe like a token."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        if getattr(module, "running_mean", None) is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
    elif isinstance(module, LayerScale):
        init.constant_(module.gamma, module.init_value)
    elif isinstance(module, AttentionPooling):
        init.trunc_normal_(module.probe, std=std, a=-2 * std, b=2 * std)
