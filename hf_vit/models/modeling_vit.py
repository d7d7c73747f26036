"""The Vision Transformer (Dosovitskiy et al. 2020, "An Image Is Worth 16x16 Words").

Image -> patch embedding -> [CLS] + patches + learned 1D position embeddings -> pre-norm encoder -> LayerNorm
-> linear head on the CLS token (or on the mean of the patch tokens). The options of the later ViTs are config
fields: register tokens, LayerScale, qk-norm, position embeddings for the grid only, CLS + mean and attention
pooling.
"""

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
)

from .configuration_utils import CheckpointMismatchError, to_2tuple
from .configuration_vit import HfViTConfig
from .layers import (
    AttentionPooling,
    GridEmbedding,
    Mlp,
    PatchEmbedding,
    PatchProjection,
    PreNormBlock,
    RotaryPositions,
    drop_path_rates,
    grid_mean,
    init_transformer_weights,
    key_padding_bias,
    merge_tokens,
    naflex_position_weights,
    patches_present,
    proportional_attention_bias,
    resample_grid,
    resample_position_embeddings,
    vit_block_parts,
    vit_norm,
)
from .modeling_mim import (
    MaskedAutoencoderDecoder,
    MaskedAutoencoderOutput,
    PretrainingHeadLoading,
    SimMIMMixin,
    mae_loss,
    mae_reconstruction,
    patchify,
    random_masking,
    simmim_decoder,
    sincos_position_table,
)
from .modeling_utils import (
    BackboneForwardMixin,
    ImagePreTrainedModel,
    LinearClassifierMixin,
    check_pixel_values,
    resolve_output_flags,
)


class ConvStemPatchEmbedding(GridEmbedding):
    """Convolutional stem (Xiao et al. 2021): 3x3 stride-2 conv + BatchNorm + ReLU blocks, then a 1x1 projection.

    The strides multiply to `patch_size`, so the token grid equals the plain patch embedding's.
    (B, C, H, W) -> (B, hidden, H / p, W / p).
    """

    def __init__(self, patch_size, num_channels: int, hidden_size: int):
        super().__init__()
        self.input_multiple = to_2tuple(patch_size)
        side = self.input_multiple[0]
        if self.input_multiple[1] != side or side & (side - 1):
            raise ValueError(
                f"patch_embedding_type='conv_stem' needs a square power-of-two patch_size, got {self.input_multiple}"
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


class TokenEmbeddings(nn.Module):
    """Prepends the prefix tokens: the learnable CLS token (unless `class_token=False`), DeiT's distillation token
    (if asked) and `num_register_tokens` registers; adds learned 1D position embeddings to the grid tokens, and to
    the CLS and distillation tokens when `prefix_position_embeddings` (registers never get one).

    (B, C, gh, gw) feature grid -> (B, prefix + gh * gw, C). A grid other than the trained one needs
    `interpolate_pos_encoding=True` (bicubic resampling of the grid part). Without `absolute` position embeddings
    (a rotary model's) any grid passes as it is. `patch_norm` normalises the grid tokens first (AIMv2). For masked
    image modeling:
    `bool_masked_pos` (B, gh * gw) replaces the masked grid tokens by the learned `mask_token` before the positions
    are added (SimMIM; needs `mask_token=True`); `kept_positions` (B, K) keeps only those grid tokens after the
    positions are added, so the output is (B, prefix + K, C) (MAE).
    """

    def __init__(
        self,
        hidden_size: int,
        grid_size,
        dropout: float,
        class_token=True,
        distillation_token=False,
        antialias=False,
        num_register_tokens=0,
        prefix_position_embeddings=True,
        mask_token=False,
        absolute=True,
        patch_norm: nn.Module | None = None,
        position_start: str = "trunc_normal",
        interpolation: str = "bicubic",
        aspect_preserving: bool = False,
        factorized: bool = False,
    ):
        super().__init__()
        self.grid_size = tuple(grid_size)
        # how `_init_weights` starts the position embeddings: "trunc_normal" or "sincos" (MAE's encoder always)
        self.position_start = position_start
        self.patch_norm = patch_norm or nn.Identity()
        # how the positions are resampled to other grids (`resample_position_embeddings`)
        self.resampling = dict(antialias=antialias, mode=interpolation, aspect_preserving=aspect_preserving)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if class_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if distillation_token else None
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, hidden_size)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if mask_token else None
        # CLS and distillation tokens with a position embedding, in front of the grid in `position_embeddings`.
        self.num_positioned_prefix = (int(class_token) + int(distillation_token)) * prefix_position_embeddings
        self.num_prefix_tokens = int(class_token) + int(distillation_token) + num_register_tokens
        num_positions = self.num_positioned_prefix + self.grid_size[0] * self.grid_size[1]
        self.position_embeddings = self.row_position_embeddings = self.column_position_embeddings = None
        if absolute and factorized:  # a table per axis, summed (timm's pos_embed="factorized")
            self.row_position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size[0], hidden_size))
            self.column_position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size[1], hidden_size))
        elif absolute:
            self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, hidden_size))
        self.dropout = nn.Dropout(dropout)

    def sincos_table(self) -> torch.Tensor:
        """MAE's 2D sine-cosine positions for the grid, zeros for the positioned prefix: (1, positions, C)."""
        return sincos_position_table(self.grid_size, self.position_embeddings.shape[-1], self.num_positioned_prefix)

    @property
    def absolute(self) -> bool:
        return self.position_embeddings is not None or self.row_position_embeddings is not None

    def axis_positions(self, grid_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Factorized positions: the row and the column tables resampled to a (gh, gw) grid, (1, gh, C) and
        (1, gw, C); with `aspect_preserving` both to the longer side, then cropped, as timm does."""
        resampling = self.resampling
        longer = max(grid_size) if resampling["aspect_preserving"] else None
        axes = []
        for table, old, new in zip(
            (self.row_position_embeddings, self.column_position_embeddings), self.grid_size, grid_size
        ):
            if old == new:
                axes.append(table)
                continue
            grid = table.transpose(1, 2)[..., None]  # (1, C, n, 1)
            resized = resample_grid(grid, (longer or new, 1), resampling["mode"], resampling["antialias"])
            axes.append(resized[:, :, :new, 0].transpose(1, 2))
        return tuple(axes)

    def grid_positions(self, grid_size) -> torch.Tensor:
        """(1, positioned prefix + gh * gw, C): the learned positions for a (gh, gw) token grid, resampled when it
        is not the trained one."""
        if self.row_position_embeddings is not None:
            rows, columns = self.axis_positions(grid_size)
            return (rows[:, :, None] + columns[:, None, :]).flatten(1, 2)
        return resample_position_embeddings(
            self.position_embeddings, self.num_positioned_prefix, self.grid_size, grid_size, **self.resampling
        )

    @torch.no_grad()
    def resize_grid(self, grid_size) -> None:
        """Resample the position embeddings to a new grid for good (they are saved at the new size); rotary
        positions follow any grid by themselves."""
        if self.row_position_embeddings is not None:
            rows, columns = self.axis_positions(grid_size)
            self.row_position_embeddings = nn.Parameter(rows.contiguous())
            self.column_position_embeddings = nn.Parameter(columns.contiguous())
        elif self.position_embeddings is not None:
            self.position_embeddings = nn.Parameter(self.grid_positions(grid_size).contiguous())
        self.grid_size = tuple(grid_size)

    def positioned_prefix(self, batch_size: int) -> list[torch.Tensor]:
        """The CLS and distillation tokens that are there, each (B, 1, C)."""
        tokens = (self.cls_token, self.distillation_token)
        return [token.expand(batch_size, -1, -1) for token in tokens if token is not None]

    def picture_positions(self, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
        """NaFlex: the learned grid positions resized to each picture's own (h, w) grid (`naflex_position_weights`),
        row-major and zero-padded to `length`: (B, length, C)."""
        rows, columns = naflex_position_weights(spatial_shapes, length, self.grid_size, **self.resampling)
        if self.row_position_embeddings is not None:
            tables = self.row_position_embeddings, self.column_position_embeddings
            return (rows @ tables[0][0].float() + columns @ tables[1][0].float()).to(tables[0].dtype)
        table = self.position_embeddings[0, self.num_positioned_prefix :]
        return ((rows[..., :, None] * columns[..., None, :]).flatten(-2) @ table.float()).to(table.dtype)

    def embed_naflex(self, patch_tokens: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        """NaFlex (SigLIP 2, timm's NaFlexViT): (B, N, C) patch tokens of pictures cut at their own (h, w) patch
        grids, padded to N -> (B, prefix + N, C), the learned positions resized to each picture's grid; padding
        tokens get none."""
        batch_size, length, _ = patch_tokens.shape
        prefix, grid = self.positioned_prefix(batch_size), self.patch_norm(patch_tokens)
        if self.absolute:
            grid = grid + self.picture_positions(spatial_shapes, length)
            positioned = self.num_positioned_prefix
            if positioned:
                prefix = [torch.cat(prefix, 1) + self.position_embeddings[:, :positioned]]
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(batch_size, -1, -1))
        return self.dropout(torch.cat(prefix + [grid], 1))

    def forward(
        self,
        feature_grid: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        bool_masked_pos=None,
        kept_positions=None,
    ) -> torch.Tensor:
        batch_size, _, grid_h, grid_w = feature_grid.shape
        absolute = self.absolute
        if absolute and not interpolate_pos_encoding and (grid_h, grid_w) != self.grid_size:
            raise ValueError(
                f"The input gives a {grid_h}x{grid_w} token grid but the position embeddings are for "
                f"{self.grid_size[0]}x{self.grid_size[1]}; pass interpolate_pos_encoding=True to resample them"
            )
        prefix = self.positioned_prefix(batch_size)
        grid = self.patch_norm(feature_grid.flatten(2).transpose(1, 2))
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model with a mask token (HfViTForMaskedImageModeling)")
            grid = torch.where(bool_masked_pos[..., None].bool(), self.mask_token.to(grid.dtype), grid)
        if absolute:
            position_embeddings = self.grid_positions((grid_h, grid_w))
        if absolute and self.num_positioned_prefix:
            tokens = torch.cat(prefix + [grid], 1) + position_embeddings
            prefix, grid = [tokens[:, : self.num_positioned_prefix]], tokens[:, self.num_positioned_prefix :]
        elif absolute:
            grid = grid + position_embeddings
        if kept_positions is not None:
            grid = torch.gather(grid, 1, kept_positions[..., None].expand(-1, -1, grid.shape[-1]))
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(batch_size, -1, -1))
        return self.dropout(torch.cat(prefix + [grid], 1))


class EncoderLayer(PreNormBlock):
    """The ViT block: global multi-head self-attention over all tokens, (B, N, C) -> (B, N, C); with token merging,
    (B, N, C) -> (B, N - merge_count, C)."""

    def __init__(self, config, drop_path_rate: float = 0.0):
        parts = vit_block_parts(
            config, config.hidden_size, config.num_attention_heads, config.intermediate_size, config.qk_norm
        )
        super().__init__(**parts, drop_path_rate=drop_path_rate, layer_scale_init_value=config.layer_scale_init_value)

    def forward(
        self, hidden_states, token_sizes=None, merge_count: int = 0, num_protected: int = 0, **attention_kwargs
    ):
        """Returns the tokens, the attention weights (eager) and `token_sizes`. Token merging (ToMe): the attention
        is proportional to `token_sizes` (B, N, 1), the patches each token stands for (None: one each), then
        `merge_count` tokens are merged into others (`merge_tokens`, on the keys; never the first `num_protected`)
        before the MLP."""
        if token_sizes is None and not merge_count:
            return *super().forward(hidden_states, **attention_kwargs), None
        num_queries = attention_kwargs.get("num_queries")
        attention = self.attention
        query, key, value = attention.project(self.norm1(hidden_states), num_queries)
        bias = proportional_attention_bias(token_sizes, query.dtype)
        attn_output, attn_weights = attention.attend(query, key, value, bias)
        hidden_states = self.add_attention(hidden_states, attention.output(attn_output))
        if num_queries is None:  # a last block that computes the prefix only has nothing left to merge
            hidden_states, token_sizes = merge_tokens(
                hidden_states, token_sizes, key.mean(1), merge_count, num_protected
            )
        return self.add_mlp(hidden_states), attn_weights, token_sizes


@dataclass
class ViTEncoderOutput(BaseModelOutput):
    """`BaseModelOutput` and, with token merging, `token_sizes` (B, N, 1): how many patches each token of
    `last_hidden_state` stands for."""

    token_sizes: torch.FloatTensor | None = None


class ViTEncoder(nn.Module):
    """A stack of `EncoderLayer`s with linearly growing stochastic depth: (B, N, C) -> (B, N, C)."""

    def __init__(self, config):
        super().__init__()
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList([EncoderLayer(config, rate) for rate in rates])

    def forward(
        self,
        hidden_states,
        output_attentions=False,
        output_hidden_states=False,
        last_layer_queries: int | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        token_merging: int = 0,
        num_protected: int = 0,
    ) -> ViTEncoderOutput:
        """`last_layer_queries`: the last layer computes only the first this many tokens, so `last_hidden_state` is
        (B, last_layer_queries, C); for heads that read nothing else. `rope`: the rotary positions of the tokens.
        `attention_mask`: additive, (B, 1, 1, N), hides padding tokens (NaFlex) from every query.
        `token_merging`: tokens each block merges (ToMe), never the first `num_protected`."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        token_sizes = None
        for layer in self.layers:
            num_queries = last_layer_queries if layer is self.layers[-1] else None
            hidden_states, attn_weights, token_sizes = layer(
                hidden_states,
                token_sizes,
                token_merging,
                num_protected,
                num_queries=num_queries,
                rope=rope,
                attention_mask=attention_mask,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        if token_sizes is not None:
            token_sizes = token_sizes[:, : hidden_states.shape[1]]
        return ViTEncoderOutput(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            token_sizes=token_sizes,
        )


def _as_list(value):
    """A tuple as the list a saved config holds (a config's [16, 16] is a caller's (16, 16))."""
    return list(value) if isinstance(value, tuple) else value


class HfViTPreTrainedModel(PretrainingHeadLoading, ImagePreTrainedModel):
    config: HfViTConfig
    config_class = HfViTConfig
    base_model_prefix = "vit"
    _no_split_modules = ["TokenEmbeddings", "EncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    # Config fields that change what the weights compute without changing their names or shapes: a checkpoint
    # loaded under other values would run, silently, as another model.
    structure_fields = (
        "rope",
        "rope_theta",
        "rope_layout",
        "rope_offset",
        "rope_axes",
        "rope_reference_grid",
        "key_bias",
        "pre_norm",
        "pooled_norm_only",
        "norm_type",
        "mlp_type",
        "mlp_norm",
        "hidden_act",
        "absolute_position_embeddings",
        "num_register_tokens",
    )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, refusing, before any weight is read, a config (`config=` or field
        overrides) whose structure fields differ from the checkpoint's own: a CheckpointMismatchError names them."""
        hub = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
        saved = cls.config_class.from_pretrained(
            pretrained_model_name_or_path, **{name: kwargs[name] for name in hub if name in kwargs}
        )
        given = kwargs.get("config")
        requested = (
            {name: getattr(given, name, None) for name in cls.structure_fields}
            if isinstance(given, PreTrainedConfig)
            else {name: kwargs[name] for name in cls.structure_fields if name in kwargs}
        )
        differ = {
            name: (getattr(saved, name, None), value)
            for name, value in requested.items()
            if _as_list(getattr(saved, name, None)) != _as_list(value)
        }
        if differ:
            details = ", ".join(f"{name}: checkpoint {old!r}, config {new!r}" for name, (old, new) in differ.items())
            raise CheckpointMismatchError(
                f"The config does not describe the checkpoint {pretrained_model_name_or_path!r}: {details}"
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _init_weights(self, module):
        std = self.config.initializer_range
        init_transformer_weights(module, std)
        if isinstance(module, TokenEmbeddings):
            for token in (
                module.cls_token,
                module.distillation_token,
                module.register_tokens,
                module.position_embeddings,
                module.row_position_embeddings,
                module.column_position_embeddings,
                module.mask_token,
            ):
                if token is not None:
                    init.trunc_normal_(token, std=std, a=-2 * std, b=2 * std)
            if module.position_start == "sincos" and module.position_embeddings is not None:
                init.copy_(module.position_embeddings, module.sincos_table())
        elif isinstance(module, PatchProjection) and self.config.patch_embedding_init == "xavier":
            bound = module.linear_xavier_bound()
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, MaskedAutoencoderDecoder):
            init.trunc_normal_(module.mask_token, std=std, a=-2 * std, b=2 * std)
            init.copy_(module.position_embeddings, module.sincos_table())

    # the tokens and position embeddings, which decay would only pull towards zero (DeiT's and timm's)
    no_weight_decay_names = ("position_embeddings", "cls_token", "distillation_token", "register_tokens", "mask_token")

    def block_of(self, name: str) -> int | None:
        block = re.search(r"(?:^|\.)encoder\.layers\.(\d+)\.", name)
        return None if block is None else int(block[1]) + 1

    @property
    def num_blocks(self) -> int:
        return self.config.num_hidden_layers

    def repeated_blocks(self) -> list:
        """The encoder's layers; a classifier's last one left out where it computes the prefix tokens only
        (`head_reads_prefix_only`): another graph, which would double the compiling for one cheap layer."""
        layers = list(self.base_model.encoder.layers)
        prefix_only = hasattr(self, "classifier") and self.head_reads_prefix_only(None, None)
        return layers[:-1] if prefix_only else layers

    def head_reads_prefix_only(self, output_attentions: bool | None, output_hidden_states: bool | None) -> bool:
        """Whether a classifier call needs the prefix tokens only from the last block (`prefix_tokens_only`): CLS
        pooling, and no per-token output asked for by the call or the config."""
        output_attentions, output_hidden_states, _ = resolve_output_flags(
            self.config, output_attentions, output_hidden_states, None
        )
        return self.config.pooling == "cls" and not (output_attentions or output_hidden_states)

    def encode_for_head(
        self, pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, **naflex
    ):
        """The base model's output for a classifier's head: the last block computes the prefix tokens only when the
        head reads nothing else (`head_reads_prefix_only`). `naflex`: `pixel_attention_mask`, `spatial_shapes`."""
        prefix_tokens_only = self.head_reads_prefix_only(output_attentions, output_hidden_states)
        return self.encode(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            prefix_tokens_only=prefix_tokens_only,
            **naflex,
        )

    def encode(self, pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, **tokens):
        """The base model's output as a dataclass; `tokens` picks which it computes: `kept_positions` (MAE),
        `bool_masked_pos` (SimMIM), `prefix_tokens_only`."""
        return self.base_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **tokens,
        )

    def set_image_size(self, image_size) -> None:
        """Run at a new resolution from now on: the position embeddings are resampled (bicubic) to the new token
        grid and saved at that size, and `config.image_size` follows."""
        patch_embeddings = self.base_model.patch_embeddings
        for size, step in zip(to_2tuple(image_size), patch_embeddings.input_multiple):
            if size <= 0 or size % step:
                raise ValueError(
                    f"image_size {image_size} must be a positive multiple of patch_size "
                    f"{patch_embeddings.input_multiple}"
                )
        self.config.image_size = image_size
        self.base_model.embeddings.resize_grid(patch_embeddings.grid_size(image_size))


class HfViTModel(HfViTPreTrainedModel):
    """ViT encoder. `forward` returns `last_hidden_state` (B, prefix + N, C) and `pooler_output` (B, C), or (B, 2C) for
    `pooling="cls_mean"`; the prefix is the CLS token (none with `class_token=False`), then the registers."""

    has_distillation_token = False

    def __init__(self, config: HfViTConfig, use_mask_token: bool = False, position_start: str | None = None):
        """`use_mask_token`: a learned token for masked patches (`bool_masked_pos`; SimMIM). `position_start`: how
        the position embeddings start (default: `config.position_embedding_init`; MAE's encoder: "sincos")."""
        super().__init__(config)
        self.patch_embeddings = self.make_patch_embeddings(config)
        self.embeddings = TokenEmbeddings(
            config.hidden_size,
            self.patch_embeddings.grid_size(config.image_size),
            config.hidden_dropout_prob,
            class_token=config.class_token,
            distillation_token=self.has_distillation_token,
            antialias=config.interpolation_antialias,
            num_register_tokens=config.num_register_tokens,
            prefix_position_embeddings=config.prefix_position_embeddings,
            mask_token=use_mask_token,
            absolute=config.absolute_position_embeddings,
            patch_norm=self.make_patch_norm(config),
            position_start=position_start or config.position_embedding_init,
            interpolation=config.position_interpolation,
            aspect_preserving=config.position_aspect_preserving,
            factorized=config.factorized_positions,
        )
        self.num_prefix_tokens = self.embeddings.num_prefix_tokens
        head_dim = config.hidden_size // config.num_attention_heads
        self.rope = RotaryPositions(config, head_dim, self.num_prefix_tokens) if config.rope else None
        norm, dim = vit_norm(config), config.hidden_size
        self.pre_norm = norm(dim) if config.pre_norm else nn.Identity()
        self.encoder = ViTEncoder(config)
        self.layernorm = norm(dim)
        self.pooler = None
        if config.pooling == "map":
            mlp = (
                Mlp(dim, config.intermediate_size, config.hidden_act, config.hidden_dropout_prob)
                if config.pooling_mlp
                else None
            )
            self.pooler = AttentionPooling(
                config,
                dim,
                config.pooling_num_heads or config.num_attention_heads,
                mlp,
                config.qkv_bias,
                config.pooling_query_projection,
                norm,
            )
        self.post_init()

    def make_patch_norm(self, config) -> nn.Module | None:
        """A norm on the patch tokens before the positions are added (`patch_embedding_norm`, AIMv2's)."""
        return vit_norm(config)(config.hidden_size) if config.patch_embedding_norm else None

    def make_patch_embeddings(self, config) -> GridEmbedding:
        """The module that turns images into the (B, hidden, gh, gw) token grid."""
        if config.patch_embedding_type == "conv_stem":
            return ConvStemPatchEmbedding(config.patch_size, config.num_channels, config.hidden_size)
        return PatchEmbedding(config.patch_size, config.num_channels, config.hidden_size, config.patch_embedding_bias)

    def rotary_positions(self, grid_size, device, kept_positions=None):
        """The (sin, cos) rotary positions of the tokens, (prefix + N, head_dim), or (B, 1, prefix + K, head_dim)
        for the `kept_positions` (B, K) of MAE's visible patches; None without `rope`."""
        if self.rope is None:
            return None
        sin, cos = self.rope(grid_size, device)
        if kept_positions is None:
            return sin, cos
        prefix = torch.arange(self.num_prefix_tokens, device=device).expand(kept_positions.shape[0], -1)
        rows = torch.cat([prefix, kept_positions + self.num_prefix_tokens], dim=1)
        return sin[rows][:, None], cos[rows][:, None]

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embeddings

    def check_token_merging(self, masked_or_naflex: bool) -> None:
        """Token merging needs an attention kernel that takes its size bias, and every patch's token at the start."""
        kernel = self.config._attn_implementation
        if kernel.startswith(("flash", "flex")):
            raise ValueError(
                f"token_merging needs attention that adds ToMe's size bias ('sdpa' or 'eager'), got {kernel!r}"
            )
        if masked_or_naflex:
            raise ValueError(
                "token_merging takes (B, C, H, W) images without masking: NaFlex padding and masked image modeling "
                "need every patch's own token"
            )

    def embed_naflex(self, patches, spatial_shapes, pixel_attention_mask):
        """NaFlex patches (B, N, p * p * C) -> the tokens (B, prefix + N, C), which grid tokens are pictures' (B, N)
        and the rotary positions of each picture's grid (None without `rope`)."""
        if patches.ndim != 3:
            raise ValueError(
                f"NaFlex patches must have shape (batch, patches, p * p * channels), got {tuple(patches.shape)}"
            )
        if not hasattr(self.patch_embeddings, "embed_patches"):
            raise ValueError(
                f"NaFlex patches need patch_embedding_type='patch'; this model's patch embedding is "
                f"{type(self.patch_embeddings).__name__}, which reads whole images"
            )
        batch_size, length, _ = patches.shape
        spatial_shapes = spatial_shapes.to(patches.device)
        if pixel_attention_mask is None:
            pixel_attention_mask = patches_present(spatial_shapes, length)
        tokens = self.embeddings.embed_naflex(self.patch_embeddings.embed_patches(patches), spatial_shapes)
        rope = None if self.rope is None else self.rope.per_picture(spatial_shapes, length)
        return tokens, pixel_attention_mask.bool().to(patches.device), rope

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        prefix_tokens_only: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
        kept_positions: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """pixel_values: (B, num_channels, H, W), H x W = image_size unless `interpolate_pos_encoding`; or NaFlex
        patches (B, N, p * p * num_channels) of pictures at their own aspect ratio (SigLIP 2's processor's), with
        `spatial_shapes` (B, 2) each picture's patch grid and `pixel_attention_mask` (B, N) 1 for its patches, 0 for
        padding, which no token attends to and no pooling reads.

        `prefix_tokens_only`: the last block computes only the prefix tokens (CLS, distillation), all a CLS-pooling
        head reads, so `last_hidden_state` is (B, prefix, C); it skips most of that block's work.
        `bool_masked_pos` (B, N): grid tokens replaced by the mask token (SimMIM); `kept_positions` (B, K): the only
        grid tokens the encoder sees (MAE), so `last_hidden_state` is (B, prefix + K, C).
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
        if config.token_merging:
            self.check_token_merging(
                spatial_shapes is not None or bool_masked_pos is not None or kept_positions is not None
            )
        attention_mask, grid_valid = None, None
        if spatial_shapes is not None:  # NaFlex patches
            if bool_masked_pos is not None or kept_positions is not None:
                raise ValueError("masked image modeling (bool_masked_pos, kept_positions) takes (B, C, H, W) images")
            hidden_states, grid_valid, rope = self.embed_naflex(pixel_values, spatial_shapes, pixel_attention_mask)
            valid = torch.cat([grid_valid.new_ones(grid_valid.shape[0], self.num_prefix_tokens), grid_valid], 1)
            attention_mask = key_padding_bias(valid, hidden_states.dtype)
        else:
            check_pixel_values(
                pixel_values,
                config.num_channels,
                config.image_size,
                self.patch_embeddings.input_multiple,
                bool(interpolate_pos_encoding) or not config.absolute_position_embeddings,
            )
            patch_grid = self.patch_embeddings(pixel_values.to(self.dtype))
            hidden_states = self.embeddings(patch_grid, bool(interpolate_pos_encoding), bool_masked_pos, kept_positions)
            rope = self.rotary_positions(patch_grid.shape[-2:], hidden_states.device, kept_positions)
        hidden_states = self.pre_norm(hidden_states)
        last_layer_queries = self.num_prefix_tokens if prefix_tokens_only else None
        encoded = self.encoder(
            hidden_states,
            output_attentions,
            output_hidden_states,
            last_layer_queries,
            rope,
            attention_mask,
            config.token_merging,
            self.num_prefix_tokens,
        )
        raw = encoded.last_hidden_state
        last_hidden_state = raw if config.pooled_norm_only else self.layernorm(raw)
        grid_tokens = slice(self.num_prefix_tokens, None)
        if encoded.token_sizes is not None:  # merged tokens weigh in pooling as the patches they stand for
            grid_valid = encoded.token_sizes[:, grid_tokens, 0]
            attention_mask = proportional_attention_bias(encoded.token_sizes, hidden_states.dtype)
        if config.pooling == "mean":
            # timm's global_pool="avg": average the un-normalised patch tokens, then normalise.
            pooled = self.layernorm(grid_mean(raw[:, grid_tokens], grid_valid))
        elif config.pooling == "normalized_mean":  # timm's "avg" with fc_norm=False: normalise, then average
            pooled = grid_mean(last_hidden_state[:, grid_tokens], grid_valid)
        elif config.pooling == "cls_mean":  # DINOv2's classifier input: (B, 2C)
            pooled = torch.cat([last_hidden_state[:, 0], grid_mean(last_hidden_state[:, grid_tokens], grid_valid)], -1)
        elif config.pooling == "map" and config.pooling_prefix_tokens:
            pooled = self.pooler(last_hidden_state, attention_mask)
        elif config.pooling == "map":  # timm's pool_include_prefix=False: the probe reads the grid tokens only
            grid_mask = None if attention_mask is None else attention_mask[..., grid_tokens]
            pooled = self.pooler(last_hidden_state[:, grid_tokens], grid_mask)
        elif config.pooled_norm_only:  # CLIP: the final norm on the pooled CLS token only
            pooled = self.layernorm(raw[:, 0])
        else:
            pooled = last_hidden_state[:, 0]

        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


class HfViTForImageClassification(LinearClassifierMixin, HfViTPreTrainedModel):
    """ViT with a linear head on the pooled token: (B, C, H, W) -> logits (B, num_labels)."""

    base_model_class = HfViTModel


class HfViTForPreTraining(HfViTPreTrainedModel):
    """MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): the encoder sees the prefix tokens and
    a random `1 - config.mask_ratio` of the patches, `MaskedAutoencoderDecoder` predicts the pixels of the others.
    (B, C, H, W) -> `MaskedAutoencoderOutput` (loss, predicted patches, mask). Its checkpoint loads into the
    classifier and the base model, the decoder left out."""

    base_model_class = HfViTModel

    def __init__(self, config: HfViTConfig):
        super().__init__(config)
        if config.patch_embedding_type != "patch":
            raise ValueError(
                f"MAE needs patch_embedding_type='patch': a {config.patch_embedding_type!r} embedding mixes "
                "neighbouring patches, so visible tokens would see the masked pixels"
            )
        # MAE's positions start at the fixed sine-cosine table; the encoder, a PreTrainedModel of its own that
        # transformers initialises with its own `_init_weights`, is told so when it is built
        encoder = self.base_model_class(config, position_start="sincos")
        setattr(self, self.base_model_prefix, encoder)
        self.decoder = MaskedAutoencoderDecoder(config, encoder.num_prefix_tokens, encoder.embeddings.grid_size)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedAutoencoderOutput | tuple:
        """noise (B, N): the patches with the smallest values are kept (default: uniform random), as transformers'
        ViTMAEForPreTraining draws them."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoder = self.base_model
        grid = encoder.patch_embeddings.grid_size(pixel_values.shape[-2:])
        kept, mask, ids_restore = random_masking(
            pixel_values.shape[0], grid[0] * grid[1], self.config.mask_ratio, noise, pixel_values.device
        )
        features = self.encode(
            pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states, kept_positions=kept
        )
        logits = self.decoder(features.last_hidden_state, ids_restore, grid)
        target = patchify(pixel_values.to(logits.dtype), encoder.patch_embeddings.input_multiple)
        output = MaskedAutoencoderOutput(
            loss=mae_loss(logits, target, mask, self.config.norm_pix_loss),
            logits=logits,
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=features.hidden_states,
            attentions=features.attentions,
        )
        return output if return_dict else output.to_tuple()

    def reconstruct(self, pixel_values: torch.Tensor, output: MaskedAutoencoderOutput) -> torch.Tensor:
        """(B, C, H, W): the input where the patches were visible, the prediction where they were masked."""
        patch_size = self.base_model.patch_embeddings.input_multiple
        return mae_reconstruction(pixel_values, output.logits, output.mask, patch_size, self.config.norm_pix_loss)


class HfViTForMaskedImageModeling(SimMIMMixin, HfViTPreTrainedModel):
    """SimMIM (Xie et al. 2022, "A Simple Framework for Masked Image Modeling") on the ViT: masked patches become a
    learned mask token, a 1x1 convolution and a pixel shuffle reconstruct the image from the grid tokens, L1 on
    the masked pixels. (B, C, H, W) -> `SimMIMOutput` (loss, reconstruction, mask)."""

    base_model_class = HfViTModel

    def __init__(self, config: HfViTConfig):
        super().__init__(config)
        encoder = self.base_model_class(config, use_mask_token=True)
        setattr(self, self.base_model_prefix, encoder)
        patch_h, patch_w = encoder.patch_embeddings.input_multiple
        if patch_h != patch_w:
            raise ValueError(f"SimMIM's pixel-shuffle decoder needs square patches, got patch_size {config.patch_size}")
        # SimMIM's default: 32 px blocks of 16 px patches, two patches wide
        self.mask_unit, self.default_mask_block = patch_h, 2 * patch_h
        self.decoder = simmim_decoder(config.hidden_size, patch_h, config.num_channels)
        self.post_init()

    def encode_masked(
        self, pixel_values, bool_masked_pos, interpolate_pos_encoding, output_attentions, output_hidden_states
    ):
        """The encoder's output and its grid tokens as a (B, C, h, w) map."""
        encoder = self.base_model
        features = self.encode(
            pixel_values,
            interpolate_pos_encoding,
            output_attentions,
            output_hidden_states,
            bool_masked_pos=bool_masked_pos,
        )
        grid = encoder.patch_embeddings.grid_size(pixel_values.shape[-2:])
        return features, features.last_hidden_state[:, encoder.num_prefix_tokens :].transpose(1, 2).unflatten(2, grid)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W) maps."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return super().forward(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al. 2022): one (B, C, h, w) map -> four (B, channels, s * h, s * w)
    maps for s = 4, 2, 1, 1/2 (transposed convolutions up, max-pooling down), each projected by a 1x1 and a 3x3
    convolution with LayerNorms."""

    def __init__(self, dim: int, channels: int, eps: float):
        super().__init__()
        self.rescale = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                    ChannelsFirstLayerNorm(dim // 2, eps=eps),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
                ),
                nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2, stride=2),
            ]
        )
        self.project = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(width, channels, 1, bias=False),
                    ChannelsFirstLayerNorm(channels, eps=eps),
                    nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                    ChannelsFirstLayerNorm(channels, eps=eps),
                )
                for width in (dim // 4, dim // 2, dim, dim)
            ]
        )

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(project(rescale(feature_map)) for rescale, project in zip(self.rescale, self.project))


class HfViTBackbone(BackboneForwardMixin, BackboneMixin, HfViTPreTrainedModel):
    """Dense-prediction backbone (`AutoBackbone`): for each of `config.out_features` (`stem`: the embeddings,
    `stageI`: after block I) the tokens normalised by the final LayerNorm, prefix tokens (CLS, distillation,
    registers) dropped, as a (B, C, H / p, W / p) map. Any input size: the position embeddings are resampled.
    With `config.feature_pyramid_channels`, the last of those maps becomes ViTDet's four-level pyramid instead."""

    base_model_class = HfViTModel

    def __init__(self, config: HfViTConfig):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.feature_pyramid = None
        if config.feature_pyramid_channels is not None:
            self.feature_pyramid = SimpleFeaturePyramid(
                config.hidden_size, config.feature_pyramid_channels, config.layer_norm_eps
            )
        self.post_init()

    @property
    def channels(self) -> list[int]:
        """Channels of each returned map (what heads such as UperNet size themselves by)."""
        if self.feature_pyramid is not None:
            return [self.config.feature_pyramid_channels] * 4
        return [self.num_features[self.stage_names.index(stage)] for stage in self.out_features]

    def feature_maps(self, pixel_values: torch.Tensor, output_attentions: bool | None):
        """The chosen blocks' tokens, normalised, as (B, C, H / p, W / p) maps (or the pyramid of the last one), the
        hidden states and attentions."""
        if self.config.token_merging:
            raise ValueError(
                f"the backbone's feature maps need every patch's token; token_merging={self.config.token_merging} "
                "merges them: set it to 0"
            )
        encoder = self.base_model
        outputs = encoder(
            pixel_values,
            interpolate_pos_encoding=True,
            output_attentions=output_attentions,
            output_hidden_states=True,
            return_dict=True,
        )
        grid_h, grid_w = encoder.patch_embeddings.grid_size(pixel_values.shape[-2:])
        feature_maps = tuple(
            encoder.layernorm(hidden_state[:, encoder.num_prefix_tokens :])
            .unflatten(1, (grid_h, grid_w))
            .permute(0, 3, 1, 2)
            .contiguous()
            for stage, hidden_state in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        if self.feature_pyramid is not None:
            feature_maps = self.feature_pyramid(feature_maps[-1])
        return feature_maps, outputs.hidden_states, outputs.attentions


__all__ = [
    "HfViTBackbone",
    "HfViTForImageClassification",
    "HfViTForMaskedImageModeling",
    "HfViTForPreTraining",
    "HfViTModel",
    "HfViTPreTrainedModel",
]
