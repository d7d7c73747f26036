"""What every family's configuration shares: validators that name the bad field, and named presets.

Checkpoints carry this file beside their configuration file (``trust_remote_code``), so it imports only the
standard library.
"""

import copy
from typing import ClassVar


class CheckpointMismatchError(ValueError):
    """Weights that don't fit the model, or a config that does not describe them: the message names every missing,
    unexpected or misshapen key, or every field that differs. A problem of the input (`input_error`), so a command
    reports it in one line."""

    input_error = True


def to_2tuple(value) -> tuple[int, int]:
    """An int or a pair -> (height, width)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def check_positive(config, *names: str) -> None:
    """Raise a ValueError naming the first of `names` whose value is not a positive number (or pair of them)."""
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
            raise ValueError(f"{name} must be positive, got {value!r}")


def check_probability(config, *names: str) -> None:
    """Raise a ValueError naming the first of `names` outside [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_masking(config, patch_size: int) -> None:
    """Masked-image-modeling fields: `mask_ratio` in (0, 1); `mask_patch_size` (if set) a positive multiple of
    `patch_size`."""
    if not 0.0 < config.mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {config.mask_ratio!r}")
    if config.mask_patch_size is not None:
        check_positive(config, "mask_patch_size")
        if config.mask_patch_size % patch_size:
            raise ValueError(
                f"mask_patch_size {config.mask_patch_size} must be a multiple of the patch size {patch_size}"
            )


def check_choice(config, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


class PresetsMixin:
    """`from_preset(name, **overrides)` for configs with a `presets` table of named architectures."""

    presets: ClassVar[dict] = {}

    @classmethod
    def from_preset(cls, name: str, **overrides):
        if name not in cls.presets:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(cls.presets)}")
        return cls(**{**copy.deepcopy(cls.presets[name]), **overrides})


class DefaultStagesMixin:
    """For backbone configs (before transformers' `BackboneConfigMixin`): the saved dict leaves out the stage names
    (the config derives them from its depth) and `out_features` / `out_indices` while they are the default (the
    last stage), so a config rebuilt with another depth gets that depth's default instead of a stage it lacks."""

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("stage_names", None)
        if output.get("out_indices") == [len(self.stage_names) - 1]:
            output["out_features"] = output["out_indices"] = None
        return output
