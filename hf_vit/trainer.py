"""The Trainer subclasses and what they run each step.

    HfViTTrainingArguments         TrainingArguments with hf_vit's defaults (per-epoch evaluation, CPU threads)
    FinetuneTrainingArguments      ... for classifiers; the recipe fills in the rest
    HfViTTrainer                   Trainer + ViT weight-decay groups, layer-wise and backbone learning rates,
                                   hf_vit's model cards
    ImageClassificationTrainer     HfViTTrainer + teacher distillation, batch mixing, repeated augmentation, EMA
    PretrainingTrainer             HfViTTrainer for masked-image-modeling models (the loss is the metric)
    BatchMixer, RepeatedAugmentationSampler, ModelEMA, TeacherInputAdapter   their parts
"""

import inspect
import math
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from datasets import IterableDataset
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, SaveStrategy, SchedulerType, get_last_checkpoint
from transformers.utils import logging

from .cards import CURVES_FILE, plot_training_curves, replaced_atomically, write_model_card
from .key_maps import CheckpointMismatchError
from .layers import PreNormBlock
from .recipes import TRAINING_INGREDIENTS, check_layer_decay

logger = logging.get_logger(__name__)

EMA_FILE = "ema.safetensors"  # the EMA of the weights, in every checkpoint of a run with one


@dataclass
class HfViTTrainingArguments(TrainingArguments):
    """`TrainingArguments` with hf_vit's defaults: an evaluation, a checkpoint and a log line per epoch, cosine
    schedule, the image column kept for the transforms, and on CPU the cores split between the processes."""

    _argument_group_name = "Trainer (transformers TrainingArguments)"

    num_train_epochs: float = field(default=20.0, metadata={"help": "Total number of training epochs."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per process."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to save checkpoints: no, steps or epoch."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep at most this many checkpoints."})
    logging_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to log: no, steps or epoch."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the image column is consumed by the transforms."}
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "Data-loading worker processes per training process (default: `default_workers`: none when "
                  "the model trains on the CPU cores, else the cores per process but one, at most 8)."},
    )  # fmt: skip
    dataloader_persistent_workers: bool | None = field(
        default=None,
        metadata={"help": "Keep the data-loading workers between epochs, not restarted for each (default: when there are "
                  "workers)."},
    )  # fmt: skip
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin batches in page-locked memory for faster copies to the GPU (default: with a GPU)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write over a run already in the output directory: its checkpoints are removed when training "
                  "starts, its other files replaced (else an output directory that is not empty is refused)."},
    )  # fmt: skip
    cpu_threads_per_process: int | None = field(
        default=None,
        metadata={"help": "Torch threads per process when training on CPU (default: the cores split evenly "
                  "between processes; `accelerate launch` alone would pin 1)."},
    )  # fmt: skip

    def __post_init__(self):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available()
        if not has_accelerator():
            # `accelerate launch --multi_gpu --num_processes N` without an accelerator would otherwise start N
            # unrelated single-process runs; CPU mode makes them one data-parallel run over gloo.
            if not self.use_cpu and world_size > 1:
                logger.warning("No GPU found: running the %d processes data-parallel on CPU (gloo).", world_size)
                self.use_cpu = True
            threads = self.cpu_threads_per_process or max(1, (os.cpu_count() or 1) // world_size)
            if threads != torch.get_num_threads():
                logger.info("Training on CPU with %d torch threads per process.", threads)
                torch.set_num_threads(threads)
        super().__post_init__()


@dataclass
class FinetuneTrainingArguments(HfViTTrainingArguments):
    """`HfViTTrainingArguments` for classifiers, with defaults that train a small ViT from scratch well.

    `learning_rate`, `weight_decay` and `warmup_steps` are left unset (None) for the recipe to choose
    (`recipes.resolve_recipe`); a value given here always wins.
    """

    learning_rate: float | None = field(default=None, metadata={"help": "Peak AdamW learning rate (default: the recipe's)."})
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay, not on biases, norms, "
                                       "position embeddings or prefix tokens (default: the recipe's)."})  # fmt: skip
    warmup_steps: float | None = field(
        default=None,
        metadata={"help": "Linear warmup: a step count, or a float in [0, 1) for a fraction of all steps (default: "
                  "the recipe's)."},
    )  # fmt: skip
    backbone_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of a hybrid's CNN backbone (default: --learning_rate); lower it to "
                  "keep pretrained features (or freeze them: --config_overrides freeze_backbone=True)."},
    )  # fmt: skip

    def _validate_args(self):
        # transformers checks `warmup_steps >= 0` here; unset (None) is the recipe's to fill in later.
        unset = self.warmup_steps is None
        if unset:
            self.warmup_steps = 0
        super()._validate_args()
        if unset:
            self.warmup_steps = None


def default_workers(processes_on_machine: int) -> int:
    """Data-loading workers per training process: none when the model trains on the CPU (the input pipeline, well
    under the training step's cost, would take cores from it: the benchmark's `data` suite), else every core the
    process has but its own, at most 8."""
    if not has_accelerator():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // max(processes_on_machine, 1) - 1))


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def global_batch_size(training_args) -> int:
    """Images per optimizer step over all processes."""
    return (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size)  # fmt: skip


class BatchMixer:
    """Mixup / CutMix on a training batch, then label smoothing: labels (B,) ids -> (B, C) soft targets.

    One mixing ratio per batch, and each image is mixed with the one before it in the batch (the first with the last;
    `partners`), as torchvision's MixUp / CutMix pair them; `RepeatedAugmentationSampler` lays its copies out so that
    no image meets a copy of itself. CutMix's box and its label weight follow torchvision's.
    """

    def __init__(self, num_classes: int, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, label_smoothing=0.0):
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        # the chance of CutMix when a batch is mixed
        self.cutmix_prob = (switch_prob if mixup_alpha > 0 else 1.0) if cutmix_alpha > 0 else 0.0

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.label_smoothing > 0

    @staticmethod
    def partners(batch_size: int) -> torch.Tensor:
        """(B,) the index each image is mixed with: the one before it, the first with the last."""
        return torch.arange(batch_size).roll(1)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        targets = labels.float() if labels.is_floating_point() else F.one_hot(labels, self.num_classes).float()
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            partners = self.partners(len(pixel_values)).to(pixel_values.device)
            cutmix = torch.rand(()).item() < self.cutmix_prob  # host-side draws: nothing waits for the device
            alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            if cutmix:
                pixel_values, lam = cut_and_paste(pixel_values, pixel_values[partners], lam)
            else:
                pixel_values = pixel_values * lam + pixel_values[partners] * (1 - lam)
            targets = targets * lam + targets[partners] * (1 - lam)
        if self.label_smoothing > 0:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return pixel_values, targets


def cut_and_paste(images: torch.Tensor, others: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """CutMix: a box of area ~(1 - lam) at a random centre, clipped to the image, pasted from `others`; returns the
    images and the share of each image left (the label weight). (B, C, H, W) -> (B, C, H, W)."""
    height, width = images.shape[-2:]
    centre_y, centre_x = int(torch.randint(height, ())), int(torch.randint(width, ()))
    half = 0.5 * math.sqrt(1.0 - lam)
    half_h, half_w = int(half * height), int(half * width)
    top, bottom = max(centre_y - half_h, 0), min(centre_y + half_h, height)
    left, right = max(centre_x - half_w, 0), min(centre_x + half_w, width)
    images = images.clone()
    images[..., top:bottom, left:right] = others[..., top:bottom, left:right]
    return images, 1.0 - (bottom - top) * (right - left) / (height * width)


def images_per_batch(batch_size: int, repeats: int) -> int:
    """How many images a batch of `batch_size` holds under `repeats`-fold repeated augmentation: the fewest that
    need no more than `repeats` copies each and keep every copy away from the image before it (`BatchMixer.partners`:
    position i holds image i mod m, so only the first and the last position could meet)."""
    images = max(-(-batch_size // repeats), min(2, batch_size))
    while images < batch_size and (batch_size - 1) % images == 0:
        images += 1
    return images


class RepeatedAugmentationSampler(torch.utils.data.Sampler):
    """Repeated augmentation (Hoffer et al. 2020, DeiT): each image `repeats` times per epoch, each copy augmented on
    its own, the copies in the same batch; the epoch keeps its length (n indices from about n / repeats images).

    Each batch of `batch_size` indices holds m images laid out as [a, b, c, ..., a, b, c, ...] (`images_per_batch`),
    so the copies of an image stand m apart and `BatchMixer` never mixes an image with itself. Every process draws the
    same order (seeded by seed + epoch); accelerate hands each process whole batches of it.
    """

    def __init__(self, num_samples: int, batch_size: int, repeats: int = 3, seed: int = 0):
        self.num_samples, self.repeats, self.seed, self.batch_size, self.epoch = num_samples, repeats, seed, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        indices, drawn = [], 0
        for start in range(0, self.num_samples, self.batch_size):
            size = min(self.batch_size, self.num_samples - start)
            count = images_per_batch(size, self.repeats)
            images = [order[(drawn + i) % self.num_samples] for i in range(count)]
            drawn += count
            indices += [images[position % count] for position in range(size)]
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples


def averaged_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What an EMA of `model` follows, by state-dict name: its trainable parameters and its buffers (BatchNorm
    statistics). Frozen weights (a LoRA base model, a frozen backbone) never change, so averaging them is a no-op."""
    parameters = dict(model.named_parameters())
    return {name: tensor for name, tensor in model.state_dict(keep_vars=True).items()
            if name not in parameters or parameters[name].requires_grad}  # fmt: skip


class ModelEMA:
    """Exponential moving average of a model's weights: `ema = decay * ema + (1 - decay) * weights` per step, over
    what can change (`averaged_tensors`).

    Saved with every checkpoint (`EMA_FILE`) and restored on resume, so a resumed run averages what the
    uninterrupted one would have."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: tensor.detach().clone() for name, tensor in averaged_tensors(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        averaged, trained = [], []  # one fused lerp over all floating-point tensors: it runs every step
        for name, tensor in averaged_tensors(model).items():
            if tensor.dtype.is_floating_point:
                averaged.append(self.shadow[name])
                trained.append(tensor.detach())
            else:
                self.shadow[name].copy_(tensor)
        torch._foreach_lerp_(averaged, trained, 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged values into `model` for good."""
        for name, tensor in averaged_tensors(model).items():
            tensor.copy_(self.shadow[name])

    @contextmanager
    def applied_to(self, model: torch.nn.Module):
        """Swap the averaged weights in for the duration of the block."""
        trained = {name: tensor.detach().clone() for name, tensor in averaged_tensors(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, tensor in averaged_tensors(model).items():
                    tensor.copy_(trained[name])

    def save(self, directory: str) -> None:
        tensors = {name: tensor.contiguous() for name, tensor in self.shadow.items()}
        with replaced_atomically(os.path.join(directory, EMA_FILE)) as path:
            save_file(tensors, path)

    @torch.no_grad()
    def load(self, directory: str) -> None:
        """Restore the average saved in a checkpoint; a checkpoint without one (or of another model) is an error."""
        path = os.path.join(directory, EMA_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory} has no {EMA_FILE}: it was saved without an EMA of the weights, so resuming with one "
                "would restart the average; resume with --ema_decay 0, or start again"
            )
        saved = load_file(path)
        if saved.keys() != self.shadow.keys():
            raise CheckpointMismatchError(
                f"{path} does not fit the model: missing {sorted(self.shadow.keys() - saved.keys())}, unexpected "
                f"{sorted(saved.keys() - self.shadow.keys())}"
            )
        for name, tensor in saved.items():
            self.shadow[name].copy_(tensor)


class EMACallback(TrainerCallback):
    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)


class TeacherInputAdapter:
    """Re-express a student batch for a teacher with another size or normalisation: (B, C, H, W) -> (B, C, h, w)."""

    def __init__(self, student_mean, student_std, teacher_size, teacher_mean, teacher_std):
        as_column = lambda values: torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.student_mean, self.student_std = as_column(student_mean), as_column(student_std)
        self.teacher_mean, self.teacher_std = as_column(teacher_mean), as_column(teacher_std)
        self.teacher_size = tuple(teacher_size)
        self.identity = torch.equal(self.student_mean, self.teacher_mean) and torch.equal(self.student_std, self.teacher_std)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.identity and tuple(pixel_values.shape[-2:]) == self.teacher_size:
            return pixel_values
        device = pixel_values.device
        images = pixel_values * self.student_std.to(device) + self.student_mean.to(device)
        if tuple(images.shape[-2:]) != self.teacher_size:
            images = F.interpolate(images, size=self.teacher_size, mode="bilinear", align_corners=False, antialias=True)
        return (images - self.teacher_mean.to(device)) / self.teacher_std.to(device)


def check_teacher_labels(teacher_config, student_labels: list[str]) -> None:
    """The teacher's classes must be the student's, in the same order."""
    teacher = [teacher_config.id2label[i] for i in range(teacher_config.num_labels)]
    student = list(student_labels)
    if teacher != student:
        raise ValueError(f"The teacher's labels {teacher} differ from the student's {student}; distill from a "
                         "teacher trained on the same classes in the same order")  # fmt: skip


def backbone_of(model) -> torch.nn.Module | None:
    """A hybrid's CNN backbone (None for models without one)."""
    return getattr(getattr(model.base_model, "patch_embeddings", None), "backbone", None)


def layer_ids(model: torch.nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: layer}, number of layers) for layer-wise learning-rate decay, as timm's
    `param_groups_layer_decay` numbers them: 0 for what runs before the first transformer block (embeddings, prefix
    tokens, a hybrid's CNN backbone), i for the i-th block in forward order (Swin's: across stages), and blocks + 1
    for the heads (with an attention-pooling head). A parameter between two blocks (Swin's patch merging) goes with
    the block after it; the base model's final norm goes with the last block."""
    blocks = [module for module in model.modules() if isinstance(module, PreNormBlock)]
    if not blocks:
        raise ValueError(f"layer_decay needs a model made of transformer blocks; {type(model).__name__} has none")
    block_of = {id(param): index for index, block in enumerate(blocks, start=1) for param in block.parameters()}
    ids, between, current = {}, [], 0
    for name, param in model.named_parameters():  # registration order, which is forward order in hf_vit's models
        if id(param) in block_of:
            current = block_of[id(param)]
            ids.update((waiting, current) for waiting, _ in between)
            between = []
            ids[name] = current
        elif current == 0:
            ids[name] = 0
        else:
            between.append((name, param))
    # After the last block: the base model's final norm goes with it; the heads (an attention-pooling head inside
    # the base model too) above it.
    pooler = getattr(model.base_model, "pooler", None)
    heads = {id(param) for param in model.parameters()} - {id(param) for param in model.base_model.parameters()}
    heads |= {id(param) for param in pooler.parameters()} if isinstance(pooler, torch.nn.Module) else set()
    ids.update((name, len(blocks) + (id(param) in heads)) for name, param in between)
    return ids, len(blocks) + 2


def layer_decay_scales(model: torch.nn.Module, decay: float) -> dict[str, float]:
    """{parameter name: learning-rate scale}: decay^(layers - 1 - layer), so the head learns at the full rate."""
    ids, num_layers = layer_ids(model)
    return {name: decay ** (num_layers - 1 - layer) for name, layer in ids.items()}


def check_backbone_learning_rate(training_args, config) -> None:
    """`backbone_learning_rate` needs a model with a CNN backbone (a config with a `backbone_config`)."""
    if getattr(training_args, "backbone_learning_rate", None) is not None and getattr(config, "backbone_config", None) is None:
        raise ValueError(f"--backbone_learning_rate needs a model with a CNN backbone (hf_vit_hybrid), not {config.model_type}")


def fsdp_launched() -> bool:
    """Whether `accelerate launch --use_fsdp` (or its config file) started this process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_requested(training_args) -> bool:
    """Whether the run is to be sharded with FSDP: `accelerate launch --use_fsdp`, or the Trainer's own `--fsdp`."""
    return fsdp_launched() or bool(training_args.fsdp)


def check_fsdp_version() -> None:
    """FSDP1 shards on accelerators only: asked for on a machine without one, it is refused by name."""
    if fsdp_launched() and not has_accelerator() and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError("FSDP on CPU needs FSDP2 (accelerate launch --use_fsdp --fsdp_version 2): FSDP1 shards on "
                         "accelerators only")  # fmt: skip


def shard_on_cpu(accelerator) -> bool:
    """accelerate hands `--use_fsdp` to GPUs (and other accelerators) only: on CPU processes it would train
    data-parallel without a word. FSDP2 shards over CPU processes too (gloo), so switch accelerate to it there, with
    the FSDP settings the launcher exported. Returns whether it switched."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_launched():
        return False
    state.fsdp_plugin, state.distributed_type = FullyShardedDataParallelPlugin(), DistributedType.FSDP
    return True


def whole_model(sharded: torch.nn.Module, state_dict: dict) -> torch.nn.Module:
    """An unsharded model of `sharded`'s own class (FSDP2 subclasses it on the fly) holding `state_dict`: what
    `save_pretrained` should write, code files included."""
    model_class = next(cls for cls in type(sharded).__mro__ if FSDPModule not in cls.__mro__)
    model = model_class(sharded.config)
    model.load_state_dict(state_dict)
    return model


def hf_vit_model(model: torch.nn.Module) -> torch.nn.Module:
    """The hf_vit model itself, under a PEFT wrapper (LoRA) if there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unused_parameters(model: torch.nn.Module) -> list[str]:
    """The trainable parameters one training step of `model` leaves without a gradient (an attention-pooling head
    under a pretraining objective, say), found by a step on two random images of the config's size; the random state,
    the model's gradients and its buffers (BatchNorm statistics, which the step in training mode moves) are left as
    they were."""
    config = model.config
    height, width = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
    inputs = {"pixel_values": torch.randn(2, config.num_channels, height, width, device=model.device)}
    if "labels" in inspect.signature(hf_vit_model(model).forward).parameters:  # PEFT's forward takes **kwargs
        inputs["labels"] = torch.zeros(2, dtype=torch.long, device=model.device)
    was_training, saved = model.training, {name: p.grad for name, p in model.named_parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        model.train()
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        p.grad = saved[name]
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.train(was_training)
    return unused


class HfViTTrainer(Trainer):
    """`Trainer` for hf_vit models.

    - weight decay skips biases, norms, position embeddings and prefix tokens;
    - data-parallel runs search for unused parameters only when the model has some (`unused_parameters`);
    - every process reads its own share of a streamed (`datasets.IterableDataset`) training set;
    - `accelerate launch --use_fsdp --fsdp_version 2` shards parameters, gradients and optimizer state on CPU
      processes too (`shard_on_cpu`); checkpoints are FSDP's sharded ones, the final model one whole file;
    - `layer_decay` < 1 lowers each layer's learning rate with its distance from the head (`layer_ids`);
    - `args.backbone_learning_rate` (where the arguments have it) gives a hybrid's backbone its own learning rate;
    - the model card (also the one `push_to_hub` uploads) comes from hf_vit's `card_template`, with the
      recipe's choices (`recipe_summary`: one line each) and `card_fields` for the template.
    """

    def __init__(self, model=None, args=None, *positional, layer_decay=1.0, card_template=None, recipe_summary=None,
                 card_fields=None, **kwargs):  # fmt: skip
        if args is not None and model is not None and args.world_size > 1 and args.ddp_find_unused_parameters is None:
            # DDP's search for unused parameters costs a pass over the graph every step: ask the model instead
            args.ddp_find_unused_parameters = bool(unused_parameters(model))
        if args is not None and isinstance(kwargs.get("train_dataset"), IterableDataset):
            # each process reads its own share of a stream, rather than the first one reading for all
            args.accelerator_config.dispatch_batches = False
        super().__init__(model, args, *positional, **kwargs)
        check_backbone_learning_rate(self.args, self.model.config)
        check_layer_decay(layer_decay)
        self.layer_decay = layer_decay
        self.card_template, self.recipe_summary, self.card_fields = card_template, recipe_summary, card_fields

    def create_accelerator_and_postprocess(self):
        check_fsdp_version()
        super().create_accelerator_and_postprocess()
        if shard_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True

    def save_model(self, output_dir=None, _internal_call=False):
        """The Trainer's; the final model of a sharded run (FSDP) is gathered into one whole checkpoint."""
        final = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if not (self.is_fsdp_enabled and final):
            return super().save_model(output_dir, _internal_call)
        # every process takes part in the gather; the first one receives the whole tensors
        state_dict = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.args.should_save:
            sharded, self.model = self.model, whole_model(self.accelerator.unwrap_model(self.model), state_dict)
            try:  # the Trainer's own save (weights, config, code, processor, arguments) of an unsharded copy
                self._save(self.args.output_dir)
            finally:
                self.model = sharded

    def get_decay_parameter_names(self, model) -> list[str]:
        """The Trainer's (no biases, no norms), without 1-D parameters and what the model declares
        (`no_weight_decay()`: tokens, position embeddings, Swin's relative position bias tables)."""
        hf_model = hf_vit_model(model)
        declared = hf_model.no_weight_decay() if hasattr(hf_model, "no_weight_decay") else ()  # a CNN teacher has none
        no_decay = {id(hf_model.get_parameter(name)) for name in declared}
        parameters = dict(model.named_parameters())
        return [
            name for name in super().get_decay_parameter_names(model)
            if parameters[name].ndim > 1 and id(parameters[name]) not in no_decay
        ]  # fmt: skip

    def learning_rates(self, model) -> dict[int, float]:
        """{id(parameter): peak learning rate} for the parameters that do not learn at `args.learning_rate`: a
        hybrid's backbone at `args.backbone_learning_rate`, every layer at its `layer_decay` scale."""
        rates = {}
        if self.layer_decay != 1.0:
            scales = layer_decay_scales(model, self.layer_decay)
            rates = {id(param): self.args.learning_rate * scales[name] for name, param in model.named_parameters()}
        if getattr(self.args, "backbone_learning_rate", None) is not None:
            rates.update(dict.fromkeys(map(id, backbone_of(model).parameters()), self.args.backbone_learning_rate))
        return rates

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (its weight-decay groups), each group split by the parameters' own learning
        rates (`learning_rates`); the scheduler scales every group alike."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        optimizer = super().create_optimizer(model)
        rates = self.learning_rates(model)
        if rates:
            groups = []
            for group in optimizer.param_groups:
                by_rate = {}
                for param in group["params"]:
                    by_rate.setdefault(rates.get(id(param), group["lr"]), []).append(param)
                groups += [{**group, "params": params, "lr": lr} for lr, params in by_rate.items()]
            optimizer.param_groups.clear()
            for group in groups:
                optimizer.add_param_group(group)
        return optimizer

    def create_model_card(self, dataset: str | None = None, dataset_id: str | None = None, **kwargs) -> None:
        """README.md (hf_vit's card: `dataset` names the data, `dataset_id` is its Hub id if it has one) and the
        training curves it shows, in the output directory."""
        if self.card_template is None:
            raise ValueError("No card_template was given to the trainer: it writes hf_vit model cards only")
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            plot_training_curves(self.state.log_history, os.path.join(self.args.output_dir, CURVES_FILE))
            load_id = (self.args.hub_model_id if self.args.push_to_hub else None) or self.args.output_dir
            write_model_card(self.args.output_dir, self.model, self.card_template, dataset=dataset, dataset_id=dataset_id,
                             training_args=self.args, log_history=self.state.log_history, load_id=load_id,
                             recipe=self.recipe_summary, curves=CURVES_FILE, extra_fields=self.card_fields)  # fmt: skip

    def remove_previous_checkpoints(self) -> None:
        """Remove the checkpoints an earlier run left in the output directory (`--overwrite_output_dir`), so that they
        can neither be resumed nor counted against `save_total_limit` with this run's."""
        if not self.is_world_process_zero() or not os.path.isdir(self.args.output_dir):
            return
        for name in sorted(os.listdir(self.args.output_dir)):
            path = os.path.join(self.args.output_dir, name)
            if name.startswith(PREFIX_CHECKPOINT_DIR) and os.path.isdir(path):
                logger.warning("--overwrite_output_dir: removing the earlier run's %s", path)
                shutil.rmtree(path)

    def train_and_evaluate(self, resume_from_checkpoint=None, skipped=None) -> dict:
        """Train, save the model, evaluate; log and save the train and eval metrics and the trainer state. Returns the
        eval metrics. `skipped`: the count of unreadable images a stream skipped (a `multiprocessing.Value` per
        process), summed over the processes into the metrics as `train_skipped_unreadable_images`."""
        if self.args.overwrite_output_dir and not resume_from_checkpoint:
            self.remove_previous_checkpoints()
        train_result = self.train(resume_from_checkpoint=resume_from_checkpoint)
        self.save_model()
        if skipped is not None:
            total = self.accelerator.reduce(torch.tensor(skipped.value, device=self.args.device), reduction="sum")
            train_result.metrics["train_skipped_unreadable_images"] = int(total)
        self.log_metrics("train", train_result.metrics)
        self.save_metrics("train", train_result.metrics)
        metrics = self.evaluate()
        self.log_metrics("eval", metrics)
        self.save_metrics("eval", metrics)
        self.save_state()
        if skipped is not None:
            metrics["train_skipped_unreadable_images"] = train_result.metrics["train_skipped_unreadable_images"]
        return metrics

    def publish(self, dataset: str, dataset_id: str | None) -> None:
        """Push the output directory with its card to the Hub when `args.push_to_hub`, else write the card there."""
        if self.args.push_to_hub:
            self.push_to_hub(dataset=dataset, dataset_id=dataset_id)
        else:
            self.create_model_card(dataset=dataset, dataset_id=dataset_id)


class PretrainingTrainer(HfViTTrainer):
    """`HfViTTrainer` for masked-image-modeling models: there are no labels, and evaluation reports the
    reconstruction loss (`eval_loss`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.can_return_loss = True  # the Trainer computes an eval loss without labels only when told so
        # Evaluation keeps the loss only: the reconstructions (and MAE's masks) of a whole evaluation set would not fit
        # in memory (ImageNet-val: ~30 GB).
        self.args.prediction_loss_only = True


class ImageClassificationTrainer(HfViTTrainer):
    """`HfViTTrainer` for hf_vit classifiers.

    - a frozen `teacher` (any image classifier) adds `teacher_logits` to every training batch, computed on the
      same (augmented, mixed) images after `teacher_inputs` re-expresses them for it;
    - `batch_mixer` applies Mixup / CutMix / label smoothing to training batches only;
    - `repeated_augmentation` > 1 uses `RepeatedAugmentationSampler`;
    - with an `ema_decay` (0 or None: none), evaluation and the saved model use the averaged weights.
    """

    def __init__(self, *args, teacher=None, teacher_inputs=None, batch_mixer=None, repeated_augmentation=1,
                 ema_decay=None, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.teacher = None
        if teacher is not None:
            config = self.model.config
            check_teacher_labels(teacher.config, [config.id2label[i] for i in range(config.num_labels)])
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.teacher_inputs = teacher_inputs or (lambda pixel_values: pixel_values)
        unset = [name for name in TRAINING_INGREDIENTS if getattr(self.args, name) is None]
        if unset:
            raise ValueError(f"{unset} unset: give them, or let hf_vit.recipes.resolve_recipe choose them first")
        self.batch_mixer = batch_mixer if batch_mixer is not None and batch_mixer.active else None
        self.repeated_augmentation = repeated_augmentation
        self.ema = None
        if ema_decay:
            self.ema = ModelEMA(self.model, ema_decay)
            self.add_callback(EMACallback(self.ema))

    def _get_train_sampler(self, train_dataset=None):
        if self.repeated_augmentation > 1:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return RepeatedAugmentationSampler(len(dataset), self._train_batch_size, self.repeated_augmentation, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            inputs = dict(inputs)
            if self.batch_mixer is not None:
                inputs["pixel_values"], inputs["labels"] = self.batch_mixer(inputs["pixel_values"], inputs["labels"])
            if self.teacher is not None:
                with torch.no_grad():
                    inputs["teacher_logits"] = self.teacher(self.teacher_inputs(inputs["pixel_values"])).logits
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def evaluate(self, *args, **kwargs):
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.applied_to(self.model):
            return super().evaluate(*args, **kwargs)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """The Trainer's, restoring the EMA saved in the checkpoint it resumes from."""
        if resume_from_checkpoint is True or resume_from_checkpoint == "True":
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if self.ema is not None and resume_from_checkpoint:
            self.ema.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        final = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if self.ema is None:
            return super().save_model(output_dir, _internal_call)
        if not final:  # a checkpoint: the trained weights and, beside them, the average, for resuming
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                self.ema.save(output_dir)
            return
        with self.ema.applied_to(self.model):
            return super().save_model(output_dir, _internal_call)
