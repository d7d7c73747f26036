"""The arguments of hf_vit's jobs and the checks every job runs on the model it is given.

ModelArguments                 which model: a family's preset or a checkpoint, config overrides
check_model_source(...)        -> ModelSource: the family and its config, read and checked once
HfViTTrainingArguments         TrainingArguments with hf_vit's defaults (per-epoch evaluation, workers)
FinetuneTrainingArguments      ... for classifiers: the recipe fills in the learning rate, decay and warmup
PretrainTrainingArguments      ... with MAE's optimisation
"""

import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.utils import logging

from ..cli import check_config_overrides, parse_config_overrides
from ..guards import check_local_path
from ..registry import FAMILIES, Family, family_of
from .distributed import default_workers, has_accelerator

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model a job starts from: a family's preset (random weights) or a checkpoint."""

    _argument_group_name = "model"

    model_type: str = field(default="hf_vit", metadata={"help": f"One of {sorted(FAMILIES)}."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A checkpoint directory or Hub id to start from (else: random weights)."}
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": "Named architecture for a fresh model (default: "
            f"{ {name: family.default_preset for name, family in FAMILIES.items()} })."
        },
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated config fields, e.g. 'hidden_size=64,drop_path_rate=0.1'."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2, ..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})


@dataclass(frozen=True)
class ModelSource:
    """What a job's model starts from, checked: its family, the config to build (a checkpoint's, or the preset's)
    and the config overrides; `from_checkpoint` when the weights come from `ModelArguments.model_name_or_path`."""

    family: Family
    config: object
    overrides: dict
    from_checkpoint: bool

    def with_fields(self, **fields):
        """The config rebuilt with the overrides and `fields` (labels, image size, ingredients): built anew, so that
        the fields derived from them (a Swin's `hidden_size`, the backbone stages) follow."""
        config = type(self.config)(**{**self.config.to_dict(), **self.overrides, **fields})
        if self.config._attn_implementation is not None:
            config._attn_implementation = self.config._attn_implementation
        return config


def check_model_source(args: ModelArguments, image_size=None, **fields) -> ModelSource:
    """Every check of the model a job is given, before any data is read: the model type and preset, the checkpoint's
    path (its config read here, once), the config overrides (names, values, and none that would start a checkpoint's
    weights at random), and `fields` a job adds (ingredients, the mask ratio) validated by the config itself."""
    family = family_of(args.model_type)
    if args.preset is not None and args.preset not in family.config_class.presets:
        raise ValueError(
            f"Unknown --preset {args.preset!r} for {family.model_type}; choose one of "
            f"{sorted(family.config_class.presets)}"
        )
    overrides = parse_config_overrides(args.config_overrides)
    if args.model_name_or_path is not None:
        check_local_path(args.model_name_or_path, "--model_name_or_path")
        config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
        family = family_of(config.model_type)
        check_config_overrides(config, overrides)
        check_overrides_keep_weights(family, config, overrides, args.model_name_or_path)
    else:
        config = family.config(args.preset)
        check_config_overrides(config, overrides)
    for name in fields:
        if name not in config.to_dict():
            raise ValueError(f"--{name} does not apply to {family.model_type}: its config has no {name!r} field")
    size = {} if image_size is None else {"image_size": image_size}
    type(config)(**{**config.to_dict(), **overrides, **fields, **size})  # the config's own validation of the values
    if args.attn_implementation is not None:
        config._attn_implementation = args.attn_implementation
    return ModelSource(family, config, overrides, args.model_name_or_path is not None)


def weight_shapes(family: Family, config) -> dict[str, tuple]:
    """{name: shape} of the base model's weights under `config`, built on the meta device (nothing computed)."""
    with torch.device("meta"):
        return {name: tuple(tensor.shape) for name, tensor in family.base_model_class(config).state_dict().items()}


def check_overrides_keep_weights(family: Family, config, overrides: dict, checkpoint: str) -> None:
    """Config overrides of a checkpoint may not change the shape of its weights: `from_pretrained` would start those
    at random, with only a warning (`image_size=64` on a 32 px checkpoint re-initialises the position embeddings;
    `--image_size` resamples them). Raises naming the overrides and the weights."""
    shapes = weight_shapes(family, config)
    culprits = {}
    for name, value in overrides.items():
        changed = weight_shapes(family, type(config)(**{**config.to_dict(), name: value}))
        differ = sorted(key for key in shapes.keys() | changed.keys() if shapes.get(key) != changed.get(key))
        if differ:
            culprits[name] = differ
    if culprits:
        details = "; ".join(
            f"{name}={overrides[name]!r} changes {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for name, keys in culprits.items()
        )
        resize = (
            " (to train at another resolution use --image_size, which resamples the position embeddings)"
            if "image_size" in culprits
            else ""
        )
        raise ValueError(
            f"--config_overrides would start weights of the checkpoint {checkpoint!r} at random: {details}{resize}"
        )


def check_backbone_learning_rate(training_args, config) -> None:
    """`backbone_learning_rate` needs a model with a CNN backbone (a config with a `backbone_config`)."""
    if (
        getattr(training_args, "backbone_learning_rate", None) is not None
        and getattr(config, "backbone_config", None) is None
    ):
        raise ValueError(
            f"--backbone_learning_rate needs a model with a CNN backbone (hf_vit_hybrid), not {config.model_type}"
        )


@dataclass
class HfViTTrainingArguments(TrainingArguments):
    """`TrainingArguments` with hf_vit's defaults: an evaluation, a checkpoint and a log line per epoch, cosine
    schedule, the image column kept for the transforms, data-loading workers from the cores, and on CPU the cores
    split between the processes."""

    _argument_group_name = "Trainer (transformers TrainingArguments)"

    num_train_epochs: float = field(default=20.0, metadata={"help": "Total number of training epochs."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per process."})
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."}
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "When to save checkpoints: no, steps or epoch."}
    )
    save_steps: float | None = field(
        default=None,
        metadata={"help": "Save a checkpoint every this many steps; given alone, it implies --save_strategy steps."},
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep at most this many checkpoints."})
    logging_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to log: no, steps or epoch."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the image column is consumed by the transforms."}
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Data-loading worker processes per training process (default: `default_workers`: none when "
            "the model trains on the CPU cores, else the cores per process but one, at most 8)."
        },
    )
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={
            "help": "Keep the data-loading workers between epochs, not restarted for each (default: when there are "
            "workers)."
        },
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pin batches in page-locked memory for faster copies to the GPU (default: with a GPU)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write over a run already in the output directory: its checkpoints are removed when training "
            "starts, its other files replaced (else an output directory that is not empty is refused)."
        },
    )
    cpu_threads_per_process: int | None = field(
        default=None,
        metadata={
            "help": "Torch threads per process when training on CPU (default: the cores split evenly "
            "between processes; `accelerate launch` alone would pin 1)."
        },
    )
    torch_compile_whole_model: bool = field(
        default=False,
        metadata={
            "help": "With --torch_compile, compile the whole model as one graph; by default its repeated blocks are "
            "compiled once and reused (regional compilation: the same steady speed, compiled several times faster)."
        },
    )

    def __post_init__(self):
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be at least 1, got {getattr(self, flag)}")
        if self.save_steps is None:
            self.save_steps = 500  # TrainingArguments' own, read only with --save_strategy steps
        elif self.save_strategy == "epoch":  # hf_vit's default: --save_steps alone means saving by steps
            logger.warning("--save_steps %g given: saving by steps (--save_strategy steps)", self.save_steps)
            self.save_strategy = "steps"
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available()
        if not has_accelerator() and not self.use_cpu and world_size > 1:
            # `accelerate launch --multi_gpu --num_processes N` without an accelerator would otherwise start N
            # unrelated single-process runs; CPU mode makes them one data-parallel run over gloo.
            logger.warning("No GPU found: running the %d processes data-parallel on CPU (gloo).", world_size)
            self.use_cpu = True
        if self.fp16 and (self.use_cpu or not has_accelerator()):
            # accelerate would run the whole job in fp32 without a word
            raise ValueError("--fp16 needs a GPU (on a CPU it would train in fp32); use --bf16 there")
        super().__post_init__()
        # pinned batches are copied to the accelerator while it computes (accelerate's non-blocking transfers)
        self.accelerator_config.non_blocking = self.dataloader_pin_memory

    @property
    def cpu_threads(self) -> int:
        """Torch threads per process on a machine without an accelerator: `cpu_threads_per_process`, else the cores
        split evenly between the processes (`HfViTTrainer` sets them)."""
        return self.cpu_threads_per_process or max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1")))


@dataclass
class FinetuneTrainingArguments(HfViTTrainingArguments):
    """`HfViTTrainingArguments` for classifiers, with defaults that train a small ViT from scratch well.

    `learning_rate`, `weight_decay` and `warmup_steps` are left unset (None) for the recipe to choose
    (`recipes.resolve_recipe`); a value given here always wins.
    """

    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak AdamW learning rate (default: the recipe's)."}
    )
    weight_decay: float | None = field(
        default=None,
        metadata={
            "help": "AdamW weight decay, not on biases, norms, "
            "position embeddings or prefix tokens (default: the recipe's)."
        },
    )
    warmup_steps: float | None = field(
        default=None,
        metadata={
            "help": "Linear warmup: a step count, or a float in [0, 1) for a fraction of all steps (default: "
            "the recipe's)."
        },
    )
    backbone_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of a hybrid's CNN backbone (default: --learning_rate); lower it to "
            "keep pretrained features (or freeze them: --config_overrides freeze_backbone=True)."
        },
    )

    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "'balanced': weigh each class's loss by the inverse of its share of the training images "
            "(multi-label: each class's positives by its negatives / positives, BCE's pos_weight), for imbalanced "
            "data."
        },
    )

    def _validate_args(self):
        if self.class_weights not in (None, "balanced"):
            raise ValueError(f"--class_weights must be 'balanced' (or left out), got {self.class_weights!r}")
        # transformers checks `warmup_steps >= 0` here; unset (None) is the recipe's to fill in later.
        unset = self.warmup_steps is None
        if unset:
            self.warmup_steps = 0
        super()._validate_args()
        if unset:
            self.warmup_steps = None


@dataclass
class PretrainTrainingArguments(HfViTTrainingArguments):
    """`HfViTTrainingArguments` with MAE's optimisation (AdamW with beta2 0.95, weight decay 0.05, warmup, cosine)
    at a learning rate and length that pretrain the small presets on a few thousand images."""

    num_train_epochs: float = field(default=100.0, metadata={"help": "Total number of training epochs."})
    learning_rate: float = field(default=1.5e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases, norms, tokens)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Linear warmup: steps, or a fraction of them below 1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MAE's 0.95)."})
