"""On-the-fly transforms: each image is decoded and augmented when a batch is drawn, in the data-loading workers.

    build_transforms(processor, channels, train, **augmentation)   torchvision v2 pipeline: uint8 image -> tensor
                                                                    (NaFlexPatches for a NaFlex processor: -> patches)
    set_transforms(splits, ...) / attach_transforms(data, ...)      the pipelines attached to the splits of a job
    evaluation_loader(split, ...)                                   a split's batches, as a job evaluates them
    collate(examples) / DecodingCollator                            examples -> a batch (a stream decodes here)

How strongly training images are augmented is the recipe's choice (`recipes.py`); this module applies it.
"""

import copy

import torch
from datasets import Dataset, DatasetDict
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import query_size
from transformers.utils import logging

from ..processors import is_naflex, processor_size
from .decoding import collate, decode_image
from .sources import DataArguments, encode_label, label_names
from .streaming import TrainingData

logger = logging.get_logger(__name__)


class DecodingCollator:
    """The collator of a stream: decodes and transforms each raw example (`transform`: PIL image -> tensor) in the
    process (or data-loading worker) that trains on it, and leaves out, with a warning, every image that cannot be
    read, counting it in `skipped` (a `multiprocessing.Value` the workers share). Examples already transformed (the
    evaluation split's) are collated as they are."""

    def __init__(self, transform, num_channels: int, args: DataArguments, skipped, num_labels: int | None = None):
        self.transform, self.num_channels, self.args = transform, num_channels, args
        self.skipped, self.num_labels = skipped, num_labels  # None: unlabelled

    def __call__(self, examples: list[dict]) -> dict:
        ready = []
        for example in examples:
            if "pixel_values" not in example:
                try:
                    pixel_values = self.transform(decode_image(example[self.args.image_column_name], self.num_channels))
                except ValueError as error:
                    logger.warning("Skipping an unreadable image of the stream: %s", error)
                    with self.skipped.get_lock():
                        self.skipped.value += 1
                    continue
                labels = example[self.args.label_column_name] if self.num_labels is not None else None
                example = model_inputs(pixel_values)
                if labels is not None:
                    example["labels"] = encode_label(labels, self.num_labels)
            ready.append(example)
        if not ready:
            raise ValueError(f"Every image of a batch of {len(examples)} from the stream was unreadable")
        return collate(ready)


# PIL's resampling codes (what processors store) as torchvision's modes on tensors; tensors have no Lanczos, box or
# Hamming filter, so those take the nearest smooth one, bicubic
TENSOR_INTERPOLATION = {
    0: v2.InterpolationMode.NEAREST,
    2: v2.InterpolationMode.BILINEAR,
    3: v2.InterpolationMode.BICUBIC,
}


def processor_interpolation(image_processor) -> v2.InterpolationMode:
    """The resampling of `image_processor` (`resample`, a PIL code; bilinear when it has none), as torchvision's."""
    resample = getattr(image_processor, "resample", None)
    return TENSOR_INTERPOLATION.get(int(resample) if resample is not None else 2, v2.InterpolationMode.BICUBIC)


def model_inputs(transformed) -> dict:
    """One example's model inputs from what a transform gave: a (C, H, W) tensor, or NaFlex's dict of patches."""
    return transformed if isinstance(transformed, dict) else {"pixel_values": transformed}


class RandomAspectCrop(torch.nn.Module):
    """A random crop of a fraction in `scale` of the picture's area, at the picture's own aspect ratio (NaFlex's
    RandomResizedCrop: the processor resizes it within the patch budget afterwards)."""

    def __init__(self, scale=(0.8, 1.0)):
        super().__init__()
        self.scale = scale

    def forward(self, picture: torch.Tensor) -> torch.Tensor:
        height, width = picture.shape[-2:]
        side = float(torch.empty(1).uniform_(*self.scale).sqrt())
        crop_h, crop_w = max(1, round(height * side)), max(1, round(width * side))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return v2.functional.crop(picture, top, left, crop_h, crop_w)


class PictureShapedResizedCrop(v2.RandomResizedCrop):
    """RandomResizedCrop whose crops' aspect ratios are drawn around the picture's own (`ratio` times its width /
    height) rather than around a square. Where evaluation squashes the whole picture to the output size (a
    processor that resizes without a center crop), training then sees the same shapes, squashed alike; torchvision's
    square-centred ratios could only take a square-ish piece of a 1:3 picture (a third of it, after ten failed
    draws the center crop). For a square picture it is torchvision's, draw for draw."""

    def make_params(self, flat_inputs) -> dict:
        height, width = query_size(flat_inputs)
        shaped = copy.copy(self)
        shaped.ratio = tuple(ratio * width / height for ratio in self.ratio)
        shaped._log_ratio = torch.log(torch.tensor(shaped.ratio))
        return v2.RandomResizedCrop.make_params(shaped, flat_inputs)


class NaFlexPatches:
    """A NaFlex processor's (SigLIP 2's) input for one picture: (C, H, W) uint8 -> {"pixel_values" (N, p * p * C),
    "pixel_attention_mask" (N,), "spatial_shapes" (2,)}, the picture resized to its own aspect ratio within the
    processor's patch budget N and padded to it. For training, `geometry` (random crops, flips) runs first."""

    def __init__(self, image_processor, geometry=()):
        self.image_processor = image_processor
        self.geometry = v2.Compose([v2.ToImage(), *geometry])  # (C, H, W) uint8 -> the same, augmented

    def cut(self, picture: torch.Tensor, max_num_patches: int | None = None) -> dict:
        """The picture's patches within `max_num_patches` (default: the processor's budget)."""
        budget = {} if max_num_patches is None else {"max_num_patches": max_num_patches}
        inputs = self.image_processor(images=picture, return_tensors="pt", **budget)
        return {key: value[0] for key, value in inputs.items()}

    def __call__(self, picture) -> dict:
        return self.cut(self.geometry(picture))


def build_transforms(
    image_processor,
    num_channels: int,
    train: bool,
    crop_scale_min=0.8,
    hflip_prob=0.5,
    rand_augment_magnitude=0,
    random_erasing_prob=0.0,
):
    """torchvision v2 pipeline from the processor's size, mean and std: a (C, H, W) uint8 image (or a PIL image) ->
    (C, H, W) float tensor; the geometry works on the uint8 pixels, the conversion to float comes last.

    Training: RandomResizedCrop (its crops shaped like the picture where evaluation squashes it:
    `PictureShapedResizedCrop`) + horizontal flip (+ RandAugment when its magnitude is above 0, + RandomErasing
    after normalisation).
    Evaluation: what the processor itself does (resize with its resampling, then center-crop when the processor
    crops), so eval accuracy matches `pipeline()`; training resizes with the same resampling.
    A NaFlex processor (`is_naflex`) keeps each picture's aspect ratio: `NaFlexPatches`, after, in training, a crop
    at the picture's own aspect ratio, the flip, RandAugment and erasing (of uint8 pixels, to black) on the picture.
    """
    if is_naflex(image_processor):
        augment = [RandomAspectCrop((crop_scale_min, 1.0)), v2.RandomHorizontalFlip(hflip_prob)]
        if rand_augment_magnitude > 0:
            augment.append(v2.RandAugment(num_ops=2, magnitude=rand_augment_magnitude))
        if random_erasing_prob > 0:
            augment.append(v2.RandomErasing(p=random_erasing_prob))
        return NaFlexPatches(image_processor, augment if train else [])
    height, width = processor_size(image_processor)
    interpolation = processor_interpolation(image_processor)
    erasing = []
    if train:
        # around the picture's own shape where evaluation squashes it, around a square where it center-crops
        crop = v2.RandomResizedCrop if getattr(image_processor, "do_center_crop", False) else PictureShapedResizedCrop
        geometry = [crop((height, width), scale=(crop_scale_min, 1.0), interpolation=interpolation, antialias=True)]
        if hflip_prob > 0:
            geometry.append(v2.RandomHorizontalFlip(hflip_prob))
        if rand_augment_magnitude > 0:
            geometry.append(v2.RandAugment(num_ops=2, magnitude=rand_augment_magnitude))
        if random_erasing_prob > 0:
            erasing.append(v2.RandomErasing(p=random_erasing_prob))
    elif getattr(image_processor, "do_center_crop", False):
        resize = image_processor.size
        resize = resize.get("shortest_edge") or (resize["height"], resize["width"])
        geometry = [v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop((height, width))]
    else:
        geometry = [v2.Resize((height, width), interpolation=interpolation, antialias=True)]
    mean, std = image_processor.image_mean, image_processor.image_std
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean[:num_channels], std[:num_channels]),
            *erasing,
        ]
    )


def set_transforms(
    splits: DatasetDict, image_processor, num_channels: int, args: DataArguments, labelled: bool = True, **augmentation
) -> None:
    """Attach the training / evaluation transforms: each batch becomes `pixel_values` and `labels` (class ids, or
    multi-hot targets for a list-of-classes column; `pixel_values` alone when not `labelled`).

    `augmentation`: `build_transforms`' training arguments (`Ingredients.augmentation`), for the train split only.
    """
    for name, split in splits.items():
        transform = build_transforms(image_processor, num_channels, name == "train", **augmentation)
        if name == "train" and args.train_patch_budgets:  # cut later, within each batch's budget (`data.batching`)
            transform = transform.geometry
        num_labels = len(label_names(split.features[args.label_column_name])) if labelled else None

        def apply(batch, transform=transform, num_labels=num_labels):
            images = [decode_image(value, num_channels) for value in batch[args.image_column_name]]
            examples = [model_inputs(transform(image)) for image in images]
            transformed = {key: [example[key] for example in examples] for key in examples[0]}
            if not labelled:
                return transformed
            labels = [encode_label(value, num_labels) for value in batch[args.label_column_name]]
            return {**transformed, "labels": labels}

        split.set_transform(apply)


def attach_transforms(
    data: TrainingData, image_processor, num_channels: int, args: DataArguments, labelled: bool = True, **augmentation
) -> None:
    """Decode and transform `data` on the fly: its splits' `set_transform`, or for a stream its `DecodingCollator`;
    `augmentation` (`Ingredients.augmentation`) for training only."""
    if data.streaming:
        transform = build_transforms(image_processor, num_channels, True, **augmentation)
        num_labels = len(label_names(data.train.features[args.label_column_name])) if labelled else None
        data.collator = DecodingCollator(transform, num_channels, args, data.skipped, num_labels)
        set_transforms(DatasetDict(validation=data.validation), image_processor, num_channels, args, labelled)
    else:
        set_transforms(
            DatasetDict(train=data.train, validation=data.validation),
            image_processor,
            num_channels,
            args,
            labelled,
            **augmentation,
        )


def evaluation_loader(
    split: Dataset,
    image_processor,
    num_channels: int,
    args: DataArguments,
    batch_size: int,
    labelled: bool = True,
    **loader,
) -> torch.utils.data.DataLoader:
    """`split`'s batches in order, each image transformed as `finetune` evaluates it (the processor's resize and
    crop, no augmentation): {"pixel_values", "labels"}. `loader`: the DataLoader's `num_workers`, `pin_memory`."""
    set_transforms(DatasetDict(validation=split), image_processor, num_channels, args, labelled)
    return torch.utils.data.DataLoader(split, batch_size=batch_size, collate_fn=collate, **loader)
