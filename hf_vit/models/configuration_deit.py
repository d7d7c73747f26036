"""Configuration of DeiT, the data-efficient image transformer (model_type `hf_deit`)."""

from typing import ClassVar

from .configuration_utils import check_choice, check_positive
from .configuration_vit import VIT_PRESETS, HfViTConfig

DEIT_PRESETS = {
    "deit-tiny-patch16-224": VIT_PRESETS["vit-tiny-patch16-224"],
    "deit-small-patch16-224": VIT_PRESETS["vit-small-patch16-224"],
    "deit-base-patch16-224": VIT_PRESETS["vit-base-patch16-224"],
    "deit-cifar-patch4-32": VIT_PRESETS["vit-cifar-patch4-32"],
}


class HfDeiTConfig(HfViTConfig):
    r"""Configuration of [`HfDeiTModel`] and [`HfDeiTForImageClassification`]: every `HfViTConfig` field, plus

    Args:
        distillation_type (`str`, defaults to `"hard"`): what the distillation head learns from a teacher:
            `"hard"` its argmax labels, `"soft"` its temperature-softened distribution, `"none"` no teacher (both
            heads learn from the labels).
        distillation_alpha (`float`, defaults to 0.5): weight of the distillation term,
            `loss = (1 - alpha) * CE(cls_logits, labels) + alpha * D`.
        distillation_tau (`float`, defaults to 1.0): temperature of soft distillation.
    """

    model_type = "hf_deit"
    presets: ClassVar[dict] = DEIT_PRESETS

    distillation_type: str = "hard"
    distillation_alpha: float = 0.5
    distillation_tau: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_choice(self, "distillation_type", ("hard", "soft", "none"))
        check_positive(self, "distillation_tau")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha!r}")
        if self.pooling != "cls":
            raise ValueError(
                "pooling must be 'cls' for hf_deit (its heads read the CLS and distillation tokens), got "
                f"{self.pooling!r}"
            )


__all__ = ["DEIT_PRESETS", "HfDeiTConfig"]
