"""Masked-image-modeling pretraining on unlabelled images, the answer to the ViT's data hunger: MAE for hf_vit and
hf_deit, SimMIM for hf_swin and hf_vit.

    parse_args(argv) -> (PretrainArguments, DataArguments, PretrainTrainingArguments)
    pretrain(pretrain_args, data_args, training_args) -> eval metrics (`eval_loss`: the reconstruction loss)

Arguments (every one checked before any data is read; bad input is a one-line `UsageError`) -> unlabelled images
-> config and model -> Trainer (a reconstruction picture every epoch) -> save, card, curves, push. The checkpoint
fine-tunes with `finetune.py --model_name_or_path`. `scripts/pretrain.py` is the command line; run it with
`accelerate launch` for one or many processes.
"""

import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, HfArgumentParser, TrainerCallback, set_seed

from .cli import (
    check_config_overrides, check_local_path, check_output_dir, command, grouped_parser, parse_config_overrides, parse_into_dataclasses,
    usage_errors,
)  # fmt: skip
from .data import (
    DataArguments, check_streaming, checkpoint_image_processor, collate, describe_dataset, load_training_data,
    make_image_processor,
)  # fmt: skip
from .families import FAMILIES, family_of
from .figures import new_figure, save_figure
from .modeling_mim import pixel_mask
from .recipes import flip_choice
from .trainer import HfViTTrainingArguments, PretrainingTrainer

# Each paper's fraction of masked patches, and the smallest area fraction its RandomResizedCrop keeps.
MASK_RATIO = {"mae": 0.75, "simmim": 0.6}
CROP_SCALE_MIN = {"mae": 0.2, "simmim": 0.67}
RECONSTRUCTIONS_FILE = "reconstructions.png"
CARD_TEMPLATE = "pretraining.md"


@dataclass
class PretrainArguments:
    """What to pretrain, and how."""

    _argument_group_name = "pretraining"

    model_type: str = field(default="hf_vit", metadata={"help": f"One of {sorted(FAMILIES)} that pretrains."})
    method: str | None = field(
        default=None,
        metadata={"help": "mae (hf_vit, hf_deit) or simmim (hf_swin, hf_vit); default: mae where the family has it."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A pretraining checkpoint (directory or Hub id) to go on from."}
    )
    preset: str | None = field(default=None, metadata={"help": "Named architecture for a fresh model."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config fields, e.g. 'norm_pix_loss=True,decoder_num_hidden_layers=2'."},
    )
    mask_ratio: float | None = field(
        default=None,
        metadata={"help": f"Fraction of the patches masked, in (0, 1) (default: a checkpoint's, else the method's {MASK_RATIO})."},
    )
    crop_scale_min: float | None = field(
        default=None,
        metadata={"help": f"Smallest area fraction RandomResizedCrop keeps (default: the method's paper, {CROP_SCALE_MIN})."},
    )
    reconstruction_images: int = field(
        default=8, metadata={"help": f"Validation images shown in {RECONSTRUCTIONS_FILE}, redrawn every epoch."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})


@dataclass
class PretrainTrainingArguments(HfViTTrainingArguments):
    """`HfViTTrainingArguments` with MAE's optimisation (AdamW with beta2 0.95, weight decay 0.05, warmup, cosine)
    at a learning rate and length that pretrain the small presets on a few thousand images."""

    num_train_epochs: float = field(default=100.0, metadata={"help": "Total number of training epochs."})
    learning_rate: float = field(default=1.5e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases, norms, tokens)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Linear warmup: steps, or a fraction of them below 1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MAE's 0.95)."})


START_HERE = ("--output_dir", "--train_dir", "--model_type", "--method", "--num_train_epochs")


def build_parser() -> HfArgumentParser:
    return grouped_parser((PretrainArguments, DataArguments, PretrainTrainingArguments), START_HERE,
                          __doc__.split("\n\n")[0])  # fmt: skip


def parse_args(argv=None):
    """Command line (or one JSON file) -> (PretrainArguments, DataArguments, PretrainTrainingArguments)."""
    return tuple(parse_into_dataclasses(build_parser(), argv))


def check_arguments(args: PretrainArguments, data_args: DataArguments, training_args: PretrainTrainingArguments):
    """Everything that can be checked before data is touched. Returns (family, method, config overrides)."""
    check_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                     training_args.resume_from_checkpoint is not None)  # fmt: skip
    family = family_of(args.model_type)
    if args.model_name_or_path is not None:
        check_local_path(args.model_name_or_path, "--model_name_or_path")
        config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
        family = family_of(config.model_type)
    elif args.preset is not None and args.preset not in family.config_class.presets:
        raise ValueError(f"Unknown --preset {args.preset!r} for {family.model_type}; choose one of "
                         f"{sorted(family.config_class.presets)}")  # fmt: skip
    else:
        config = family.config(args.preset)
    methods = family.pretraining_methods
    if not methods:
        pretrainable = sorted(name for name, other in FAMILIES.items() if other.pretraining_methods)
        raise ValueError(f"{family.model_type} has no masked-image-modeling pretraining (its CNN backbone sees every "
                         f"pixel); pretrain one of {pretrainable}")  # fmt: skip
    method = args.method or methods[0]
    if method not in methods:
        raise ValueError(f"--method {method!r} is not available for {family.model_type}; choose one of {methods}")
    overrides = parse_config_overrides(args.config_overrides)
    check_config_overrides(config, overrides)
    if args.mask_ratio is not None:
        overrides["mask_ratio"] = args.mask_ratio
    elif args.model_name_or_path is None:
        overrides.setdefault("mask_ratio", MASK_RATIO[method])
    size = {} if data_args.image_size is None or args.model_name_or_path else {"image_size": data_args.image_size}
    type(config)(**{**config.to_dict(), **overrides, **size})  # the config's own validation of the values
    if args.crop_scale_min is not None and not 0.0 < args.crop_scale_min <= 1.0:
        raise ValueError(f"--crop_scale_min must be in (0, 1], got {args.crop_scale_min!r}")
    if args.reconstruction_images < 0:
        raise ValueError(f"--reconstruction_images must be 0 or more, got {args.reconstruction_images}")
    return family, method, overrides


def build_model(args: PretrainArguments, family, method: str, overrides: dict, image_size: int | None):
    """The pretraining model: a checkpoint's (its config with `overrides`) or a fresh one of the preset."""
    model_class = getattr(family, {"mae": "pretraining_class", "simmim": "masked_image_modeling_class"}[method])
    if args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(args.model_name_or_path, **overrides, trust_remote_code=args.trust_remote_code)
        return model_class.from_pretrained(args.model_name_or_path, config=config)
    size = {} if image_size is None else {"image_size": image_size}
    return model_class(family.config(args.preset, **overrides, **size))


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
            draw_reconstructions(self.to_pixels(self.images), self.to_pixels(self.images).masked_fill(hidden, 0.5),
                                 self.to_pixels(reconstruction), self.path, f"epoch {state.epoch:.3g}")  # fmt: skip

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


def pretrain(args: PretrainArguments, data_args: DataArguments, training_args: PretrainTrainingArguments, callbacks=()) -> dict:
    """Pretrain, evaluate (reconstruction loss), save the model + processor + code + card + curves + reconstruction
    picture, push when asked. Returns the eval metrics. Bad input raises a `UsageError` before any data is read."""
    with usage_errors():  # the user's input, checked: arguments, then data
        family, method, overrides = check_arguments(args, data_args, training_args)
        set_seed(training_args.seed)
        check_streaming(data_args, training_args)
        data = load_training_data(data_args, seed=training_args.seed, labelled=False)
    model = build_model(args, family, method, overrides, data_args.image_size)
    config = model.config
    if args.model_name_or_path is not None:
        image_processor = checkpoint_image_processor(args.model_name_or_path, config, args.trust_remote_code)
    else:
        image_processor = make_image_processor(config.image_size, config.num_channels)
    crop_scale_min = CROP_SCALE_MIN[method] if args.crop_scale_min is None else args.crop_scale_min
    hflip_prob, _ = flip_choice(not data_args.uses_embedded_digits)
    data.set_transforms(image_processor, config.num_channels, data_args, labelled=False, crop_scale_min=crop_scale_min,
                        hflip_prob=hflip_prob)  # fmt: skip
    shown = data.validation.select(range(min(args.reconstruction_images, len(data.validation))))
    pictures = []
    if len(shown):
        images = collate(list(shown))["pixel_values"]
        pictures = [ReconstructionPictures(images, image_processor.image_mean[: config.num_channels],
                                           image_processor.image_std[: config.num_channels],
                                           os.path.join(training_args.output_dir, RECONSTRUCTIONS_FILE))]  # fmt: skip
    dataset_name, dataset_id = describe_dataset(data_args)
    summary = [f"{method} ({type(model).__name__}): mask ratio {config.mask_ratio:g}, crop scale min {crop_scale_min:g}, "
               f"horizontal flips {hflip_prob:g}, "
               + ("a stream of unlabelled training images" if data.streaming else f"{len(data.train)} unlabelled training images")]  # fmt: skip
    if training_args.should_log:
        print(summary[0])
    trainer = PretrainingTrainer(
        model=model, args=training_args, train_dataset=data.train, eval_dataset=data.validation,
        data_collator=data.collator, processing_class=image_processor, callbacks=[*pictures, *callbacks],
        card_template=CARD_TEMPLATE, recipe_summary=["pretraining", *summary],
        card_fields=dict(method=method.upper() if method == "mae" else "SimMIM", model_class=type(model).__name__,
                         pictures=f"![reconstructions]({RECONSTRUCTIONS_FILE})" if pictures else ""),
    )  # fmt: skip
    metrics = trainer.train_and_evaluate(training_args.resume_from_checkpoint, data.skipped)
    if trainer.is_world_process_zero():
        print(f"eval: reconstruction loss {metrics['eval_loss']:.4f} on {len(data.validation)} images of "
              f"{dataset_name} after {data.length(training_args)} of {method} -> {training_args.output_dir}")  # fmt: skip
    trainer.publish(dataset_name, dataset_id)
    return metrics


main = command(parse_args, pretrain)


if __name__ == "__main__":
    raise SystemExit(main())
