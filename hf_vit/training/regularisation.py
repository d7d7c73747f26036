"""What regularises training besides the recipe's per-image augmentation: batch mixing, repeated augmentation, the
EMA of the weights, and the teacher's inputs.

    BatchMixer                    Mixup / CutMix / label smoothing on a training batch -> soft targets
    RepeatedAugmentationSampler   each image several times an epoch, its copies in one batch, never mixed together
    ModelEMA, EMACallback         the exponential moving average of the weights, saved with every checkpoint
    TeacherInputAdapter           a student batch re-expressed for a teacher of another size or normalisation
    balanced_class_weights / weighted_loss   the loss of imbalanced data, each class weighed by its rarity
"""

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from ..guards import replaced_atomically
from ..models.configuration_utils import CheckpointMismatchError
from ..models.modeling_utils import distillation_loss, image_classification_loss

EMA_FILE = "ema.safetensors"  # the EMA of the weights, in every checkpoint of a run with one


class BatchMixer:
    """Mixup / CutMix on a training batch, then label smoothing: labels (B,) ids -> (B, C) soft targets.

    One mixing ratio per batch, and each image is mixed with the one before it in the batch (the first with the last;
    `partners`), as torchvision's MixUp / CutMix pair them; `RepeatedAugmentationSampler` lays its copies out so that
    no image meets a copy of itself. CutMix's box and its label weight follow torchvision's. `prob`: the chance that a
    batch is mixed at all (timm's `mixup_prob`).
    """

    def __init__(
        self, num_classes: int, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, label_smoothing=0.0, prob=1.0
    ):
        self.num_classes, self.label_smoothing, self.prob = num_classes, label_smoothing, prob
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        # the chance of CutMix when a batch is mixed
        self.cutmix_prob = (switch_prob if mixup_alpha > 0 else 1.0) if cutmix_alpha > 0 else 0.0

    @property
    def active(self) -> bool:
        return self.mixes or self.label_smoothing > 0

    @property
    def mixes(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    @staticmethod
    def partners(batch_size: int) -> torch.Tensor:
        """(B,) the index each image is mixed with: the one before it, the first with the last."""
        return torch.arange(batch_size).roll(1)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        targets = labels.float() if labels.is_floating_point() else F.one_hot(labels, self.num_classes).float()
        # host-side draws: nothing waits for the device
        if self.mixes and (self.prob >= 1 or torch.rand(()).item() < self.prob):
            partners = self.partners(len(pixel_values)).to(pixel_values.device)
            cutmix = torch.rand(()).item() < self.cutmix_prob
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
        self.num_samples, self.repeats, self.seed, self.batch_size, self.epoch = (
            num_samples,
            repeats,
            seed,
            batch_size,
            0,
        )

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
    return {
        name: tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if name not in parameters or parameters[name].requires_grad
    }


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
        self.identity = torch.equal(self.student_mean, self.teacher_mean) and torch.equal(
            self.student_std, self.teacher_std
        )

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.identity and tuple(pixel_values.shape[-2:]) == self.teacher_size:
            return pixel_values
        device = pixel_values.device
        images = pixel_values * self.student_std.to(device) + self.student_mean.to(device)
        if tuple(images.shape[-2:]) != self.teacher_size:
            images = F.interpolate(images, size=self.teacher_size, mode="bilinear", align_corners=False, antialias=True)
        return (images - self.teacher_mean.to(device)) / self.teacher_std.to(device)


@dataclass(frozen=True)
class Distillation:
    """How a student without DeiT's distillation head learns from a teacher's logits (DeiT's names and meanings):
    `type` "hard" (the teacher's top class) or "soft" (its distribution at temperature `tau`), `alpha` the weight of
    the teacher's term against the labels'. `loss`: `(1 - alpha) * label loss + alpha * distillation_loss`."""

    type: str = "hard"
    alpha: float = 0.5
    tau: float = 1.0

    def __post_init__(self):
        if self.type not in ("hard", "soft"):
            raise ValueError(f"--distillation_type must be 'hard' or 'soft', got {self.type!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--distillation_alpha must be in [0, 1], got {self.alpha!r}")
        if not self.tau > 0:
            raise ValueError(f"--distillation_tau must be positive, got {self.tau!r}")

    def loss(self, logits, labels, teacher_logits, config) -> torch.Tensor:
        """labels: (B,) ids or (B, num_labels) soft targets (Mixup, CutMix, label smoothing) for the label term."""
        label_loss = image_classification_loss(logits, labels, config)
        return (1 - self.alpha) * label_loss + self.alpha * distillation_loss(
            logits, teacher_logits, self.type, self.tau
        )


def teacher_label_order(teacher_config, student_labels: list[str]) -> list[int]:
    """Which of the teacher's classes each of the student's is: matched by name where the teacher names its classes,
    taken in order where it has only transformers' default names (LABEL_0, ...). A teacher with another number of
    classes, or with names that are not the student's, is refused in one line."""
    teacher = [str(teacher_config.id2label[i]) for i in range(teacher_config.num_labels)]
    student = [str(label) for label in student_labels]
    if len(teacher) != len(student):
        raise ValueError(
            f"The teacher has {len(teacher)} classes and the data {len(student)}; distill from a teacher trained on "
            "the data's classes"
        )
    if teacher == [f"LABEL_{index}" for index in range(len(teacher))]:  # no names: the same classes in order
        return list(range(len(student)))
    unmatched = sorted(set(student) - set(teacher))
    if unmatched or len(set(teacher)) != len(teacher):
        raise ValueError(
            f"The teacher's classes {teacher} are not the data's {student} (the data's {unmatched} are not among "
            "them); distill from a teacher trained on the same classes"
        )
    return [teacher.index(label) for label in student]


def balanced_class_weights(labels: list, num_labels: int) -> torch.Tensor:
    """(num_labels,) weights from the training labels (class ids, or lists of ids for multi-label data): single-label
    n / (num_labels * n_c), scikit-learn's "balanced", so that every class weighs as much in the loss; multi-label
    each class's negatives / positives, BCE's `pos_weight`. A class without training images is an error."""
    multi_label = bool(labels) and isinstance(labels[0], list)
    ids = [index for value in labels for index in value] if multi_label else labels
    counts = torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=num_labels).double()
    if (counts == 0).any():
        raise ValueError(
            f"--class_weights balanced: classes {torch.nonzero(counts == 0).flatten().tolist()} have no training "
            "image to weigh"
        )
    weights = (len(labels) - counts) / counts if multi_label else len(labels) / (num_labels * counts)
    return weights.float()


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, multi_label: bool):
    """The classification loss with per-class `weights`: multi-label BCE with `pos_weight`; else cross-entropy of
    class ids or soft targets (Mixup, smoothing), each class's term times its weight, averaged over the batch."""
    logits, weights = logits.float(), weights.to(logits.device)
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weights)
    targets = labels.float() if labels.is_floating_point() else F.one_hot(labels, logits.shape[-1]).float()
    return -(targets * weights * F.log_softmax(logits, dim=-1)).sum(-1).mean()
