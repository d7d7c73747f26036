"""Reading a checkpoint's weights for any job, checked: every job that starts from a checkpoint loads it here.

load_checkpoint(model_class, name_or_path, new_heads=False, **kwargs) -> model
    transformers' `from_pretrained`, with a checkpoint that has no weights, unreadable (truncated) weights, or
    weights that do not fit the model refused in one line (`CheckpointMismatchError`), naming the keys
set_token_merging(model, count) -> token merging (ToMe) for a loaded model, or a one-line refusal
"""

from safetensors import SafetensorError

from .guards import UsageError, check_local_path
from .models.configuration_utils import CheckpointMismatchError

SHOWN_KEYS = 6  # keys named in a refusal; the count says how many more
TOKEN_MERGING_HELP = (
    "Token merging (ToMe): tokens merged per block, for speed (hf_vit, hf_deit, hf_vit_hybrid; 0: off). "
    "Serving fast in the docs has the speed and accuracy per value."
)


def head_prefixes(model) -> tuple[str, ...]:
    """The state-dict prefixes of what `model` adds on its base model (its heads), e.g. ("classifier.",); a base
    model has none."""
    base = getattr(model, "base_model", model)
    return tuple(f"{name}." for name, child in model.named_children() if child is not base)


def listed(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else "")


def check_loading_info(model, info: dict, name_or_path: str, new_heads: bool) -> None:
    """Refuse weights that do not fit `model`: any missing or misshapen key of its base model (weights of another
    family, say: `vit.` keys under `deit.`), and, unless `new_heads` (a fine-tuning run that starts its heads afresh),
    any missing head key. Unexpected keys alone pass: a pretraining checkpoint's decoder is left out, as transformers
    leaves it; beside missing ones they are named, to show what the checkpoint holds instead."""
    heads = head_prefixes(model)
    misshapen = [key for key, *_ in info.get("mismatched_keys", [])]
    bad = [key for key in sorted(info["missing_keys"]) + misshapen if not (new_heads and key.startswith(heads))]
    if not bad:
        return
    unexpected = sorted(info["unexpected_keys"])
    head_only = all(key.startswith(heads) for key in bad)
    raise CheckpointMismatchError(
        f"{name_or_path!r} does not fit {type(model).__name__}: missing or misshapen {listed(bad)}"
        + (f"; unexpected {listed(unexpected)}" if unexpected else "")
        + (
            "; it has no trained head: fine-tune it first (hf-vit finetune, or hf-vit probe --method linear)"
            if head_only
            else "; is config.json's model_type the checkpoint's own?"
        )
    )


def load_checkpoint(model_class, name_or_path: str, new_heads: bool = False, **kwargs):
    """`model_class.from_pretrained(name_or_path, **kwargs)` (an Auto class or a model class), checked
    (`check_loading_info`); a local-looking path that does not exist, a folder without weights or with a truncated
    weights file is a `UsageError` naming it (nothing is looked up on the Hub for a mistyped path)."""
    check_local_path(name_or_path, "checkpoint")
    try:
        model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except SafetensorError as error:
        message = f"Cannot read the weights of {name_or_path!r} (truncated, or not safetensors?): {error}"
        raise UsageError(message) from error
    except OSError as error:
        raise UsageError(f"Cannot load {name_or_path!r}: {error}") from error
    check_loading_info(model, info, name_or_path, new_heads)
    return model


def set_token_merging(model, count: int) -> None:
    """Run `model` with token merging (ToMe: `count` tokens merged per block; 0: off) from now on. A family without
    the `token_merging` field (Swin's windows, a transformers model) or a model it does not fit (rotary positions)
    is a `UsageError` in one line."""
    config = model.config
    if not hasattr(type(config), "check_token_merging"):
        if count:
            raise UsageError(
                f"--token_merging: {config.model_type} cannot merge tokens; token merging needs global attention "
                "over one token sequence (hf_vit, hf_deit, hf_vit_hybrid), and Swin attends within windows"
            )
        return
    previous, config.token_merging = config.token_merging, count
    try:
        config.check_token_merging()
    except ValueError as error:
        config.token_merging = previous
        raise UsageError(f"--token_merging {count}: {error}") from error
