"""Configuration of the plain Vision Transformer (model_type `hf_vit`)."""

from typing import ClassVar

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .configuration_utils import (
    DefaultStagesMixin,
    PresetsMixin,
    check_choice,
    check_masking,
    check_positive,
    check_probability,
    to_2tuple,
)


def _vit(hidden_size, depth, heads, image_size=224, patch_size=16, mlp_ratio=4, **options):
    return dict(
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=int(hidden_size * mlp_ratio),
        image_size=image_size,
        patch_size=patch_size,
        **options,
    )


# DINOv3 (Siméoni et al. 2025): rotary positions instead of absolute ones, 4 registers, LayerScale, the key bias
# masked, LayerNorm eps 1e-5; its classifier reads the CLS token.
DINOV3 = dict(
    rope="dinov3",
    absolute_position_embeddings=False,
    num_register_tokens=4,
    layer_scale_init_value=1e-5,
    key_bias=False,
    layer_norm_eps=1e-5,
)
# EVA02 (Fang et al. 2023): rotary positions beside absolute ones, a fused SwiGLU of 8/3 the width, query and value
# biases only, the mean of the grid tokens as the head's input.
EVA02 = dict(
    rope="eva", rope_reference_grid=[16, 16], mlp_type="swiglu_fused", hidden_act="silu", key_bias=False, pooling="mean"
)
# AIMv2 (Fini et al. 2024): no CLS token, RMSNorm (also on the patch tokens), SwiGLU, no biases in the blocks, the
# mean of the normalised tokens as the head's input.
AIMV2 = dict(
    class_token=False,
    norm_type="rms_norm",
    layer_norm_eps=1e-5,
    patch_embedding_norm=True,
    mlp_type="swiglu",
    hidden_act="silu",
    qkv_bias=False,
    proj_bias=False,
    mlp_bias=False,
    pooling="normalized_mean",
)


VIT_PRESETS = {
    "vit-tiny-patch16-224": _vit(192, 12, 3),
    "vit-small-patch16-224": _vit(384, 12, 6),
    "vit-base-patch16-224": _vit(768, 12, 12),
    "vit-large-patch16-224": _vit(1024, 24, 16),
    # The article's CIFAR-10 model: 32 px, 4 px patches (64 tokens + CLS), d_model 128, 4 heads, 4 layers, d_ff 512.
    "vit-cifar-patch4-32": _vit(128, 4, 4, image_size=32, patch_size=4),
    "dinov3-small-patch16-224": _vit(384, 12, 6, **DINOV3),
    "dinov3-base-patch16-224": _vit(768, 12, 12, **DINOV3),
    "dinov3-large-patch16-224": _vit(1024, 24, 16, **DINOV3),
    "eva02-tiny-patch14-224": _vit(192, 12, 3, patch_size=14, mlp_ratio=8 / 3, **EVA02),
    "eva02-small-patch14-224": _vit(384, 12, 6, patch_size=14, mlp_ratio=8 / 3, **EVA02),
    "aimv2-large-patch14-224": _vit(1024, 24, 8, patch_size=14, mlp_ratio=2.75, **AIMV2),
}


POOLINGS = ("cls", "mean", "normalized_mean", "cls_mean", "map")
NORM_TYPES = ("layer_norm", "rms_norm")
MLP_TYPES = ("mlp", "swiglu", "swiglu_fused")
# rotary positions: {kind: (theta, layout)} as the checkpoints that use them have them
ROPE_DEFAULTS = {"dinov3": (100.0, "half"), "eva": (10000.0, "interleaved")}
POSITION_EMBEDDING_INITS = ("trunc_normal", "sincos")
PATCH_EMBEDDING_INITS = ("trunc_normal", "xavier")


class ViTEncoderConfig(DefaultStagesMixin, BackboneConfigMixin, PreTrainedConfig):
    r"""The fields of the ViT token encoder that every ViT-style family (ViT, DeiT, hybrid) shares; not a model type
    of its own.

    Args:
        image_size (`int` or `(int, int)`, defaults to 224): training resolution; the position embeddings are
            sized for its token grid.
        num_channels (`int`, defaults to 3): input channels.
        hidden_size (`int`, defaults to 768): token width (d_model).
        num_hidden_layers (`int`, defaults to 12): encoder blocks.
        num_attention_heads (`int`, defaults to 12): heads per block; must divide hidden_size.
        intermediate_size (`int`, defaults to 3072): MLP hidden width (d_ff).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on attention weights.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the last block; block i gets
            `drop_path_rate * i / (num_hidden_layers - 1)`.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon.
        qkv_bias (`bool`, defaults to `True`): bias in the query/key/value projection.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal initialisation.
        position_embedding_init (`str`, defaults to `"trunc_normal"`): how the learned position embeddings start:
            `"trunc_normal"` as every other weight (ViT, DeiT); `"sincos"` at MAE's 2D sine-cosine table for the
            grid (zeros for the CLS / distillation token), so that training from scratch starts knowing where each
            patch is (fixed in Beyer et al. 2022's plain ViT; here only the start); needs hidden_size divisible by 4.
        pooling (`str`, defaults to `"cls"`): what the head reads, `pooler_output`: `"cls"` the CLS token;
            `"mean"` the average of the grid tokens (normalised after pooling, as timm's `global_pool="avg"`);
            `"cls_mean"` the CLS token concatenated with the average of the normalised grid tokens, (B, 2 *
            hidden_size) (DINOv2's classifier); `"map"` multihead attention pooling: a learned probe attends over
            every normalised token, then a residual MLP (SigLIP; timm's `global_pool="map"`); `"normalized_mean"` the
            average of the normalised grid tokens (timm with `fc_norm=False`: DINOv3, AIMv2).
        class_token (`bool`, defaults to `True`): prepend a learnable CLS token; without it pooling must be
            `"mean"` or `"map"` (timm's `class_token=False` models, SigLIP).
        num_register_tokens (`int`, defaults to 0): learnable register tokens after the CLS (and distillation)
            token, without position embeddings (Darcet et al. 2023, DINOv2 with registers); no head reads them.
        prefix_position_embeddings (`bool`, defaults to `True`): whether the CLS (and distillation) token gets a
            position embedding; `False` adds them to the grid tokens only (DeiT III, timm's `no_embed_class`).
        layer_scale_init_value (`float`, *optional*): LayerScale (Touvron et al. 2021, CaiT): each residual branch
            is multiplied by a learned per-channel scale starting at this value (DINOv2: 1e-5, DeiT III: 1e-6);
            `None` for none.
        qk_norm (`bool`, defaults to `False`): LayerNorm over each head's queries and keys before attention.
        out_features (`list[str]`, *optional*) / out_indices (`list[int]`, *optional*): what the `AutoBackbone`
            returns: `"stem"` (the embeddings) and `"stage1"` ... `"stageN"` (after each block), as transformers'
            Dinov2Backbone; default the last block.
        feature_pyramid_channels (`int`, *optional*): `AutoBackbone` only: turn the last of `out_features` into
            ViTDet's simple feature pyramid (Li et al. 2022): four maps at 4, 2, 1 and 1/2 times the token grid's
            resolution (strides 4, 8, 16, 32 for 16 px patches), each with this many channels, for heads that want
            several scales (UperNet, FPN).
        interpolation_antialias (`bool`, defaults to `False`): resample position embeddings for other image sizes
            (and NaFlex pictures) with antialiased interpolation, as timm does, instead of plain, as transformers
            does (PyTorch's two kernels differ, so a converted model keeps its source's choice).
        position_interpolation (`str`, defaults to `"bicubic"`): the kernel that resamples the learned positions
            to another grid: `"bicubic"` (ViT, timm) or `"bilinear"` (SigLIP 2's NaFlex; with factorized positions,
            timm's linear resampling of each axis).
        position_aspect_preserving (`bool`, defaults to `False`): resample the positions to a square of the grid's
            longer side, then crop, so a 1:3 grid keeps the table's proportions (timm's `pos_embed_ar_preserving`).
        factorized_positions (`bool`, defaults to `False`): a learned table per axis, (rows, C) and (columns, C),
            summed for each grid token, instead of one (rows * columns, C) table (timm's `pos_embed="factorized"`);
            needs no position embedding on the prefix tokens.
        pooling_prefix_tokens (`bool`, defaults to `True`): `"map"` pooling's probe attends to the prefix tokens
            (CLS, registers) as well as the grid tokens; `False`: the grid tokens only (timm's default
            `pool_include_prefix=False`).
        token_merging (`int`, defaults to 0): token merging (ToMe, Bolya et al. 2023), an inference speed-up for a
            trained model: each block merges this many pairs of similar tokens (bipartite soft matching on its keys,
            size-weighted averages, attention and pooling proportional to how many patches a token stands for); the
            prefix tokens (CLS, distillation, registers) are never merged. 0: off. Not with `rope` (a merged token
            has no single position), NaFlex patches, masked image modeling or the `AutoBackbone`'s maps.

    The options of the ViTs after 2023 (DINOv3, EVA02, Perception Encoder, AIMv2, CLIP), each off by default:

        absolute_position_embeddings (`bool`, defaults to `True`): learned absolute position embeddings; `False`
            (DINOv3) needs `rope`, and the model then takes any height and width with nothing to resample.
        rope (`str`, *optional*): 2D rotary position embeddings on the grid tokens' queries and keys (prefix tokens
            unrotated): `"dinov3"` (patch centres normalised to [-1, 1] per image) or `"eva"` (patch indices,
            EVA02's and Perception Encoder's). Needs a head width divisible by 4.
        rope_theta (`float`, *optional*): the base period (default: DINOv3's 100, EVA's 10000).
        rope_layout (`str`, *optional*): which channels rotate together: `"half"` (i with i + head_dim / 2,
            DINOv3's default) or `"interleaved"` (2i with 2i + 1, EVA's default).
        rope_offset (`float`, defaults to 0.0): added to every coordinate (Perception Encoder: 1).
        rope_axes (`str`, defaults to `"yx"`): the order of the axes' frequencies, rows first or columns first.
        rope_reference_grid (`(int, int)`, *optional*): `"eva"` only: coordinates rescaled as if the grid were this
            (rows, columns), as EVA02 fine-tunes at other sizes.
        rope_shift (`float`, *optional*), rope_jitter (`float`, *optional*), rope_rescale (`float`, *optional*):
            DINOv3's training-time augmentations of the coordinates (a shift in [-s, s], a per-axis scale in [1/j,
            j], a shared scale in [1/r, r]); never in evaluation.
        norm_type (`str`, defaults to `"layer_norm"`): `"layer_norm"` or `"rms_norm"` (AIMv2) for every norm.
        pre_norm (`bool`, defaults to `False`): a norm on the tokens before the first block (CLIP, Perception
            Encoder).
        pooled_norm_only (`bool`, defaults to `False`): the final norm applies to the pooled CLS token only, and
            `last_hidden_state` is the last block's raw output (CLIP); needs `pooling="cls"`.
        mlp_type (`str`, defaults to `"mlp"`): `"mlp"` (Linear, activation, Linear), `"swiglu"` (a gated MLP with
            separate gate and up projections: act(gate(x)) * up(x), DINOv3-L+, AIMv2, EVA02-B+) or `"swiglu_fused"`
            (the same with one fused projection, EVA02-Ti / S); `intermediate_size` is the gated width and
            `hidden_act` the gate's activation (`"silu"` for SwiGLU).
        mlp_norm (`bool`, defaults to `False`): a norm inside the MLP before its output projection (EVA02-B+).
        mlp_bias (`bool`, defaults to `True`), proj_bias (`bool`, defaults to `True`): biases of the MLP's and of the
            attention output's projections.
        key_bias (`bool`, defaults to `True`): with `qkv_bias`, `False` holds the key's third of the QKV bias at
            zero (DINOv3's masked key bias, EVA02's query and value biases).
        attention_output_norm (`bool`, defaults to `False`): a norm on the heads' output before the attention's
            projection (EVA02-CLIP).
        pooling_num_heads (`int`, *optional*): heads of the attention pooling (default: num_attention_heads).
        pooling_query_projection (`bool`, defaults to `True`), pooling_mlp (`bool`, defaults to `True`): the
            attention pooling's query projection and residual MLP; AIMv2's head has neither.
    """

    image_size: int | list[int] | tuple[int, int] = 224
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    initializer_range: float = 0.02
    position_embedding_init: str = "trunc_normal"
    pooling: str = "cls"
    class_token: bool = True
    num_register_tokens: int = 0
    prefix_position_embeddings: bool = True
    layer_scale_init_value: float | None = None
    qk_norm: bool = False
    interpolation_antialias: bool = False
    position_interpolation: str = "bicubic"
    position_aspect_preserving: bool = False
    factorized_positions: bool = False
    pooling_prefix_tokens: bool = True
    token_merging: int = 0
    feature_pyramid_channels: int | None = None
    absolute_position_embeddings: bool = True
    rope: str | None = None
    rope_theta: float | None = None
    rope_layout: str | None = None
    rope_offset: float = 0.0
    rope_axes: str = "yx"
    rope_reference_grid: list[int] | tuple[int, int] | None = None
    rope_shift: float | None = None
    rope_jitter: float | None = None
    rope_rescale: float | None = None
    norm_type: str = "layer_norm"
    pre_norm: bool = False
    pooled_norm_only: bool = False
    mlp_type: str = "mlp"
    mlp_norm: bool = False
    mlp_bias: bool = True
    proj_bias: bool = True
    key_bias: bool = True
    attention_output_norm: bool = False
    pooling_num_heads: int | None = None
    pooling_query_projection: bool = True
    pooling_mlp: bool = True
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        out_indices, out_features = kwargs.pop("out_indices", None), kwargs.pop("out_features", None)
        super().__post_init__(**kwargs)
        check_positive(
            self,
            "image_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "layer_norm_eps",
            "initializer_range",
        )
        check_probability(self, "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        check_choice(self, "pooling", POOLINGS)
        check_choice(self, "position_embedding_init", POSITION_EMBEDDING_INITS)
        if self.position_embedding_init == "sincos" and self.hidden_size % 4:
            raise ValueError(
                f"position_embedding_init='sincos' needs hidden_size divisible by 4 (a sine and a cosine "
                f"per axis), got {self.hidden_size}"
            )
        if not self.class_token and self.pooling not in ("mean", "normalized_mean", "map"):
            raise ValueError(
                "class_token=False needs pooling='mean', 'normalized_mean' or 'map' (there is no CLS token to pool), "
                f"got {self.pooling!r}"
            )
        if (
            isinstance(self.num_register_tokens, bool)
            or not isinstance(self.num_register_tokens, int)
            or self.num_register_tokens < 0
        ):
            raise ValueError(f"num_register_tokens must be a non-negative integer, got {self.num_register_tokens!r}")
        if self.layer_scale_init_value is not None:
            check_positive(self, "layer_scale_init_value")
        if self.feature_pyramid_channels is not None:
            check_positive(self, "feature_pyramid_channels")
            if self.hidden_size % 4:
                raise ValueError(
                    f"feature_pyramid_channels needs hidden_size divisible by 4 (its finest level has "
                    f"hidden_size / 4 channels before the projection), got {self.hidden_size}"
                )
        check_choice(self, "norm_type", NORM_TYPES)
        check_choice(self, "mlp_type", MLP_TYPES)
        self.check_positions()
        if self.pooling_num_heads is not None:
            check_positive(self, "pooling_num_heads")
            if self.hidden_size % self.pooling_num_heads:
                raise ValueError(
                    f"pooling_num_heads ({self.pooling_num_heads}) must divide hidden_size ({self.hidden_size})"
                )
        if not self.pooling_prefix_tokens and self.pooling != "map":
            raise ValueError(
                f"pooling_prefix_tokens=False keeps the prefix tokens from 'map' pooling's probe; got pooling="
                f"{self.pooling!r}, which reads the grid tokens only or the CLS token by definition"
            )
        self.check_token_merging()
        if self.pooled_norm_only and self.pooling != "cls":
            raise ValueError(
                f"pooled_norm_only normalises the pooled CLS token; it needs pooling='cls', got {self.pooling!r}"
            )
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_indices=out_indices, out_features=out_features)

    def check_token_merging(self) -> None:
        """`token_merging` is a count of tokens, and the model has no rotary positions to lose by merging."""
        merging = self.token_merging
        if isinstance(merging, bool) or not isinstance(merging, int) or merging < 0:
            raise ValueError(f"token_merging must be a non-negative integer (tokens per block), got {merging!r}")
        if merging and self.rope is not None:
            raise ValueError(
                f"token_merging cannot merge tokens whose rope={self.rope!r} positions are one patch's each: a merged "
                "token has no single position"
            )

    def check_positions(self) -> None:
        """The position options fit together: rotary settings only with `rope`, resampling settings only with
        absolute position embeddings, and some position information at all. Fills in the rotary defaults."""
        rotary = {
            name: getattr(self, name)
            for name in (
                "rope_theta",
                "rope_layout",
                "rope_reference_grid",
                "rope_shift",
                "rope_jitter",
                "rope_rescale",
            )
        }
        if self.rope is None:
            given = [name for name, value in rotary.items() if value is not None]
            given += ["rope_offset"] * (self.rope_offset != 0.0) + ["rope_axes"] * (self.rope_axes != "yx")
            if given:
                raise ValueError(f"{given} set rotary position embeddings, which need rope ('dinov3' or 'eva')")
            if not self.absolute_position_embeddings:
                raise ValueError(
                    "absolute_position_embeddings=False leaves the model no position information: set rope"
                )
        else:
            check_choice(self, "rope", ROPE_DEFAULTS)
            if (self.hidden_size // self.num_attention_heads) % 4:
                raise ValueError(
                    f"rope needs a head width divisible by 4 (a sine and a cosine per axis), got "
                    f"{self.hidden_size // self.num_attention_heads}"
                )
            theta, layout = ROPE_DEFAULTS[self.rope]
            self.rope_theta = theta if self.rope_theta is None else self.rope_theta
            self.rope_layout = layout if self.rope_layout is None else self.rope_layout
            check_positive(self, "rope_theta")
            check_choice(self, "rope_layout", ("half", "interleaved"))
            check_choice(self, "rope_axes", ("yx", "xy"))
            if self.rope_reference_grid is not None:
                if self.rope != "eva" or len(self.rope_reference_grid) != 2:
                    raise ValueError(
                        f"rope_reference_grid (rows, columns) rescales rope='eva' coordinates, got "
                        f"{self.rope_reference_grid!r} with rope={self.rope!r}"
                    )
                check_positive(self, "rope_reference_grid")
            for name, smallest in (("rope_shift", 0.0), ("rope_jitter", 1.0), ("rope_rescale", 1.0)):
                value = getattr(self, name)
                if value is not None and not (isinstance(value, (int, float)) and value >= smallest):
                    raise ValueError(f"{name} must be a number of at least {smallest}, got {value!r}")
        check_choice(self, "position_interpolation", ("bicubic", "bilinear"))
        if self.factorized_positions and self.position_embedding_init == "sincos":
            raise ValueError("position_embedding_init='sincos' fills one 2D table; factorized_positions has two")
        if self.factorized_positions and self.class_token and self.prefix_position_embeddings:
            raise ValueError(
                "factorized_positions has a row and a column table and no place for the CLS token's position: set "
                "prefix_position_embeddings=False"
            )
        if not self.absolute_position_embeddings:
            unused = {
                "position_embedding_init": self.position_embedding_init != "trunc_normal",
                "interpolation_antialias": self.interpolation_antialias,
                "prefix_position_embeddings=False": not self.prefix_position_embeddings,
                "position_interpolation": self.position_interpolation != "bicubic",
                "position_aspect_preserving": self.position_aspect_preserving,
                "factorized_positions": self.factorized_positions,
            }
            if any(unused.values()):
                raise ValueError(
                    f"{[name for name, on in unused.items() if on]} set absolute position embeddings, and "
                    "absolute_position_embeddings=False has none"
                )

    @property
    def pooled_size(self) -> int:
        """Width of `pooler_output`, the head's input: 2 * hidden_size for `"cls_mean"`, else hidden_size."""
        return 2 * self.hidden_size if self.pooling == "cls_mean" else self.hidden_size


class HfViTConfig(PresetsMixin, ViTEncoderConfig):
    r"""Configuration of [`HfViTModel`] and [`HfViTForImageClassification`]: every `ViTEncoderConfig` field (image
    size, encoder width and depth, pooling, ...), plus the patch embedding. Defaults give ViT-B/16 at 224 px.

    Args:
        patch_size (`int` or `(int, int)`, defaults to 16): side of the square patches; must divide image_size.
        patch_embedding_type (`str`, defaults to `"patch"`): `"patch"` is one Conv2d with kernel = stride =
            patch_size; `"conv_stem"` a stack of 3x3 stride-2 convolutions (Xiao et al. 2021) with the same output
            grid, needing a power-of-two patch_size.
        patch_embedding_init (`str`, defaults to `"trunc_normal"`): how the `"patch"` projection starts:
            `"trunc_normal"` as every other weight; `"xavier"` as MAE's, Xavier-uniform over the flattened kernel
            like a linear layer, so that each patch's content starts at the scale of the sine-cosine positions
            (`position_embedding_init="sincos"`; with 4 px patches the truncated normal starts it ~6x below them);
            only the start; needs `"patch"`.
        patch_embedding_bias (`bool`, defaults to `True`): the `"patch"` projection's bias (CLIP and Perception
            Encoder have none).
        patch_embedding_norm (`bool`, defaults to `False`): a norm on the patch tokens before the positions are
            added (AIMv2).
        max_num_patches (`int`, *optional*): NaFlex (SigLIP 2): the patch budget of pictures taken at their own
            aspect ratio; the model then also reads (B, N, p * p * C) patches with their `spatial_shapes` and
            `pixel_attention_mask` (`naflex_image_processor` cuts them), the learned positions resized to each
            picture's grid. It records what the checkpoint's processor does (the model takes either input);
            needs square `"patch"` patches.

    Masked-image-modeling pretraining (`HfViTForPreTraining`: MAE; `HfViTForMaskedImageModeling`: SimMIM); the
    other models ignore these fields:

        mask_ratio (`float`, defaults to 0.75): fraction of the patches masked, in (0, 1) (MAE's 0.75; SimMIM's
            0.6, which `scripts/pretrain.py --method simmim` uses unless told otherwise).
        mask_patch_size (`int`, *optional*): SimMIM masks square blocks of this many pixels, a multiple of
            patch_size; default: two patches (SimMIM's 32 px blocks of 16 px patches).
        norm_pix_loss (`bool`, defaults to `False`): MAE predicts each patch normalised to zero mean and unit
            variance (better features in MAE's paper).
        decoder_hidden_size (`int`, defaults to 512), decoder_num_hidden_layers (`int`, defaults to 8),
        decoder_num_attention_heads (`int`, defaults to 16), decoder_intermediate_size (`int`, defaults to 2048):
            MAE's decoder, a pre-norm transformer of its own width and depth (MAE's defaults).
    """

    model_type = "hf_vit"
    presets: ClassVar[dict] = VIT_PRESETS

    patch_size: int | list[int] | tuple[int, int] = 16
    patch_embedding_type: str = "patch"
    patch_embedding_init: str = "trunc_normal"
    patch_embedding_bias: bool = True
    patch_embedding_norm: bool = False
    max_num_patches: int | None = None
    mask_ratio: float = 0.75
    mask_patch_size: int | None = None
    norm_pix_loss: bool = False
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_positive(self, "patch_size")
        check_choice(self, "patch_embedding_type", ("patch", "conv_stem"))
        check_choice(self, "patch_embedding_init", PATCH_EMBEDDING_INITS)
        if not self.patch_embedding_bias and self.patch_embedding_type != "patch":
            raise ValueError(
                f"patch_embedding_bias=False removes the 'patch' projection's bias; patch_embedding_type="
                f"{self.patch_embedding_type!r} has its own layers"
            )
        if self.patch_embedding_init == "xavier" and self.patch_embedding_type != "patch":
            raise ValueError(
                f"patch_embedding_init='xavier' starts the 'patch' projection (one linear map per patch); "
                f"patch_embedding_type={self.patch_embedding_type!r} has none"
            )
        if self.max_num_patches is not None:
            check_positive(self, "max_num_patches")
            patch_h, patch_w = to_2tuple(self.patch_size)
            if self.patch_embedding_type != "patch" or patch_h != patch_w:
                raise ValueError(
                    f"max_num_patches (NaFlex) needs square 'patch' patches; got patch_embedding_type="
                    f"{self.patch_embedding_type!r}, patch_size {self.patch_size}"
                )
        for image, patch in zip(to_2tuple(self.image_size), to_2tuple(self.patch_size)):
            if image % patch:
                raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        check_masking(self, to_2tuple(self.patch_size)[0])
        check_positive(
            self,
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
        )
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by "
                f"decoder_num_attention_heads ({self.decoder_num_attention_heads})"
            )
        if self.decoder_hidden_size % 4:  # the decoder's fixed 2D sine-cosine positions take a quarter each
            raise ValueError(f"decoder_hidden_size must be divisible by 4, got {self.decoder_hidden_size}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, columns) of patches at `image_size`."""
        return tuple(i // p for i, p in zip(to_2tuple(self.image_size), to_2tuple(self.patch_size)))


__all__ = ["HfViTConfig", "VIT_PRESETS", "ViTEncoderConfig"]
