"""The Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

Image -> 4x4 patches + LayerNorm -> stages of pre-norm blocks attending inside 7x7 windows (every second block
shifts the windows by half a window, so information crosses window borders) with a learned relative position
bias, 2x2 patch merging between stages (strides 4, 8, 16, 32) -> LayerNorm -> average pool -> linear head.
Attention cost is linear in the number of pixels instead of quadratic.
"""

import functools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.utils import ModelOutput

from .configuration_swin import HfSwinConfig
from .layers import (
    MultiHeadSelfAttention,
    PatchEmbedding,
    PreNormBlock,
    drop_path_rates,
    init_transformer_weights,
    make_mlp,
    resample_position_embeddings,
)
from .modeling_mim import (
    PretrainingHeadLoading,
    SimMIMMixin,
    simmim_decoder,
)
from .modeling_utils import (
    BackboneForwardMixin,
    ImagePreTrainedModel,
    LinearClassifierMixin,
    check_pixel_values,
    resolve_output_flags,
)

# What the reference implementations add to the logits of pairs that the shifted windows must not connect.
MASKED = -100.0


def window_and_shift(height, width, window_size: int, shift_size: int):
    """The window and shift a (height x width) map uses: a map smaller than the window is one window of its own size;
    a map of exactly one window is not shifted. While torch.export traces, sizes are symbolic: `sym_ite` keeps the
    second rule a graph operation, so one exported graph serves maps of one window and of many. Elsewhere it is a
    plain test: `torch.compile` may turn `shift_size` itself into a symbol, and `sym_ite` needs both its branches of
    one type."""
    smaller_side = torch.sym_min(height, width)
    if torch.compiler.is_exporting():
        return torch.sym_min(smaller_side, window_size), torch.sym_ite(smaller_side > window_size, shift_size, 0)
    if smaller_side < window_size:
        return smaller_side, 0
    return window_size, shift_size if smaller_side > window_size else 0


# Orders, masks and indices depend only on the geometry, so each is built once per resolution and kept here
# (outside the modules, so never in a checkpoint). inference_mode(False): tensors first built under a pipeline's
# inference mode must still be usable for training later.
def exportable_cache(function):
    """`functools.lru_cache` in eager mode; computed afresh while torch.export traces (symbolic sizes are not
    hashable, and the result must be part of the graph to follow them)."""
    cached = functools.lru_cache(maxsize=128)(torch.inference_mode(False)(function))

    @functools.wraps(function)
    def wrapper(*args):
        return function(*args) if torch.compiler.is_exporting() else cached(*args)

    wrapper.cache_info, wrapper.cache_clear = cached.cache_info, cached.cache_clear
    return wrapper


def whole_windows(size, window):
    """How many windows cover `size` (the last one padded): ceil(size / window), as one symbol in an export."""
    return (size + window - 1) // window


def remainder(values: torch.Tensor, divisor):
    """`values % divisor` spelt out (ONNX's exporter takes only plain numbers as divisors of `%`)."""
    return values - torch.div(values, divisor, rounding_mode="floor") * divisor


@exportable_cache
def window_order(height, width, window: int, shift, device: torch.device):
    """Where the window tokens come from and where they go back: the (H, W) map padded with zeros at the bottom and
    right to whole windows, cyclically shifted by `shift`, read window by window (row-major), row-major inside each
    window. Returns `gather` (Hp * Wp,): indices into the flat map with one zero token appended at H * W (the
    padding); and `scatter` (H * W,): where each map position is among the window tokens.

    Arithmetic on aranges rather than pad / view / permute, so symbolic sizes (an export at any size) need no
    divisibility proofs: the padded sides are whole windows times the window by construction."""
    rows_of_windows, columns_of_windows = whole_windows(height, window), whole_windows(width, window)
    padded_h, padded_w = rows_of_windows * window, columns_of_windows * window
    index = torch.arange(padded_h * padded_w, device=device)
    window_index, inside = index // (window * window), remainder(index, window * window)
    rows = torch.div(window_index, columns_of_windows, rounding_mode="floor") * window + inside // window
    columns = remainder(window_index, columns_of_windows) * window + remainder(inside, window)
    rows, columns = remainder(rows + shift, padded_h), remainder(columns + shift, padded_w)
    gather = torch.where((rows < height) & (columns < width), rows * width + columns, height * width)
    position = torch.arange(height * width, device=device)
    rows = remainder(torch.div(position, width, rounding_mode="floor") - shift, padded_h)
    columns = remainder(remainder(position, width) - shift, padded_w)
    window_index = (rows // window) * columns_of_windows + columns // window
    scatter = window_index * (window * window) + remainder(rows, window) * window + remainder(columns, window)
    return gather, scatter


def window_partition(hidden_states: torch.Tensor, window: int, shift=0) -> torch.Tensor:
    """(B, H, W, C) -> (B, num_windows, w * w, C): the padding to whole windows, the cyclic shift and the cut into
    windows in one gather."""
    batch_size, height, width, channels = hidden_states.shape
    gather, _ = window_order(height, width, window, shift, hidden_states.device)
    tokens = hidden_states.reshape(batch_size, height * width, channels)
    if torch.compiler.is_exporting() or height % window or width % window:  # the zero token the padding reads
        tokens = torch.cat([tokens, tokens.new_zeros(batch_size, 1, channels)], 1)
    return tokens.index_select(1, gather).view(batch_size, -1, window * window, channels)


def window_reverse(windows: torch.Tensor, height, width, window: int, shift=0) -> torch.Tensor:
    """Inverse of `window_partition`, the padding dropped: (B, num_windows, w * w, C) -> (B, H, W, C)."""
    batch_size, _, _, channels = windows.shape
    _, scatter = window_order(height, width, window, shift, windows.device)
    return windows.reshape(batch_size, -1, channels).index_select(1, scatter).view(batch_size, height, width, channels)


@exportable_cache
def relative_position_index(window: int, table_window: int, device: torch.device) -> torch.Tensor:
    """(w * w * w * w,) indices into a (2 * table_window - 1)**2 bias table for every (query, key) pair of a w x w
    window; a window smaller than the table's uses the table's central offsets."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + table_window - 1
    return (offsets[..., 0] * (2 * table_window - 1) + offsets[..., 1]).flatten().to(device)


@exportable_cache
def shifted_window_mask(height, width, window: int, shift, device: torch.device) -> torch.Tensor:
    """(num_windows, w * w, w * w) additive mask: after the cyclic shift by `shift`, windows on the bottom and right
    edges hold pixels from distant regions of the image; pairs from different regions get MASKED, the rest 0 (all
    0 without a shift). Regions: rows (columns) before the last window, in it but not shifted in, shifted in."""

    def bands(size):
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    region = (bands(height)[:, None] * 3 + bands(width)[None, :])[None, :, :, None]
    region = window_partition(region, window).view(-1, window * window)
    different = region[:, :, None] != region[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASKED)


def _geometric_offsets(source: int, target: int) -> list[float]:
    """Where the `source` offsets of one axis of a relative-position table sit when it grows (or shrinks) to
    `target`: spaced by a geometric progression so that the outermost reach about the new extent (BEiT's rule)."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:  # bisect the ratio q of the progression
        ratio = (left + right) / 2.0
        reach = (1.0 - ratio ** (source // 2)) / (1.0 - ratio)
        left, right = (left, ratio) if reach > target // 2 else (ratio, right)
    offsets, current = [], 1.0
    for i in range(source // 2):
        offsets.append(current)
        current += ratio ** (i + 1)
    return [-offset for offset in reversed(offsets)] + [0.0] + offsets


def _linear_interpolation_matrix(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(len(targets), len(points)) weights of piecewise-linear interpolation on the sorted, unevenly spaced
    `points`; targets outside their range take the nearest end value."""
    right = torch.bucketize(targets, points).clamp(max=len(points) - 1)
    left = (right - 1).clamp(min=0)
    to_left, to_right = (targets - points[left]).clamp(min=0), (points[right] - targets).clamp(min=0)
    on_point = (to_left == 0) & (to_right == 0)
    to_left, to_right = to_left.masked_fill(on_point, 1.0), to_right.masked_fill(on_point, 1.0)
    rows = torch.arange(len(targets))
    weights = torch.zeros(len(targets), len(points))
    weights.index_put_((rows, left), to_right / (to_left + to_right), accumulate=True)
    weights.index_put_((rows, right), to_left / (to_left + to_right), accumulate=True)
    return weights


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int, new_window_size: int) -> torch.Tensor:
    """((2w - 1)**2, heads) bias table of a w x w window -> the table of a new window, as BEiT and timm's
    `resize_rel_pos_bias_table` do: the old offsets are spread over the new range along a geometric progression
    (near offsets keep their values, far ones stretch) and each axis is interpolated linearly."""
    if window_size == new_window_size:
        return table
    source, target = 2 * window_size - 1, 2 * new_window_size - 1
    points = torch.tensor(_geometric_offsets(source, target))
    targets = torch.arange(-(target // 2), target // 2 + 0.1, 1.0)
    # (target, source), the same for both axes; on the table's device (a model on a GPU resizes there)
    weights = _linear_interpolation_matrix(points, targets).to(table.device)
    grid = table.float().T.reshape(-1, source, source)  # (heads, rows, columns)
    resized = weights @ grid @ weights.T
    return resized.reshape(-1, target * target).T.to(table.dtype).contiguous()


class WindowAttention(MultiHeadSelfAttention):
    """(Shifted) window multi-head self-attention with a relative position bias: (B, H, W, C) -> (B, H, W, C).

    The map is padded to whole windows, cyclically shifted by `shift_size` (0 for regular windows) and cut into
    windows in one gather; the windows all attend at once (windows are folded into the heads dimension, so one
    (windows x heads, N, N) bias + mask broadcasts over the batch), then put back together.
    """

    def __init__(self, config, dim: int, num_heads: int, window_size: int, shift_size: int):
        super().__init__(config, dim, num_heads, qkv_bias=config.qkv_bias, proj_dropout=config.hidden_dropout_prob)
        self.window_size = window_size
        self.shift_size = shift_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))

    def attention_bias(self, height: int, width: int, window: int, shift: int) -> torch.Tensor:
        """(1, num_windows * heads, N, N): relative position bias, plus the shift mask for shifted windows."""
        tokens = window * window
        index = relative_position_index(window, self.window_size, self.relative_position_bias_table.device)
        bias = self.relative_position_bias_table[index].view(tokens, tokens, -1).permute(2, 0, 1)
        # The unshifted mask is all zeros; adding it costs what expanding the bias over the windows would.
        mask = shifted_window_mask(height, width, window, shift, bias.device)
        bias = mask[:, None].to(bias.dtype) + bias[None]
        return bias.reshape(1, -1, tokens, tokens)

    def forward(self, hidden_states: torch.Tensor):
        batch_size, height, width, channels = hidden_states.shape
        window, shift = window_and_shift(height, width, self.window_size, self.shift_size)
        windows = window_partition(hidden_states, window, shift)  # (B, nW, N, C), padded to whole windows
        num_windows, tokens = windows.shape[1:3]
        qkv = self.qkv(windows).view(batch_size, num_windows, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch_size, -1, tokens, self.head_dim)
        padded_h, padded_w = whole_windows(height, window) * window, whole_windows(width, window) * window
        bias = self.attention_bias(padded_h, padded_w, window, shift)
        attn_output, attn_weights = self.attend(query, key, value, bias)  # (B, N, nW * heads, head_dim)
        attn_output = attn_output.reshape(batch_size, tokens, num_windows, channels).transpose(1, 2).contiguous()
        hidden_states = self.proj_dropout(window_reverse(self.proj(attn_output), height, width, window, shift))
        if attn_weights is not None:  # (B * nW, heads, N, N), the layout of the reference implementations
            attn_weights = attn_weights.reshape(-1, self.num_heads, tokens, tokens)
        return hidden_states, attn_weights


class PatchMerging(nn.Module):
    """Concatenates each 2x2 neighbourhood and halves the channels: (B, H, W, C) -> (B, H / 2, W / 2, 2C).

    Odd maps are padded by one row / column first.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, height, width, channels = hidden_states.shape
        half_h, half_w = (height + 1) // 2, (width + 1) // 2  # halves as symbols, so an export needs no proof
        hidden_states = F.pad(hidden_states, (0, 0, 0, 2 * half_w - width, 0, 2 * half_h - height))
        # Concatenation order (0,0), (1,0), (0,1), (1,1) as the original code, so its weights load unchanged.
        hidden_states = hidden_states.view(batch_size, half_h, 2, half_w, 2, channels)
        hidden_states = hidden_states.permute(0, 1, 3, 4, 2, 5).reshape(batch_size, half_h, half_w, 4 * channels)
        return self.reduction(self.norm(hidden_states))


class SwinEmbeddings(nn.Module):
    """Patch embedding (padded to whole patches) + LayerNorm (+ absolute positions): (B, C, H, W) -> (B, h, w, D).

    With `mask_token`, `bool_masked_pos` (B, h * w) replaces the masked patches by a learned token after the
    LayerNorm (SimMIM, as transformers' Swin)."""

    def __init__(self, config: HfSwinConfig, mask_token: bool = False):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embeddings = PatchEmbedding(config.patch_size, config.num_channels, config.embed_dim)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps) if config.patch_norm else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if mask_token else None
        self.grid_size = (config.image_size // config.patch_size,) * 2
        self.position_embeddings = None
        if config.use_absolute_embeddings:
            num_positions = self.grid_size[0] * self.grid_size[1]
            self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, config.embed_dim))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        pixel_values = F.pad(pixel_values, (0, -width % self.patch_size, 0, -height % self.patch_size))
        embeddings = self.norm(self.patch_embeddings(pixel_values).permute(0, 2, 3, 1))
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model with a mask token (HfSwinForMaskedImageModeling)")
            masked = bool_masked_pos.bool().view(*embeddings.shape[:3], 1)
            embeddings = torch.where(masked, self.mask_token.to(embeddings.dtype)[:, None], embeddings)
        if self.position_embeddings is not None:
            batch_size, grid_h, grid_w, channels = embeddings.shape
            positions = resample_position_embeddings(self.position_embeddings, 0, self.grid_size, (grid_h, grid_w))
            embeddings = embeddings + positions.view(1, grid_h, grid_w, channels)
        return self.dropout(embeddings)


class SwinStage(nn.Module):
    """Optional 2x2 patch merging, then blocks alternating regular and shifted windows: (B, H, W, C) maps."""

    def __init__(self, config: HfSwinConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        dim, heads = config.stage_dims[stage], config.num_heads[stage]
        self.downsample = PatchMerging(dim // 2, config.layer_norm_eps) if stage > 0 else None
        shifts = [0 if i % 2 == 0 else config.window_size // 2 for i in range(config.depths[stage])]
        self.blocks = nn.ModuleList(
            [
                PreNormBlock(
                    dim,
                    WindowAttention(config, dim, heads, config.window_size, shift),
                    make_mlp(dim, int(dim * config.mlp_ratio), "mlp", config.hidden_act, config.hidden_dropout_prob),
                    functools.partial(nn.LayerNorm, eps=config.layer_norm_eps),
                    rate,
                )
                for shift, rate in zip(shifts, drop_path_rates)
            ]
        )

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        attentions = ()
        for block in self.blocks:
            hidden_states, attn_weights = block(hidden_states)
            attentions += (attn_weights,) if output_attentions else ()
        return hidden_states, attentions


@dataclass
class HfSwinModelOutput(ModelOutput):
    """Swin's outputs.

    last_hidden_state: (B, h * w, C) normalised tokens of the last stage; pooler_output: (B, C) their average;
    hidden_states: the embeddings and each stage's output (before the next merging), as (B, h * w, C) sequences;
    reshaped_hidden_states: the same as (B, C, h, w) maps (strides 4, 8, 16, 32); attentions: per block,
    (B * windows, heads, N, N) (eager only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class HfSwinPreTrainedModel(PretrainingHeadLoading, ImagePreTrainedModel):
    config: HfSwinConfig
    config_class = HfSwinConfig
    base_model_prefix = "swin"
    _no_split_modules = ["SwinEmbeddings", "PreNormBlock", "PatchMerging"]
    # The windows are folded into the heads dimension, which SDPA and eager treat as a batch; kernels that lay
    # out heads themselves (flash, flex) are not wired up.
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        init_transformer_weights(module, std)
        if isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, SwinEmbeddings):
            for tensor in (module.position_embeddings, module.mask_token):
                if tensor is not None:
                    init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)

    # the relative position bias tables, absolute position embeddings and the mask token (Swin's and timm's)
    no_weight_decay_names = ("relative_position_bias_table", "position_embeddings", "mask_token")

    def block_of(self, name: str) -> int | None:
        """Blocks count across the stages; a stage's patch merging goes with its first block (timm's grouping)."""
        starts = [sum(self.config.depths[:stage]) for stage in range(len(self.config.depths))]
        if block := re.search(r"(?:^|\.)stages\.(\d+)\.blocks\.(\d+)\.", name):
            return starts[int(block[1])] + int(block[2]) + 1
        if merging := re.search(r"(?:^|\.)stages\.(\d+)\.downsample\.", name):
            return starts[int(merging[1])] + 1
        return None

    @property
    def num_blocks(self) -> int:
        return sum(self.config.depths)

    def repeated_blocks(self) -> list:
        """Every stage's blocks (one graph per stage's width, and per regular or shifted windows)."""
        return [block for stage in self.base_model.stages for block in stage.blocks]

    def set_window_size(self, window_size: int) -> None:
        """Attend in windows of this side from now on (Swin at a higher resolution: 12 at 384 px): every relative
        position bias table is resampled (`resize_relative_position_bias_table`) and saved at the new size, and
        the shifted blocks shift by half the new window."""
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size <= 0:
            raise ValueError(f"window_size must be a positive integer, got {window_size!r}")
        for module in self.modules():
            if isinstance(module, WindowAttention) and module.window_size != window_size:
                with torch.no_grad():
                    table = resize_relative_position_bias_table(
                        module.relative_position_bias_table, module.window_size, window_size
                    )
                module.relative_position_bias_table = nn.Parameter(table)
                module.shift_size = window_size // 2 if module.shift_size else 0
                module.window_size = window_size
        self.config.window_size = window_size

    def set_image_size(self, image_size: int) -> None:
        """Prepare images of a new size from now on (windows adapt by themselves; `set_window_size` changes them
        too); absolute position embeddings, if any, are resampled and saved at the new grid."""
        if image_size <= 0 or image_size % self.config.total_stride:
            raise ValueError(f"image_size {image_size} must be a positive multiple of {self.config.total_stride}")
        self.config.image_size = image_size
        embeddings = self.base_model.embeddings
        new_grid = (image_size // self.config.patch_size,) * 2
        if embeddings.position_embeddings is not None:
            with torch.no_grad():
                resampled = resample_position_embeddings(
                    embeddings.position_embeddings, 0, embeddings.grid_size, new_grid
                )
            embeddings.position_embeddings = nn.Parameter(resampled.contiguous())
        embeddings.grid_size = new_grid


class HfSwinModel(HfSwinPreTrainedModel):
    """Swin encoder: (B, C, H, W), any H and W -> `HfSwinModelOutput`."""

    def __init__(self, config: HfSwinConfig, use_mask_token: bool = False):
        """`use_mask_token`: a learned token for masked patches (`bool_masked_pos`; SimMIM)."""
        super().__init__(config)
        self.embeddings = SwinEmbeddings(config, use_mask_token)
        rates = drop_path_rates(config.drop_path_rate, sum(config.depths))
        starts = [sum(config.depths[:stage]) for stage in range(len(config.depths))]
        self.stages = nn.ModuleList(
            [
                SwinStage(config, stage, rates[start : start + depth])
                for stage, (start, depth) in enumerate(zip(starts, config.depths))
            ]
        )
        self.layernorm = nn.LayerNorm(config.stage_dims[-1], eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> HfSwinModelOutput | tuple:
        """bool_masked_pos (B, h * w), h = ceil(H / patch_size): patches replaced by the mask token (SimMIM)."""
        config = self.config
        output_attentions, output_hidden_states, return_dict = resolve_output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        check_pixel_values(pixel_values, config.num_channels, config.image_size, 1, any_size=True)

        hidden_states = self.embeddings(pixel_values.to(self.dtype), bool_masked_pos)
        maps, attentions = [hidden_states], ()
        for stage in self.stages:
            hidden_states, stage_attentions = stage(hidden_states, output_attentions)
            maps.append(hidden_states)
            attentions += stage_attentions
        normed = self.layernorm(hidden_states)

        output = HfSwinModelOutput(
            last_hidden_state=normed.flatten(1, 2),
            pooler_output=normed.mean(dim=(1, 2)),
            hidden_states=tuple(m.flatten(1, 2) for m in maps) if output_hidden_states else None,
            reshaped_hidden_states=tuple(m.permute(0, 3, 1, 2) for m in maps) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


class HfSwinForImageClassification(LinearClassifierMixin, HfSwinPreTrainedModel):
    """Swin with a linear head on the average-pooled last stage: (B, C, H, W) -> logits (B, num_labels)."""

    base_model_class = HfSwinModel

    def encode_for_head(
        self, pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, **naflex
    ):
        """The base model's output; Swin takes any size, so `interpolate_pos_encoding` changes nothing."""
        if any(value is not None for value in naflex.values()):
            raise ValueError(
                "hf_swin takes (B, C, H, W) images of any size, not NaFlex patches: its windows need a whole grid"
            )
        return self.swin(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )


class HfSwinForMaskedImageModeling(SimMIMMixin, HfSwinPreTrainedModel):
    """SimMIM (Xie et al. 2022, "A Simple Framework for Masked Image Modeling"), made for Swin: masked patches become
    a learned mask token, a 1x1 convolution and a pixel shuffle reconstruct the image from the last stage's map
    (stride `config.total_stride`), L1 on the masked pixels. (B, C, H, W) -> `SimMIMOutput` (loss, reconstruction,
    mask)."""

    def __init__(self, config: HfSwinConfig):
        super().__init__(config)
        self.swin = HfSwinModel(config, use_mask_token=True)
        self.mask_unit, self.default_mask_block = config.patch_size, config.total_stride
        self.decoder = simmim_decoder(config.hidden_size, config.total_stride, config.num_channels)
        self.post_init()

    def encode_masked(
        self, pixel_values, bool_masked_pos, interpolate_pos_encoding, output_attentions, output_hidden_states
    ):
        """The encoder's output and its last stage's (B, C, h, w) map; Swin takes any size, so
        `interpolate_pos_encoding` changes nothing."""
        features = self.swin(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            bool_masked_pos=bool_masked_pos,
        )
        last_map = tuple(-(-side // self.config.total_stride) for side in pixel_values.shape[-2:])
        return features, features.last_hidden_state.transpose(1, 2).unflatten(2, last_map)


class HfSwinBackbone(BackboneForwardMixin, BackboneMixin, HfSwinPreTrainedModel):
    """Dense-prediction backbone: normalised (B, C, H / s, W / s) maps of `config.out_features` (stem and stage1:
    s = 4, stage2: 8, stage3: 16, stage4: 32) for detection and segmentation heads."""

    def __init__(self, config: HfSwinConfig):
        super().__init__(config)
        self.num_features = [config.embed_dim] + config.stage_dims
        self.swin = HfSwinModel(config)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: nn.LayerNorm(channels, eps=config.layer_norm_eps)
                for stage, channels in zip(self.out_features, self.channels)
            }
        )
        self.post_init()

    def feature_maps(self, pixel_values: torch.Tensor, output_attentions: bool | None):
        """The chosen stages' maps, each through its own LayerNorm, the hidden states (as maps) and attentions."""
        outputs = self.swin(
            pixel_values, output_attentions=output_attentions, output_hidden_states=True, return_dict=True
        )
        feature_maps = tuple(
            self.hidden_states_norms[stage](hidden_state.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            for stage, hidden_state in zip(self.stage_names, outputs.reshaped_hidden_states)
            if stage in self.out_features
        )
        return feature_maps, outputs.reshaped_hidden_states, outputs.attentions


__all__ = [
    "HfSwinBackbone",
    "HfSwinForImageClassification",
    "HfSwinForMaskedImageModeling",
    "HfSwinModel",
    "HfSwinModelOutput",
    "HfSwinPreTrainedModel",
]
