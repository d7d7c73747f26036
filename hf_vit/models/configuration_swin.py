"""Configuration of the Swin Transformer (model_type `hf_swin`)."""

from typing import ClassVar

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .configuration_utils import DefaultStagesMixin, PresetsMixin, check_masking, check_positive, check_probability


def _swin(embed_dim, depths, num_heads, image_size=224, patch_size=4, window_size=7):
    return dict(
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(num_heads),
        image_size=image_size,
        patch_size=patch_size,
        window_size=window_size,
    )


SWIN_PRESETS = {
    "swin-tiny-patch4-window7-224": _swin(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin-small-patch4-window7-224": _swin(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin-base-patch4-window7-224": _swin(128, (2, 2, 18, 2), (4, 8, 16, 32)),
    # For 32 px images (digits, CIFAR): 2 px patches give 16x16 -> 8x8 -> 4x4 maps, 4x4 windows.
    "swin-cifar-patch2-window4-32": _swin(64, (2, 2, 2), (2, 4, 8), image_size=32, patch_size=2, window_size=4),
}


class HfSwinConfig(PresetsMixin, DefaultStagesMixin, BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of [`HfSwinModel`], [`HfSwinForImageClassification`] and [`HfSwinBackbone`].
    Defaults give Swin-T at 224 px.

    Args:
        image_size (`int`, defaults to 224): the resolution the image processor prepares (and training uses); a
            multiple of `patch_size * 2**(stages - 1)` so that no patch merging pads. The model itself runs at any
            size: feature maps are padded to whole patches, pairs and windows.
        patch_size (`int`, defaults to 4): side of the patches the first stage sees.
        num_channels (`int`, defaults to 3): input channels.
        embed_dim (`int`, defaults to 96): channels of the first stage; doubled by every patch merging.
        depths (`list[int]`, defaults to `[2, 2, 6, 2]`): Swin blocks per stage.
        num_heads (`list[int]`, defaults to `[3, 6, 12, 24]`): attention heads per stage.
        window_size (`int`, defaults to 7): side of the attention windows; a stage whose map is no larger than
            that attends over the whole map instead, without shift.
        mlp_ratio (`float`, defaults to 4.0): MLP width / channels.
        qkv_bias (`bool`, defaults to `True`): bias in the query/key/value projection.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on attention weights.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth of the last block, linear over all blocks.
        use_absolute_embeddings (`bool`, defaults to `False`): add learned absolute position embeddings to the
            patch grid (the relative position bias is always there).
        patch_norm (`bool`, defaults to `True`): LayerNorm after the patch embedding.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal initialisation.
        out_features (`list[str]`, *optional*): stages the backbone returns, from `stage_names`
            (`["stem", "stage1", ..., "stageN"]`); defaults to the last.
        out_indices (`list[int]`, *optional*): the same, by index into `stage_names`.
        mask_ratio (`float`, defaults to 0.6): `HfSwinForMaskedImageModeling` (SimMIM): fraction of the image masked,
            in (0, 1).
        mask_patch_size (`int`, *optional*): SimMIM masks square blocks of this many pixels, a multiple of
            patch_size; default `total_stride` (32 for Swin-T, SimMIM's).
    """

    model_type = "hf_swin"
    presets: ClassVar[dict] = SWIN_PRESETS

    image_size: int = 224
    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    use_absolute_embeddings: bool = False
    patch_norm: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    mask_ratio: float = 0.6
    mask_patch_size: int | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        check_positive(
            self,
            "image_size",
            "patch_size",
            "num_channels",
            "embed_dim",
            "depths",
            "num_heads",
            "window_size",
            "mlp_ratio",
            "layer_norm_eps",
            "initializer_range",
        )
        check_probability(self, "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
        check_masking(self, self.patch_size)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"depths and num_heads need one entry per stage, got {len(self.depths)} depths {self.depths} and "
                f"{len(self.num_heads)} num_heads {self.num_heads}"
            )
        for stage, heads in enumerate(self.num_heads):
            if self.stage_dims[stage] % heads:
                raise ValueError(
                    f"num_heads[{stage}] = {heads} must divide stage {stage + 1}'s width "
                    f"embed_dim * 2**{stage} = {self.stage_dims[stage]}"
                )
        if self.image_size % self.total_stride:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size * 2**(stages - 1) = {self.total_stride}"
                " so that training images need no padding (the model itself accepts any size at inference)"
            )
        # The width of the last stage, under the name other transformers code looks for; always derived (a saved
        # config's value would be stale once embed_dim or depths change).
        kwargs.pop("hidden_size", None)
        self.hidden_size = self.stage_dims[-1]
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @property
    def pooled_size(self) -> int:
        """Width of `pooler_output`, the head's input: the average of the last stage's map."""
        return self.hidden_size

    @property
    def total_stride(self) -> int:
        """Pixels per token of the last stage, patch_size * 2**(stages - 1): image sides that are multiples of it
        go through every stage without padding."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    @property
    def stage_dims(self) -> list[int]:
        """Channels of each stage: embed_dim, 2 * embed_dim, 4 * embed_dim, ..."""
        return [self.embed_dim * 2**i for i in range(len(self.depths))]


__all__ = ["HfSwinConfig", "SWIN_PRESETS"]
