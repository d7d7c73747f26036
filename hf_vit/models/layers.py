"""Building blocks that ViT and Swin share: attention through transformers' attention interface (with rotary
positions), norms (LayerNorm, RMSNorm), MLPs (plain, SwiGLU), stochastic depth, LayerScale, the pre-norm block,
attention pooling, the patch embedding, position-embedding resampling and the ViT initialisation.

Checkpoints carry this file next to their modeling file (``trust_remote_code``), so it imports only torch,
transformers and the configuration helpers, never the rest of hf_vit.
"""

import math
from collections.abc import Callable
from functools import partial

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


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang and Sennrich 2019) with a learned scale, computed in fp32 whatever the input's
    dtype (a bf16 / fp16 mean of squares loses small values or overflows): (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.eps).to(hidden_states.dtype)
        return normed * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(norm_type: str, dim: int, eps: float) -> nn.Module:
    """A norm over `dim` channels: "layer_norm" (LayerNorm) or "rms_norm" (RMSNorm)."""
    return RMSNorm(dim, eps=eps) if norm_type == "rms_norm" else nn.LayerNorm(dim, eps=eps)


NormLayer = Callable[[int], nn.Module]  # dim -> a norm over dim channels (the blocks' `norm_layer`, as timm's)


def rotate_pairs(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """The rotation partner of each channel: "half" pairs channel i with i + D / 2 (DINOv3's rotate-half), "interleaved"
    pairs 2i with 2i + 1 (EVA02's, Perception Encoder's)."""
    if layout == "half":
        first, second = tensor.chunk(2, dim=-1)
        return torch.cat([-second, first], dim=-1)
    return torch.stack([-tensor[..., 1::2], tensor[..., ::2]], dim=-1).flatten(-2)


def apply_rotary(tensor: torch.Tensor, rope, layout: str) -> torch.Tensor:
    """Rotate (B, heads, N, head_dim) queries or keys by `rope` = (sin, cos), each (N, head_dim) or (B, 1, N,
    head_dim), for the first N tokens; computed in the dtype of sin / cos (fp32), returned in the tensor's."""
    sin, cos = rope
    count = tensor.shape[-2]
    sin, cos = sin[..., :count, :], cos[..., :count, :]
    rotated = tensor * cos + rotate_pairs(tensor, layout) * sin
    return rotated.to(tensor.dtype)


class RotaryPositions(nn.Module):
    """2D rotary position embeddings (RoFormer's rotation of queries and keys, one half of the frequencies per
    image axis) for a (gh, gw) grid of patch tokens behind `num_prefix_tokens` prefix tokens, which stay unrotated.
    forward(grid_size, device) -> (sin, cos), each (prefix + gh * gw, head_dim) in fp32.

    Two coordinate systems, as the checkpoints that use them (`config.rope`):
    - "dinov3": patch centres normalised to [-1, 1] per image, so every size spans the same range; angle 2 pi c
      theta^(-4k / head_dim) (DINOv3, theta 100); in training, optional shift / jitter / rescale of the coordinates;
    - "eva": patch indices plus `rope_offset`, rescaled to `rope_reference_grid` when given; angle c theta^(-4k /
      head_dim) (EVA02, Perception Encoder, theta 10000).
    `rope_axes` orders the axes ("yx": rows first; "xy"), `rope_layout` pairs the channels ("half", "interleaved").
    Nothing is stored: the table is computed for each grid, so any height and width need no resampling.
    """

    def __init__(self, config, head_dim: int, num_prefix_tokens: int):
        super().__init__()
        self.config, self.head_dim, self.num_prefix_tokens = config, head_dim, num_prefix_tokens

    def axis_coordinates(self, index: torch.Tensor, side, reference: int | None) -> torch.Tensor:
        """The coordinates of patches at `index` (float) along an axis of `side` patches (a number or a tensor that
        broadcasts with `index`)."""
        config = self.config
        if config.rope == "dinov3":
            return (index + 0.5 + config.rope_offset) / side * 2 - 1
        axis = index + config.rope_offset
        return axis if reference is None else axis / side * reference

    def coordinates(self, grid_size, device) -> torch.Tensor:
        """(gh * gw, 2) coordinates of the patches, row-major, axes in `rope_axes` order."""
        references = self.config.rope_reference_grid or (None, None)
        axes = [
            self.axis_coordinates(torch.arange(side, device=device, dtype=torch.float32), side, reference)
            for side, reference in zip(grid_size, references)
        ]
        rows, columns = torch.meshgrid(axes[0], axes[1], indexing="ij")
        return self.ordered(rows.flatten(), columns.flatten())

    def ordered(self, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in `rope_axes` order, augmented in training."""
        coordinates = torch.stack([rows, columns] if self.config.rope_axes == "yx" else [columns, rows], dim=-1)
        return self.augment(coordinates) if self.training else coordinates

    def augment(self, coordinates: torch.Tensor) -> torch.Tensor:
        """DINOv3's training-time changes of the coordinates, each when configured: a shift uniform in [-s, s] per
        axis, a jitter log-uniform in [1/j, j] per axis, a rescale log-uniform in [1/r, r] for both."""
        config, device = self.config, coordinates.device
        if config.rope_shift is not None:
            coordinates = coordinates + torch.empty(2, device=device).uniform_(-config.rope_shift, config.rope_shift)
        if config.rope_jitter is not None:
            bound = math.log(config.rope_jitter)
            coordinates = coordinates * torch.empty(2, device=device).uniform_(-bound, bound).exp()
        if config.rope_rescale is not None:
            bound = math.log(config.rope_rescale)
            coordinates = coordinates * torch.empty(1, device=device).uniform_(-bound, bound).exp()
        return coordinates

    def angles(self, coordinates: torch.Tensor) -> torch.Tensor:
        """(..., N, 2) coordinates -> (..., N, head_dim) rotation angles: the first axis's frequencies, then the
        second's, paired as `rope_layout` says."""
        config, device = self.config, coordinates.device
        coordinates = coordinates[..., None]
        if config.rope == "dinov3":  # as transformers' DINOv3ViTRopePositionEmbedding computes it
            inverse = 1 / config.rope_theta ** torch.arange(0, 1, 4 / self.head_dim, device=device, dtype=torch.float32)
            angles = 2 * math.pi * coordinates * inverse
        else:  # as timm's RotaryEmbeddingCat (in_pixels=False) computes it
            exponents = torch.arange(self.head_dim // 4, device=device, dtype=torch.float32) / (self.head_dim // 4)
            angles = coordinates * (1.0 / config.rope_theta**exponents)
        angles = angles.flatten(-2)
        return torch.cat([angles, angles], -1) if config.rope_layout == "half" else angles.repeat_interleave(2, -1)

    def forward(self, grid_size, device) -> tuple[torch.Tensor, torch.Tensor]:
        angles = self.angles(self.coordinates(grid_size, device))
        prefix = angles.new_zeros(self.num_prefix_tokens, self.head_dim)
        return torch.cat([prefix, angles.sin()]), torch.cat([prefix + 1, angles.cos()])

    def per_picture(self, spatial_shapes: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (sin, cos) of a NaFlex batch, each (B, 1, prefix + length, head_dim): every picture's own (h, w) grid
        (`spatial_shapes` (B, 2)), the padding unrotated (sin 0, cos 1). Tensor arithmetic on the shapes' values,
        so a new mix of shapes is not a new graph under torch.compile."""
        sizes = spatial_shapes.to(torch.float32)[:, None]  # (B, 1, 2)
        index = torch.arange(length, device=spatial_shapes.device, dtype=torch.float32)[None]  # (1, L)
        rows = torch.div(index, sizes[..., 1], rounding_mode="floor")
        references = self.config.rope_reference_grid or (None, None)
        row_axis = self.axis_coordinates(rows, sizes[..., 0], references[0])
        column_axis = self.axis_coordinates(index - rows * sizes[..., 1], sizes[..., 1], references[1])
        valid = index < sizes.prod(-1)  # (B, L)
        angles = self.angles(self.ordered(row_axis, column_axis)) * valid[..., None]
        prefix = angles.new_zeros(angles.shape[0], self.num_prefix_tokens, self.head_dim)
        sin, cos = torch.cat([prefix, angles.sin()], 1), torch.cat([prefix + 1, angles.cos()], 1)
        return sin[:, None], cos[:, None]


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


class KeyMaskedLinear(nn.Linear):
    """The fused QKV projection whose key third of the bias is masked to zero (DINOv3's `LinearKMaskedBias`, EVA02's
    missing key bias): the key third is replaced by zeros in the forward, so it gets exactly no gradient and stays zero,
    and the bias takes the activation dtype under autocast (bf16 q / k / v, the flash kernel) like any Linear's.
    (B, N, dim) -> (B, N, 3 * dim)."""

    def __init__(self, dim: int):
        super().__init__(dim, 3 * dim, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query_bias, key_bias, value_bias = self.bias.chunk(3)
        bias = torch.cat([query_bias, torch.zeros_like(key_bias), value_bias])
        return F.linear(hidden_states, self.weight, bias)


class MultiHeadSelfAttention(AttentionKernel):
    """Multi-head self-attention with one fused QKV projection: (B, N, dim) -> (B, N, dim).

    `attention_mask` is additive and broadcastable to (B, heads, N, N); Swin passes its relative position bias plus
    shift mask there. With `num_queries`, every token still serves as key and value but only the first
    `num_queries` ask: (B, N, dim) -> (B, num_queries, dim). `rope` = (sin, cos) rotates queries and keys (rows of
    sin 0 and cos 1 leave the prefix tokens as they are, paired as `rope_layout` says). `qk_norm` normalises each
    head's queries and keys; `key_bias=False` keeps the key third of the QKV bias at zero (DINOv3's masked key bias,
    EVA02's); `output_norm` normalises the heads' output before the projection (EVA02-CLIP); the norms are
    `norm_layer`'s. `config` serves transformers' attention interface (`_attn_implementation`, attention dropout).
    """

    def __init__(
        self,
        config,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        key_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        output_norm: bool = False,
        norm_layer: NormLayer = nn.LayerNorm,
        proj_dropout: float = 0.0,
        rope_layout: str | None = None,
    ):
        super().__init__(config, dim, num_heads)
        self.qkv = KeyMaskedLinear(dim) if qkv_bias and not key_bias else nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.norm = norm_layer(dim) if output_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_dropout = nn.Dropout(proj_dropout)
        self.rope_layout = rope_layout

    def project(self, hidden_states: torch.Tensor, num_queries: int | None = None, rope=None):
        """(B, N, dim) -> query (B, heads, num_queries or N, head_dim), key and value (B, heads, N, head_dim)."""
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states)  # through the module, so that what wraps it (LoRA's adapters) takes part
        qkv = qkv.reshape(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        query, key = self.q_norm(query[:, :, :num_queries]), self.k_norm(key)
        if rope is not None:
            query, key = apply_rotary(query, rope, self.rope_layout), apply_rotary(key, rope, self.rope_layout)
        return query, key, value

    def output(self, attn_output: torch.Tensor) -> torch.Tensor:
        """The heads' output (B, Nq, heads, head_dim) -> (B, Nq, dim)."""
        attn_output = self.norm(attn_output.flatten(2))
        return self.proj_dropout(self.proj(attn_output))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_queries: int | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        query, key, value = self.project(hidden_states, num_queries, rope)
        attn_output, attn_weights = self.attend(query, key, value, attention_mask)
        return self.output(attn_output), attn_weights


class Mlp(nn.Module):
    """Linear -> activation -> dropout (-> norm) -> Linear -> dropout: (B, N, dim) -> (B, N, dim)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        hidden_act: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        norm: nn.Module | None = None,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = ACT2FN[hidden_act]
        self.norm = norm or nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.norm(self.dropout(self.act(self.fc1(hidden_states))))))


class GatedMlp(nn.Module):
    """A gated linear unit MLP (SwiGLU with SiLU, Shazeer 2020): act(gate(x)) * up(x) -> dropout (-> norm, EVA02's)
    -> Linear. With `fused`, one Linear makes the gate and the up projection (its first half the gate; timm's
    packed `GluMlp`), else two (`fc1_g`, `fc1_x`: timm's `SwiGLU`, transformers' gate_proj / up_proj).
    (B, N, dim) -> (B, N, dim)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        hidden_act: str = "silu",
        dropout: float = 0.0,
        bias: bool = True,
        norm: nn.Module | None = None,
        fused: bool = False,
    ):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        else:
            self.fc1_g = nn.Linear(dim, hidden_dim, bias=bias)
            self.fc1_x = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = ACT2FN[hidden_act]
        self.norm = norm or nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fused:
            gate, up = self.fc1(hidden_states).chunk(2, dim=-1)
        else:
            gate, up = self.fc1_g(hidden_states), self.fc1_x(hidden_states)
        return self.dropout(self.fc2(self.norm(self.dropout(self.act(gate) * up))))


def make_mlp(
    dim: int,
    hidden_dim: int,
    mlp_type: str = "mlp",
    hidden_act: str = "gelu",
    dropout: float = 0.0,
    bias: bool = True,
    norm: nn.Module | None = None,
) -> nn.Module:
    """An MLP of `mlp_type`: "mlp" (`Mlp`), "swiglu" or "swiglu_fused" (`GatedMlp`); `norm` inside it, before the
    output projection (EVA02-B+)."""
    options = dict(hidden_act=hidden_act, dropout=dropout, bias=bias, norm=norm)
    if mlp_type == "mlp":
        return Mlp(dim, hidden_dim, **options)
    return GatedMlp(dim, hidden_dim, **options, fused=mlp_type == "swiglu_fused")


def vit_norm(config) -> NormLayer:
    """The norm of every part of a ViT-style model (a `ViTEncoderConfig`): its `norm_type` at its `layer_norm_eps`."""
    return partial(make_norm, config.norm_type, eps=config.layer_norm_eps)


def vit_block_parts(config, dim: int, num_heads: int, mlp_dim: int, qk_norm: bool = False) -> dict:
    """The attention, MLP and norm of a block of a ViT-style model (a `ViTEncoderConfig`: ViT, DeiT, the hybrid, and
    MAE's decoder at its own width), read from the config once, here: `PreNormBlock(**parts, ...)`."""
    norm = vit_norm(config)
    attention = MultiHeadSelfAttention(
        config,
        dim,
        num_heads,
        qkv_bias=config.qkv_bias,
        key_bias=config.key_bias,
        proj_bias=config.proj_bias,
        qk_norm=qk_norm,
        output_norm=config.attention_output_norm,
        norm_layer=norm,
        proj_dropout=config.hidden_dropout_prob,
        rope_layout=config.rope_layout,
    )
    mlp = make_mlp(
        dim,
        mlp_dim,
        config.mlp_type,
        config.hidden_act,
        config.hidden_dropout_prob,
        config.mlp_bias,
        norm(mlp_dim) if config.mlp_norm else None,
    )
    return dict(dim=dim, attention=attention, mlp=mlp, norm_layer=norm)


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
    `attention_kwargs` go to the attention (ViT's `num_queries` and `rope`). The caller builds the attention and the
    MLP (`make_mlp`); the two norms are `norm_layer`'s.
    """

    def __init__(
        self,
        dim: int,
        attention: nn.Module,
        mlp: nn.Module,
        norm_layer: NormLayer = nn.LayerNorm,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attention = attention
        self.norm2 = norm_layer(dim)
        self.mlp = mlp
        self.drop_path = DropPath(drop_path_rate)
        scaled = layer_scale_init_value is not None
        self.layer_scale1 = LayerScale(dim, layer_scale_init_value) if scaled else nn.Identity()
        self.layer_scale2 = LayerScale(dim, layer_scale_init_value) if scaled else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, **attention_kwargs):
        branch, attn_weights = self.attention(self.norm1(hidden_states), **attention_kwargs)
        hidden_states = self.add_attention(hidden_states, branch)
        del branch  # frees the attention output before the MLP allocates its buffers
        return self.add_mlp(hidden_states), attn_weights

    def add_attention(self, hidden_states: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        # The attention may answer for a prefix of the tokens only (`num_queries`); the residual keeps those.
        return hidden_states[:, : branch.shape[1]] + self.drop_path(self.layer_scale1(branch))

    def add_mlp(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.drop_path(self.layer_scale2(self.mlp(self.norm2(hidden_states))))


def merge_tokens(hidden_states, token_sizes, metric, count: int, num_protected: int):
    """Token merging (ToMe, Bolya et al. 2023): bipartite soft matching of the unprotected tokens, then the matched
    pairs averaged, weighted by how many patches each already stands for.

    hidden_states (B, N, C); token_sizes (B, N, 1) the patches each token stands for; metric (B, N, c) what
    similarity is measured on (the block's keys, averaged over heads). The first `num_protected` tokens (CLS,
    distillation, registers) are never merged. The rest alternate between sets A and B by their place in the whole
    sequence (as the reference code splits it); each A token's edge is its most similar (cosine) B token, and the
    `count` A tokens with the strongest edges are merged into their B tokens (at most half the unprotected tokens).
    Returns (B, N - count, C) and (B, N - count, 1): the protected tokens, the unmerged A tokens, then the B tokens.
    """
    count = min(count, (hidden_states.shape[1] - num_protected) // 2)
    if count <= 0:
        return hidden_states, token_sizes
    first_a = num_protected % 2  # sequence positions 0, 2, 4 ... are A's, counting the protected tokens
    # the two sets by index rather than by strided slices, so an export at any token count needs no even one
    positions = torch.arange(hidden_states.shape[1] - num_protected, device=hidden_states.device)
    set_a, set_b = positions[first_a::2], positions[1 - first_a :: 2]
    with torch.no_grad():
        metric = metric[:, num_protected:]
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric.index_select(1, set_a) @ metric.index_select(1, set_b).transpose(-1, -2)
        best, partner = scores.max(dim=-1)
        edges = best.argsort(dim=-1, descending=True)[..., None]
        kept, merged = edges[:, count:], edges[:, :count]
        # The reference code puts the kept A tokens back in sequence order only when there is a prefix to keep
        # first; without one they stay in edge order, which decides the next block's A / B split: as it does.
        kept = kept.sort(dim=1).values if num_protected else kept
        partner = partner[..., None].gather(1, merged)

    def merge(tokens):  # sums the merged tokens into their partners
        protected, rest = tokens[:, :num_protected], tokens[:, num_protected:]
        side_a, side_b = rest.index_select(1, set_a), rest.index_select(1, set_b)
        width = tokens.shape[-1]
        unmerged = side_a.gather(1, kept.expand(-1, -1, width))
        sources = side_a.gather(1, merged.expand(-1, -1, width))
        side_b = side_b.scatter_reduce(1, partner.expand(-1, -1, width), sources, reduce="sum")
        return torch.cat([protected, unmerged, side_b], dim=1)

    if token_sizes is None:  # fp32 whatever the activations' dtype: sizes grow past what bf16 counts exactly
        token_sizes = hidden_states.new_ones(hidden_states.shape[:2] + (1,), dtype=torch.float32)
    summed = merge(hidden_states * token_sizes)
    token_sizes = merge(token_sizes)
    return (summed / token_sizes).to(hidden_states.dtype), token_sizes


def proportional_attention_bias(token_sizes: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """ToMe's proportional attention: log(size) added to every key's logit, so a token that stands for s patches
    draws the attention s of them would. (B, N, 1) sizes -> additive mask (B, 1, 1, N); None before any merge."""
    return None if token_sizes is None else token_sizes.log().to(dtype).transpose(1, 2)[:, None]


class AttentionPooling(AttentionKernel):
    """Multihead attention pooling (MAP; Zhai et al. 2022, SigLIP): a learned probe attends over every token, then
    a residual MLP. (B, N, dim) -> (B, dim).

    The layout is timm's `AttentionPoolLatent` with one latent (probe, q, kv, proj, norm, mlp). Without
    `query_projection` the probe is the query itself, and without an `mlp` (an `Mlp`, its norm `norm_layer`'s) the
    projection is the output (AIMv2's head).
    """

    def __init__(
        self,
        config,
        dim: int,
        num_heads: int,
        mlp: nn.Module | None = None,
        qkv_bias: bool = True,
        query_projection: bool = True,
        norm_layer: NormLayer = nn.LayerNorm,
    ):
        super().__init__(config, dim, num_heads)
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias) if query_projection else nn.Identity()
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = norm_layer(dim) if mlp is not None else None
        self.mlp = mlp

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attention_mask: additive, (B, 1, 1, N), hides padding tokens from the probe."""
        batch_size, seq_len, dim = hidden_states.shape
        query = self.q(self.probe).reshape(1, 1, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = (
            self.kv(hidden_states).reshape(batch_size, seq_len, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        pooled, _ = self.attend(query.expand(batch_size, -1, -1, -1).to(key.dtype), key, value, attention_mask)
        pooled = self.proj(pooled.reshape(batch_size, 1, dim))
        if self.mlp is not None:
            pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


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

    def __init__(self, patch_size, num_channels: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_multiple = to_2tuple(patch_size)
        self.projection = PatchProjection(
            num_channels, hidden_size, kernel_size=self.input_multiple, stride=self.input_multiple, bias=bias
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """NaFlex input: patches cut and flattened channels last, as SigLIP 2's and timm's NaFlex processors cut
        them (row, column, channel), through the same projection as `forward`: (B, N, p * p * C) -> (B, N, hidden)."""
        weight = self.projection.weight  # (hidden, C, p, p)
        expected = weight[0].numel()
        if patches.shape[-1] != expected:
            raise ValueError(
                f"NaFlex patches must be flattened {self.input_multiple[0]}x{self.input_multiple[1]} patches of "
                f"{weight.shape[1]} channels ({expected} values each), got {patches.shape[-1]}"
            )
        return F.linear(patches.to(weight.dtype), weight.permute(0, 2, 3, 1).flatten(1), self.projection.bias)


def _keys_cubic(distance: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel (a = -0.75: torch's bicubic; -0.5: its antialiased bicubic, PIL's)."""
    x = distance.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _triangle(distance: torch.Tensor) -> torch.Tensor:
    """The linear interpolation kernel."""
    return (1 - distance.abs()).clamp(min=0)


def interpolation_weights(centre: torch.Tensor, scale: torch.Tensor, side: int, mode: str, antialias: bool):
    """The weights `F.interpolate(mode=mode, align_corners=False, antialias=antialias)` gives the `side` source
    samples of one axis for outputs centred at source coordinates `centre` (..., ) of a resize by `scale` (source /
    output size, broadcastable to `centre`): (..., side). `mode`: "bilinear" or "bicubic"."""
    device = centre.device
    # Keys' a: -0.5 where torch antialiases (PIL's), -0.75 where it does not
    kernel = partial(_keys_cubic, a=-0.5 if antialias else -0.75) if mode == "bicubic" else _triangle
    if antialias:  # the kernel stretched by the downscaling factor over the sources that exist, then normalised
        source = torch.arange(side, device=device, dtype=torch.float32)
        weights = kernel((source - centre[..., None]) / scale.clamp(min=1)[..., None])
        return weights / weights.sum(-1, keepdim=True)
    # Without antialiasing the kernel keeps its width and reads the samples beyond an edge as the edge itself.
    source = torch.arange(-2, side + 2, device=device)
    weights = kernel(source.to(torch.float32) - centre[..., None])
    return weights @ F.one_hot(source.clamp(0, side - 1), side).to(torch.float32)


def naflex_position_weights(
    spatial_shapes: torch.Tensor, length: int, grid_size, mode: str, antialias: bool, aspect_preserving: bool = False
):
    """How NaFlex pictures mix the learned (gh, gw) position grid: each picture's grid (`spatial_shapes` (B, 2)) is
    the table resized to it as `F.interpolate(mode=mode, antialias=antialias)` resizes (SigLIP 2: bilinear,
    antialiased; timm's NaFlexViT: bicubic, antialiased), or with `aspect_preserving` resized to a square of the
    picture's longer side and cropped (timm's `pos_embed_ar_preserving`). Returns the weights of the table's rows
    and columns for each of the `length` tokens, row-major, (B, L, gh) and (B, L, gw), zero for padding tokens.

    Weights instead of a resize per picture: a batch of different shapes is one graph (no loop over pictures,
    nothing that recompiles per shape)."""
    device = spatial_shapes.device
    sizes = spatial_shapes.to(torch.float32)[:, None]  # (B, 1, 2)
    index = torch.arange(length, device=device, dtype=torch.float32)[None, :, None]  # (1, L, 1)
    rows = torch.div(index, sizes[..., 1:], rounding_mode="floor")
    valid = index[..., 0] < sizes.prod(-1)  # (B, L)
    # each token's row and column in its picture; padding takes the first patch's (zeroed below)
    output = torch.cat([rows, index - rows * sizes[..., 1:]], dim=-1) * valid[..., None]
    source_sides = torch.tensor(grid_size, device=device, dtype=torch.float32)
    targets = sizes
    if aspect_preserving:  # a picture at the table's own grid takes it as it is, as timm does
        square = sizes.amax(-1, keepdim=True).expand_as(sizes)
        targets = torch.where((sizes == source_sides).all(-1, keepdim=True), sizes, square)
    scale = source_sides / targets  # (B, 1, 2)
    centre = (output + 0.5) * scale - 0.5
    return tuple(
        interpolation_weights(centre[..., axis], scale[..., axis], side, mode, antialias) * valid[..., None]
        for axis, side in enumerate(grid_size)
    )


def patches_present(spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) True for the first h * w of each NaFlex picture's `length` patches (the rest is padding), from its
    `spatial_shapes` (B, 2): the `pixel_attention_mask` SigLIP 2's processor gives."""
    index = torch.arange(length, device=spatial_shapes.device)
    return index[None] < spatial_shapes.prod(-1)[:, None]


def grid_mean(tokens: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of (B, N, C) tokens weighted by `weights` (B, N): the NaFlex patches `valid` marks, or the patches
    each merged token stands for (all alike without it): (B, C)."""
    if weights is None:
        return tokens.mean(dim=1)
    weights = weights[..., None].to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def key_padding_bias(key_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, N) True for the tokens that are there -> the additive attention mask (B, 1, 1, N) that hides the others
    (padding) from every query."""
    return torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device).masked_fill(
        ~key_valid.bool(), torch.finfo(dtype).min
    )[:, None, None, :]


def resample_grid(grid: torch.Tensor, size, mode: str = "bicubic", antialias: bool = False) -> torch.Tensor:
    """A (1, C, h, w) position grid resampled to `size` (fp32 inside, its own dtype out). While torch.export
    traces, the resampling always runs (at the same size it is the identity), so the graph serves every size."""
    if not torch.compiler.is_exporting() and tuple(grid.shape[-2:]) == tuple(size):
        return grid
    resized = F.interpolate(grid.float(), size=tuple(size), mode=mode, align_corners=False, antialias=antialias)
    return resized.to(grid.dtype)


def resample_position_embeddings(
    position_embeddings: torch.Tensor,
    num_prefix_tokens: int,
    old_grid,
    new_grid,
    antialias: bool = False,
    mode: str = "bicubic",
    aspect_preserving: bool = False,
) -> torch.Tensor:
    """Resamples the patch part of (1, prefix + gh * gw, C) position embeddings to a new grid, or with
    `aspect_preserving` to a square of its longer side, then cropped (timm's `pos_embed_ar_preserving`).

    The prefix tokens (CLS, distillation) have no place on the grid and are kept as they are.
    """
    if not torch.compiler.is_exporting() and tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    dim, (height, width) = grid.shape[-1], new_grid
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    size = (max(height, width),) * 2 if aspect_preserving else (height, width)
    grid = resample_grid(grid, size, mode, antialias)[:, :, :height, :width]
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


@torch.no_grad()
def init_transformer_weights(module: nn.Module, std: float) -> None:
    """ViT initialisation: normal(std) weights truncated at two standard deviations, zero biases, unit norms,
    LayerScale at its initial value, the attention-pooling probe like a token."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, RMSNorm):
        init.ones_(module.weight)
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
