"""Pretraining on unlabelled images, the answer to the ViT's data hunger: masked image modeling (MAE for hf_vit and
hf_deit, SimMIM for hf_swin and hf_vit) or feature distillation from a teacher (`--method distill`, any family).

    parse_args(argv) -> (ModelArguments, PretrainArguments, DataArguments, PretrainTrainingArguments)
    pretrain(model_args, pretrain_args, data_args, training_args) -> eval metrics (`eval_loss`: the reconstruction
    loss)

Arguments (every one checked before any data is read; bad input is a one-line `UsageError`) -> unlabelled images
-> recipe (mask ratio, crop, flips) -> model -> Trainer (a reconstruction picture every epoch) -> save, card,
curves, push. The checkpoint fine-tunes with `finetune.py --model_name_or_path`. `scripts/pretrain.py` and
`hf-vit pretrain` are its command line; run them with `accelerate launch` for one or many processes.
"""

import os
from dataclasses import dataclass, field

import torch
from transformers import AutoModel, HfArgumentParser, TrainerCallback, set_seed

from ..checkpoints import load_checkpoint
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..data import DataArguments, attach_transforms, check_streaming, collate, describe_dataset, load_training_data
from ..figures import new_figure, save_figure
from ..guards import check_local_path, check_output_dir, claim_output_dir, usage_errors
from ..models.configuration_utils import to_2tuple
from ..models.modeling_mim import pixel_mask
from ..registry import FAMILIES
from .arguments import ModelArguments, ModelSource, PretrainTrainingArguments, check_model_source
from .building import build_image_processor, build_pretraining_model, load_teacher
from .feature_distillation import FEATURE_LOSSES, FeatureDistiller, backbone_features
from .recipes import PRETRAINING, pretraining_recipe
from .trainer import FeatureDistillationTrainer, PretrainingTrainer, resolve_resume

RECONSTRUCTIONS_FILE = "reconstructions.png"
CARD_TEMPLATE = "pretraining.md"


@dataclass
class PretrainArguments:
    """How to pretrain."""

    _argument_group_name = "pretraining"

    method: str | None = field(
        default=None,
        metadata={
            "help": "mae (hf_vit, hf_deit), simmim (hf_swin, hf_vit) or distill (any family: predict a teacher's "
            "features); default: mae where the family has it."
        },
    )
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "--method distill: the teacher, any model AutoModel loads (an hf_vit, transformers or timm "
            "checkpoint dir, or a Hub id), classifier or backbone."
        },
    )
    feature_loss: str = field(
        default="cosine",
        metadata={"help": "--method distill: cosine or smooth_l1 (on the teacher's normalised features)."},
    )
    mask_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of the patches masked, in (0, 1) (default: a checkpoint's, else the method's "
            f"{ {method: values['mask_ratio'] for method, values in PRETRAINING.items()} })."
        },
    )
    crop_scale_min: float | None = field(
        default=None,
        metadata={
            "help": "Smallest area fraction RandomResizedCrop keeps (default: the method's paper, "
            f"{ {method: values['crop_scale_min'] for method, values in PRETRAINING.items()} })."
        },
    )
    reconstruction_images: int = field(
        default=8, metadata={"help": f"Validation images shown in {RECONSTRUCTIONS_FILE}, redrawn every epoch."}
    )


START_HERE = ("--output_dir", "--train_dir", "--model_type", "--method", "--num_train_epochs")


def build_parser() -> HfArgumentParser:
    return grouped_parser(
        (ModelArguments, PretrainArguments, DataArguments, PretrainTrainingArguments),
        START_HERE,
        __doc__.split("\n\n")[0],
    )


def parse_args(argv=None):
    """Command line (or one JSON file) -> (ModelArguments, PretrainArguments, DataArguments,
    PretrainTrainingArguments)."""
    return tuple(parse_into_dataclasses(build_parser(), argv))


def check_arguments(
    model_args: ModelArguments,
    args: PretrainArguments,
    data_args: DataArguments,
    training_args: PretrainTrainingArguments,
) -> tuple[ModelSource, str]:
    """Everything that can be checked before data is touched. Returns (the model source, the method)."""
    check_output_dir(
        training_args.output_dir, training_args.overwrite_output_dir, training_args.resume_from_checkpoint is not None
    )
    if data_args.max_num_patches is not None:
        raise ValueError("--max_num_patches does not apply to pretraining: MAE and SimMIM mask whole images")
    mask = {} if args.mask_ratio is None else {"mask_ratio": args.mask_ratio}
    source = check_model_source(model_args, None if model_args.model_name_or_path else data_args.image_size, **mask)
    if args.method == "distill" or args.teacher_name_or_path is not None:
        return source, check_distillation(args, training_args)
    methods = source.family.pretraining_methods
    if not methods:
        pretrainable = sorted(name for name, other in FAMILIES.items() if other.pretraining_methods)
        raise ValueError(
            f"{source.family.model_type} has no masked-image-modeling pretraining (its CNN backbone sees "
            f"every pixel); pretrain one of {pretrainable}"
        )
    method = args.method or methods[0]
    if method not in methods:
        raise ValueError(
            f"--method {method!r} is not available for {source.family.model_type}; choose one of {methods}"
        )
    if args.crop_scale_min is not None and not 0.0 < args.crop_scale_min <= 1.0:
        raise ValueError(f"--crop_scale_min must be in (0, 1], got {args.crop_scale_min!r}")
    if args.reconstruction_images < 0:
        raise ValueError(f"--reconstruction_images must be 0 or more, got {args.reconstruction_images}")
    check_streaming(data_args, training_args)
    return source, method


def check_distillation(args: PretrainArguments, training_args: PretrainTrainingArguments) -> str:
    """Feature distillation's arguments: a teacher (and only with --method distill), no mask, a known loss, no
    intermediate checkpoints (the projection heads are not saved). Returns the method."""
    if args.method not in (None, "distill"):
        raise ValueError(f"--teacher_name_or_path teaches --method distill; --method {args.method} needs no teacher")
    if args.teacher_name_or_path is None:
        raise ValueError("--method distill learns a teacher's features: give --teacher_name_or_path")
    check_local_path(args.teacher_name_or_path, "--teacher_name_or_path")
    if args.mask_ratio is not None:
        raise ValueError("--mask_ratio masks patches for MAE and SimMIM; --method distill shows the whole picture")
    if args.feature_loss not in FEATURE_LOSSES:
        raise ValueError(f"--feature_loss must be one of {FEATURE_LOSSES}, got {args.feature_loss!r}")
    if training_args.resume_from_checkpoint is not None:
        raise ValueError("--method distill saves the student only at the end: there is no checkpoint to resume from")
    training_args.save_strategy = "no"  # a checkpoint would lack the projection heads
    return "distill"


def build_student(model_args, source: ModelSource, config):
    """Feature distillation's student: its family's base model, a checkpoint's weights or fresh ones."""
    model_class = source.family.base_model_class
    if not source.from_checkpoint:
        return model_class(config)
    return load_checkpoint(
        model_class, model_args.model_name_or_path, new_heads=True, trust_remote_code=model_args.trust_remote_code
    )


def build_distiller(student, model_args, args: PretrainArguments, image_processor):
    """The student with projection heads to the teacher's widths (both measured on one blank picture), the frozen
    teacher and its input adapter."""
    teacher, teacher_inputs = load_teacher(
        args.teacher_name_or_path, model_args.trust_remote_code, student, image_processor, auto_class=AutoModel
    )
    config = student.config
    probe = torch.zeros(1, config.num_channels, *to_2tuple(config.image_size))
    with torch.no_grad():
        student_widths = [t.shape[1] for t in backbone_features(student, probe)]
        teacher_widths = [t.shape[1] for t in backbone_features(teacher.eval(), teacher_inputs(probe))]
    return FeatureDistiller(student, student_widths, teacher_widths, args.feature_loss), teacher, teacher_inputs


class ReconstructionPictures(TrainerCallback):
    """Draws `path` at the end of every epoch: a few validation images, what the model saw of them (masked patches
    grey) and its reconstruction, always with the same masks. Every process runs the model (sharded models need
    them all); the first one draws."""

    def __init__(self, images: torch.Tensor, mean, std, path: str):
        self.images, self.path = images, path
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.draw(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):  # a stream may never end an epoch
        self.draw(model, state)

    def draw(self, model, state) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same masks every epoch
            pixel_values = self.images.to(model.device, model.dtype)
            output = model(pixel_values)
            reconstruction = model.reconstruct(pixel_values, output).float().cpu()
        model.train(was_training)
        if state.is_world_process_zero:
            hidden = pixel_mask(output.mask.cpu().bool(), model.config.patch_size, self.images.shape[-2:])
            draw_reconstructions(
                self.to_pixels(self.images),
                self.to_pixels(self.images).masked_fill(hidden, 0.5),
                self.to_pixels(reconstruction),
                self.path,
                f"epoch {state.epoch:.3g}",
            )

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().cpu() * self.std + self.mean).clamp(0, 1)


def draw_reconstructions(images, masked, reconstructions, path: str, title: str) -> None:
    """Rows: the images, what the encoder saw, the reconstruction; one column per image ((N, C, H, W) in [0, 1])."""
    figure, axes = new_figure(3, len(images), figsize=(1.4 * len(images), 4.6))
    axes = axes.reshape(3, len(images))
    for row, (name, batch) in enumerate((("image", images), ("masked", masked), ("reconstruction", reconstructions))):
        for column, image in enumerate(batch):
            pixels = image.permute(1, 2, 0).numpy()
            axes[row, column].imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[row, 0].set_ylabel(name)
    figure.suptitle(title)
    save_figure(figure, path)


def pretrain(
    model_args: ModelArguments,
    args: PretrainArguments,
    data_args: DataArguments,
    training_args: PretrainTrainingArguments,
    callbacks=(),
) -> dict:
    """Pretrain, evaluate (reconstruction loss), save the model + processor + code + card + curves + reconstruction
    picture, push when asked. Returns the eval metrics. Bad input raises a `UsageError` before any data is read."""
    with usage_errors():  # the user's input, checked: arguments, then data
        source, method = check_arguments(model_args, args, data_args, training_args)
        training_args.resume_from_checkpoint = resolve_resume(training_args)
        set_seed(training_args.seed)
        data = load_training_data(data_args, training_args.seed, labelled=False, training_args=training_args)
        # every input checked: the run takes its output directory (made here, locked against a second run)
        lock = claim_output_dir(training_args.output_dir) if training_args.process_index == 0 else None
    recipe = pretraining_recipe(
        method,
        args.mask_ratio,
        args.crop_scale_min,
        source.from_checkpoint,
        flips_keep_labels=not data_args.uses_embedded_digits,
    )
    size = {} if source.from_checkpoint or data_args.image_size is None else {"image_size": data_args.image_size}
    mask = {} if recipe.mask_ratio is None else {"mask_ratio": recipe.mask_ratio}
    teacher = None
    if method == "distill":
        student = build_student(model_args, source, source.with_fields(**size))
        image_processor = build_image_processor(model_args, student)
        model, teacher, teacher_inputs = build_distiller(student, model_args, args, image_processor)
    else:
        model = build_pretraining_model(model_args, source, method, source.with_fields(**mask, **size))
        image_processor = build_image_processor(model_args, model)
    config = model.config
    attach_transforms(
        data,
        image_processor,
        config.num_channels,
        data_args,
        labelled=False,
        crop_scale_min=recipe.crop_scale_min,
        hflip_prob=recipe.hflip_prob,
    )
    shown = data.validation.select(range(min(args.reconstruction_images, len(data.validation))))
    pictures = []
    if len(shown) and teacher is None:
        images = collate(list(shown))["pixel_values"]
        pictures = [
            ReconstructionPictures(
                images,
                image_processor.image_mean[: config.num_channels],
                image_processor.image_std[: config.num_channels],
                os.path.join(training_args.output_dir, RECONSTRUCTIONS_FILE),
            )
        ]
    dataset_name, dataset_id = describe_dataset(data_args)
    what = (
        f"the features of {args.teacher_name_or_path} ({args.feature_loss} loss; heads dropped at save)"
        if teacher is not None
        else f"mask ratio {config.mask_ratio:g}"
    )
    summary = [
        f"{method} ({type(model if teacher is None else model.student).__name__}): {what}, crop scale min "
        f"{recipe.crop_scale_min:g}, horizontal flips {recipe.hflip_prob:g}, "
        + (
            "a stream of unlabelled training images"
            if data.streaming
            else f"{len(data.train)} unlabelled training images"
        )
    ]
    if training_args.should_log:
        print(summary[0])
    distilling = {} if teacher is None else dict(teacher=teacher, teacher_inputs=teacher_inputs)
    saved = model if teacher is None else model.student  # what the run saves
    trainer = (FeatureDistillationTrainer if teacher is not None else PretrainingTrainer)(
        **distilling,
        model=model,
        args=training_args,
        **data.trainer_inputs(),
        processing_class=image_processor,
        callbacks=[*pictures, *callbacks],
        card_template=CARD_TEMPLATE if teacher is None else "feature_distillation.md",
        recipe_summary=["pretraining", *summary],
        card_fields=dict(
            method={"mae": "MAE", "simmim": "SimMIM", "distill": "feature distillation"}[method],
            model_class=type(saved).__name__,
            pictures=f"![reconstructions]({RECONSTRUCTIONS_FILE})" if pictures else "",
            teacher=args.teacher_name_or_path or "",
            feature_loss=args.feature_loss,
        ),
    )
    metrics = trainer.train_and_evaluate(training_args.resume_from_checkpoint, data.skipped)
    if trainer.is_world_process_zero():
        print(
            f"eval: {'feature' if teacher is not None else 'reconstruction'} loss {metrics['eval_loss']:.4f} on "
            f"{len(data.validation)} images of "
            f"{dataset_name} after {data.length(training_args)} of {method} -> {training_args.output_dir}"
        )
    trainer.publish(dataset_name, dataset_id)
    if lock is not None:
        lock.close()
    return metrics


main = command(parse_args, pretrain)


if __name__ == "__main__":
    raise SystemExit(main())
