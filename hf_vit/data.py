"""Datasets and on-the-fly transforms for the training scripts.

    load_splits(...)          -> DatasetDict(train, validation) with an image column and a ClassLabel column
                                 (`labelled=False`: the image column alone, for pretraining)
    make_image_processor(...) -> the ViTImageProcessor saved with every checkpoint (size, mean, std)
    set_transforms(...)       -> torchvision v2 pipelines applied lazily with `Dataset.set_transform`

How strongly training images are augmented is the recipe's choice (`recipes.py`); this module applies it.
"""

import io
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image as PILImage
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import ViTImageProcessor
from transformers.utils import logging

from .cli import check_local_path, looks_like_local_path
from .configuration_utils import to_2tuple

logger = logging.get_logger(__name__)

DIGITS = "digits"
IMAGE_EXTENSIONS = set(ImageFolder.EXTENSIONS)  # the files `imagefolder` reads


@dataclass
class DataArguments:
    """Where the images come from and how they are prepared."""

    _argument_group_name = "data"

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset id or a local dataset directory. Default: the embedded `digits` data."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder directory for training."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder directory for evaluation."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation images."})
    image_size: int | None = field(
        default=None, metadata={"help": "Train and evaluate at this size (default: the model's image_size)."}
    )

    @property
    def uses_embedded_digits(self) -> bool:
        """No dataset named: the embedded digits (whose mirror images are not digits)."""
        return self.dataset_name is None and self.train_dir is None and self.validation_dir is None


def load_digits_splits(seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside scikit-learn) as a DatasetDict.

    A fixed stratified 80 / 20 split: 1,437 training and 360 validation images, grayscale PIL, labels "0".."9".
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    train_idx, val_idx = train_test_split(
        np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=seed
    )
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})

    def split(indices):
        images = [PILImage.fromarray(pixels[i], mode="L") for i in indices]
        return Dataset.from_dict({"image": images, "label": digits.target[indices].tolist()}, features=features)

    return DatasetDict(train=split(train_idx), validation=split(val_idx))


def load_splits(args: DataArguments, seed: int = 0, labelled: bool = True) -> DatasetDict:
    """Train and validation splits with `args.image_column_name` and a ClassLabel `args.label_column_name` (only
    the image column when not `labelled`: unlabelled images for pretraining).

    Sources, by precedence: `dataset_name` (Hub id or local dir), `train_dir`/`validation_dir` (imagefolder),
    else the embedded digits. Raises ValueError naming a missing path or column, or an empty split.
    """
    if args.dataset_name is not None:
        check_local_path(args.dataset_name, "--dataset_name")
        splits = load_dataset(args.dataset_name, args.dataset_config_name)
    elif args.train_dir is not None or args.validation_dir is not None:
        data_files = {}
        for split, directory in (("train", args.train_dir), ("validation", args.validation_dir)):
            if directory is None:
                continue
            flag = f"--{split if split == 'train' else 'validation'}_dir"
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"{flag} {directory!r} is not a directory")
            if not any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for _, _, names in os.walk(directory) for name in names):
                raise ValueError(f"{flag} {directory!r} holds no image files")
            data_files[split] = os.path.join(directory, "**")
        splits = load_dataset("imagefolder", data_files=data_files)
    else:
        splits = load_digits_splits(seed)

    if "train" not in splits:
        raise ValueError(f"The dataset has no 'train' split; it has {list(splits)}")
    columns = (args.image_column_name, args.label_column_name) if labelled else (args.image_column_name,)
    for split in splits.values():
        for column in columns:
            if column not in split.column_names:
                raise ValueError(
                    f"Column {column!r} not found in the dataset; its columns are {split.column_names}. "
                    "Choose others with --image_column_name / --label_column_name."
                )
    splits = DatasetDict({name: split.select_columns(list(columns)) for name, split in splits.items()})
    if not len(splits["train"]):
        raise ValueError(f"The dataset's train split has no images (columns {list(columns)})")
    validation = next((splits[name] for name in ("validation", "val", "valid", "test") if name in splits), None)
    train = splits["train"]
    if validation is None:
        parts = train.train_test_split(test_size=args.train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
    splits = DatasetDict(train=train, validation=validation)

    if labelled and not isinstance(train.features[args.label_column_name], ClassLabel):
        splits = splits.class_encode_column(args.label_column_name)
    if labelled and args.train_dir is not None and args.dataset_name is None:
        check_class_folders(args.train_dir, splits["train"], args.label_column_name)
    if args.max_train_samples is not None:
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        count = min(args.max_eval_samples, len(splits["validation"]))
        splits["validation"] = splits["validation"].select(range(count))
    splits = splits.cast_column(args.image_column_name, Image(decode=False))
    for name, split in splits.items():
        check_images_readable(split, args.image_column_name, name)
    return splits


def check_class_folders(train_dir: str, train: Dataset, label_column: str) -> None:
    """imagefolder drops class folders without images: warn about those in `train_dir`, and fail on a class that
    has evaluation images but no training image (the model could never learn it)."""
    names = train.features[label_column].names
    counts = np.bincount(train[label_column], minlength=len(names))
    untrained = [name for name, count in zip(names, counts) if count == 0]
    if untrained:
        raise ValueError(f"Classes {untrained} have evaluation images but no training image in --train_dir "
                         f"{train_dir!r}; add training images or remove the classes from the evaluation data")  # fmt: skip
    folders = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    dropped = [folder for folder in folders if folder not in names]
    if dropped and set(names) <= set(folders):  # one folder per class: the missing ones hold no image
        logger.warning("Class folders without images in --train_dir %r are left out of the label set: %s",
                       train_dir, ", ".join(dropped))  # fmt: skip


def describe_dataset(args: DataArguments) -> tuple[str, str | None]:
    """(a name for people, the Hub dataset id or None): a model card lists a dataset only by its Hub id."""
    if args.dataset_name is not None:
        local = looks_like_local_path(args.dataset_name)
        return (os.path.basename(os.path.normpath(args.dataset_name)) if local else args.dataset_name,
                None if local else args.dataset_name)  # fmt: skip
    if args.train_dir is not None or args.validation_dir is not None:
        return f"imagefolder {os.path.basename(os.path.normpath(args.train_dir or args.validation_dir))}", None
    return "scikit-learn digits (embedded in hf_vit)", None


def open_image(value) -> PILImage.Image:
    """Decode one undecoded `datasets.Image` value ({"bytes", "path"}), naming the file if it can't be read."""
    name = value.get("path") or "<in-memory image>"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        image = PILImage.open(source)
        image.load()
        return image
    except Exception as error:
        raise ValueError(f"Cannot read image {name}: {error}") from error


def check_images_readable(split: Dataset, column: str, split_name: str) -> None:
    """Open every image once before training starts, so a bad file fails fast and nothing is half-written."""
    for value in tqdm(split[column], desc=f"Checking {split_name} images", leave=False, disable=len(split) < 5000):
        open_image(value)


def make_image_processor(image_size, num_channels: int = 3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> ViTImageProcessor:
    """The processor saved with every checkpoint: resize to image_size (a side or (height, width)), scale to [0, 1],
    normalise `num_channels` channels (a one-channel model's processor normalises (H, W, 1) arrays; three values
    would not broadcast)."""
    height, width = to_2tuple(image_size)
    return ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(mean[:num_channels]),
                             image_std=list(std[:num_channels]))  # fmt: skip


def set_processor_size(image_processor, image_size) -> None:
    """Make `image_processor` produce inputs of `image_size` (a side, or (height, width) as timm-converted configs
    store it); a center-cropping processor keeps its crop fraction (it resizes the short side to the crop's short
    side / crop fraction first)."""
    height, width = to_2tuple(image_size)
    if getattr(image_processor, "do_center_crop", False):
        size = image_processor.size
        resized = size.get("shortest_edge") or size["height"]
        crop_fraction = image_processor.crop_size["height"] / resized
        image_processor.size = {"shortest_edge": int(min(height, width) / crop_fraction)}
        image_processor.crop_size = {"height": height, "width": width}
    else:
        image_processor.size = {"height": height, "width": width}


def processor_size(image_processor) -> tuple[int, int]:
    size = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    size = size or image_processor.size
    if "height" in size:
        return size["height"], size["width"]
    return size["shortest_edge"], size["shortest_edge"]


def build_transforms(
    image_processor, num_channels: int, train: bool, crop_scale_min=0.8, hflip_prob=0.5, rand_augment_magnitude=0,
    random_erasing_prob=0.0,
):  # fmt: skip
    """torchvision v2 pipeline from the processor's size, mean and std: PIL image -> (C, H, W) float tensor.

    Training: RandomResizedCrop + horizontal flip (+ RandAugment when its magnitude is above 0, + RandomErasing
    after normalisation).
    Evaluation: what the processor itself does (resize, then center-crop when the processor crops), so eval
    accuracy matches `pipeline()`.
    """
    height, width = processor_size(image_processor)
    erasing = []
    if train:
        geometry = [v2.RandomResizedCrop((height, width), scale=(crop_scale_min, 1.0), antialias=True)]
        if hflip_prob > 0:
            geometry.append(v2.RandomHorizontalFlip(hflip_prob))
        if rand_augment_magnitude > 0:
            geometry.append(v2.RandAugment(num_ops=2, magnitude=rand_augment_magnitude))
        if random_erasing_prob > 0:
            erasing.append(v2.RandomErasing(p=random_erasing_prob))
    elif getattr(image_processor, "do_center_crop", False):
        resize = image_processor.size
        resize = resize.get("shortest_edge") or (resize["height"], resize["width"])
        geometry = [v2.Resize(resize, antialias=True), v2.CenterCrop((height, width))]
    else:
        geometry = [v2.Resize((height, width), antialias=True)]
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


def set_transforms(splits: DatasetDict, image_processor, num_channels: int, args: DataArguments, labelled: bool = True,
                   **augmentation) -> None:  # fmt: skip
    """Attach the training / evaluation transforms: each batch becomes `pixel_values` and `labels` (`pixel_values`
    alone when not `labelled`).

    `augmentation`: `build_transforms`' training arguments (`Ingredients.augmentation`), for the train split only.
    """
    mode = "RGB" if num_channels == 3 else "L"
    for name, split in splits.items():
        transform = build_transforms(image_processor, num_channels, name == "train", **augmentation)

        def apply(batch, transform=transform):
            images = [open_image(value).convert(mode) for value in batch[args.image_column_name]]
            transformed = {"pixel_values": [transform(image) for image in images]}
            return {**transformed, "labels": batch[args.label_column_name]} if labelled else transformed

        split.set_transform(apply)


def collate(examples) -> dict:
    """Examples -> {"pixel_values": (B, C, H, W), "labels": (B,)} (no labels for unlabelled examples)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch
