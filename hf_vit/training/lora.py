"""LoRA (Hu et al. 2021) through PEFT: train small low-rank adapters on a frozen checkpoint, plus the new head.

    LoraArguments                 `--lora_rank R` (and alpha, dropout, target modules, merge)
    add_lora(model, args)         -> a `peft.PeftModel`: adapters on the target modules, the heads trained whole
    merged_model(peft_model)      -> the plain hf_vit model with the adapters folded into its weights (for export)

peft is imported only when LoRA is asked for, so the rest of hf_vit runs without it.
"""

from dataclasses import dataclass, field

import torch

# Module names (or name endings) that get adapters by default: every attention's fused query/key/value projection
# and its output projection (ViT, DeiT, the hybrid's encoder, Swin's windows).
DEFAULT_TARGETS = "attention.qkv,attention.proj"


@dataclass
class LoraArguments:
    """Low-rank adapters instead of full fine-tuning (needs peft: pip install peft)."""

    _argument_group_name = "LoRA"

    lora_rank: int | None = field(
        default=None,
        metadata={
            "help": "Train LoRA adapters of this rank on a frozen model (plus its head); unset: full fine-tuning."
        },
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 x rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapters' input."})
    lora_target: str = field(
        default=DEFAULT_TARGETS,
        metadata={
            "help": "Comma-separated module names (or name endings) that get adapters: linear layers of the model."
        },
    )
    lora_merge: bool = field(
        default=False,
        metadata={
            "help": "Also write the model with the adapters merged into its weights to OUTPUT_DIR/merged (a plain "
            "hf_vit checkpoint: pipeline(), scripts/export.py)."
        },
    )


def check_lora_arguments(args: LoraArguments) -> None:
    if args.lora_rank is None:
        return
    if isinstance(args.lora_rank, bool) or args.lora_rank <= 0:
        raise ValueError(f"--lora_rank must be a positive integer, got {args.lora_rank!r}")
    if args.lora_alpha is not None and args.lora_alpha <= 0:
        raise ValueError(f"--lora_alpha must be positive, got {args.lora_alpha!r}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout!r}")
    try:
        import peft  # noqa: F401
    except ImportError as error:
        raise ImportError("--lora_rank needs peft: pip install peft (or hf_vit[lora])") from error


def lora_targets(model: torch.nn.Module, lora_target: str) -> list[str]:
    """The target names of `lora_target`, each checked to name at least one linear layer of `model` (as PEFT
    matches them: the whole module name, or its ending after a dot)."""
    targets = [target.strip() for target in lora_target.split(",") if target.strip()]
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for target in targets or [lora_target]:
        if not any(name == target or name.endswith("." + target) for name in linear):
            endings = sorted({".".join(name.split(".")[-2:]) for name in linear})
            raise ValueError(
                f"--lora_target {target!r} matches no linear layer of {type(model).__name__}; its linear "
                f"layers end in {endings}"
            )
    return targets


def head_modules(model: torch.nn.Module) -> list[str]:
    """The classifier's modules outside its base model (its heads): trained whole, and saved with the adapter."""
    base = model.base_model
    return [name for name, module in model.named_children() if module is not base]


def add_lora(model: torch.nn.Module, args: LoraArguments):
    """`model` frozen, with LoRA adapters of `args.lora_rank` on `args.lora_target` and its heads trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha or 2 * args.lora_rank,
        lora_dropout=args.lora_dropout,
        target_modules=lora_targets(model, args.lora_target),
        modules_to_save=head_modules(model),
    )
    return get_peft_model(model, config)


def merged_model(peft_model) -> torch.nn.Module:
    """The hf_vit model underneath `peft_model`, with every adapter folded into the weights it adapts."""
    return peft_model.merge_and_unload()


def trainable_fraction(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())
