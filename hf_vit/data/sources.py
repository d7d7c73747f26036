"""Where a job's images come from, checked before anything is trained: the embedded digits, an imagefolder, a Hub
dataset or a local one.

    DataArguments             the data flags every job shares
    load_splits(...)          -> DatasetDict(train, validation) with an image column and a ClassLabel column, or
                                 a list of ClassLabel for multi-label data (`labelled=False`: the image column
                                 alone, for pretraining), every image checked
    label_names(feature) / is_multi_label(feature) / encode_label(value, num_labels)   the label column's classes
"""

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDatasetDict,
    LargeList,
    List,
    load_dataset,
)
from PIL import Image as PILImage
from transformers.utils import logging

from ..guards import check_local_path, looks_like_local_path
from .decoding import PARALLEL_CHECK_FROM, unreadable_in
from .folders import METADATA_FILES, check_class_folders, class_folders, image_files, stream_image_folders

logger = logging.get_logger(__name__)


DIGITS = "digits"


EVALUATION_SPLITS = ("validation", "val", "valid", "test")  # the names a dataset's evaluation split goes by, in order


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
    label_column_name: str = field(
        default="label",
        metadata={
            "help": "Column holding the class labels: one class per image, or a list of classes per image "
            "(multi-label: a Sequence(ClassLabel) column, or lists in an imagefolder's metadata.jsonl)."
        },
    )
    label_separator: str | None = field(
        default=None,
        metadata={
            "help": "Multi-label data whose label column holds text (metadata.csv): the separator between an "
            "image's classes, e.g. ';'."
        },
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation images."})
    image_size: int | None = field(
        default=None, metadata={"help": "Train and evaluate at this size (default: the model's image_size)."}
    )
    max_num_patches: int | None = field(
        default=None, metadata={"help": "NaFlex: each picture at its own aspect ratio, within this many patches."}
    )
    train_patch_budgets: list[int] | None = field(
        default=None,
        metadata={
            "help": "NaFlex training batches filled by patches (timm's NaFlex loader): each batch draws one of these "
            "budgets, cuts its pictures within it and holds per_device_train_batch_size * max_num_patches // budget "
            "pictures, so every batch carries about as many patches. Needs --max_num_patches (the evaluation's)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training images as a stream (datasets' IterableDataset): no pass over the data before "
            "training, a shuffle buffer, each process its share; needs --max_steps. Unreadable images are skipped "
            "and counted."
        },
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "--streaming: images in the shuffle buffer."})
    skip_unreadable_images: bool = field(
        default=False,
        metadata={"help": "Leave out (and count) images that cannot be read instead of stopping before training."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes that open every image before training (default: the cores, for splits of more "
            f"than {PARALLEL_CHECK_FROM:,} images)."
        },
    )

    def __post_init__(self):
        for flag in ("max_train_samples", "max_eval_samples", "max_num_patches"):
            if getattr(self, flag) is not None and getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be at least 1, got {getattr(self, flag)}")
        if self.train_patch_budgets is not None:
            if self.max_num_patches is None:
                raise ValueError("--train_patch_budgets fills NaFlex batches by patches; it needs --max_num_patches")
            if self.streaming:
                raise ValueError(
                    "--train_patch_budgets draws batches by index from the training split, which a stream "
                    "(--streaming) is not: leave one out"
                )
            if not self.train_patch_budgets or min(self.train_patch_budgets) < 1:
                raise ValueError(f"--train_patch_budgets must be budgets of at least 1, got {self.train_patch_budgets}")
        if self.max_num_patches is not None and self.image_size is not None:
            raise ValueError("--max_num_patches keeps each picture's own shape; --image_size squares them: give one")
        if self.dataset_name is not None and (self.train_dir is not None or self.validation_dir is not None):
            raise ValueError("--dataset_name and --train_dir / --validation_dir name two sources: give one")

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


def open_source(args: DataArguments, seed: int = 0, streaming: bool = False, num_shards: int = 1):
    """The splits of the data `args` name, as they come (a DatasetDict, or an IterableDatasetDict when
    `streaming`, our own streams cut into `num_shards` shards). Sources, by precedence: `dataset_name` (Hub id or
    local dir), `train_dir`/`validation_dir` (imagefolder), else the embedded digits. Raises naming a missing path,
    or a folder without images."""
    if args.dataset_name is not None:
        check_local_path(args.dataset_name, "--dataset_name")
        return load_dataset(args.dataset_name, args.dataset_config_name, streaming=streaming)
    if args.train_dir is not None or args.validation_dir is not None:
        directories = {
            split: directory
            for split, directory in (("train", args.train_dir), ("validation", args.validation_dir))
            if directory is not None
        }
        for split, directory in directories.items():
            flag = f"--{split}_dir"
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"{flag} {directory!r} is not a directory")
            if next(image_files(directory), None) is None:
                raise ValueError(f"{flag} {directory!r} holds no image files")
        with_metadata = any(
            os.path.isfile(os.path.join(d, name)) for d in directories.values() for name in METADATA_FILES
        )
        if streaming and not with_metadata:
            return stream_image_folders(directories, num_shards)
        data_files = {split: os.path.join(directory, "**") for split, directory in directories.items()}
        return load_dataset("imagefolder", data_files=data_files, streaming=streaming)
    splits = load_digits_splits(seed)
    return (
        IterableDatasetDict(
            {name: split.to_iterable_dataset(num_shards=min(num_shards, len(split))) for name, split in splits.items()}
        )
        if streaming
        else splits
    )


def data_columns(args: DataArguments, labelled: bool) -> tuple[str, ...]:
    """The columns a job reads: the image column, and the label column when `labelled`."""
    return (args.image_column_name, args.label_column_name) if labelled else (args.image_column_name,)


def evaluation_split_name(splits) -> str | None:
    return next((name for name in EVALUATION_SPLITS if name in splits), None)


def check_columns(splits, columns, train_dir: str | None = None) -> None:
    """Every split has every one of `columns`: else a ValueError naming the missing column and the ones there are (for
    an imagefolder of one class folder, whose images `datasets` leaves unlabelled, that it needs two classes)."""
    for split in splits.values():
        names = split.column_names or list(split.features or {})
        for column in columns:
            if column in names:
                continue
            folders = class_folders(train_dir) if train_dir is not None and column == columns[-1] else []
            if len(columns) > 1 and len(folders) == 1:
                raise ValueError(
                    f"--train_dir {train_dir!r} holds one class folder ({os.path.basename(folders[0])!r}): a "
                    "classifier needs at least two classes, each in a folder of its own"
                )
            raise ValueError(
                f"Column {column!r} not found in the dataset; its columns are {names}. "
                "Choose others with --image_column_name / --label_column_name."
            )


def is_multi_label(feature) -> bool:
    """A label column holding a list of classes per image."""
    return isinstance(feature, (List, LargeList))


def label_names(feature) -> list[str]:
    """The class names of a ClassLabel column, or of a list-of-ClassLabel (multi-label) column."""
    return (feature.feature if is_multi_label(feature) else feature).names


def encode_label(value, num_labels: int):
    """A label as the model's loss takes it: a class id stays an id; a list of ids (multi-label) becomes a multi-hot
    float vector (num_labels,)."""
    if not isinstance(value, list):
        return value
    targets = [0.0] * num_labels
    for index in value:
        targets[index] = 1.0
    return targets


def encode_multi_label(splits: DatasetDict, column: str, separator: str | None) -> DatasetDict:
    """A label column of lists of class names or ids (or of `separator`-joined text) as a list of ClassLabel, the
    classes named by the training split (sorted). Raises naming the classes only the evaluation split has."""
    feature = splits["train"].features[column]
    if is_multi_label(feature) and isinstance(feature.feature, ClassLabel):
        return splits

    def as_list(value):
        if value is None:  # an untagged image (an empty cell of metadata.csv): no class
            return []
        if separator is not None and isinstance(value, str):
            return [part.strip() for part in value.split(separator) if part.strip()]
        return [str(item) for item in value]

    classes = {name: {item for value in split[column] for item in as_list(value)} for name, split in splits.items()}
    # numbers in numeric order, then names; isdecimal, not isdigit: '①' is a digit that int() does not read
    names = sorted(classes["train"], key=lambda name: (0, int(name), "") if name.isdecimal() else (1, 0, name))
    unknown = sorted(set(classes["validation"]) - set(names))
    if unknown:
        raise ValueError(
            f"The evaluation split's label column {column!r} has classes no training image has: {unknown[:10]}"
            + (f" ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        )
    index = {name: i for i, name in enumerate(names)}
    encoded = splits.map(
        lambda batch: {column: [[index[item] for item in as_list(value)] for value in batch[column]]},
        batched=True,
        desc="Encoding the label lists",
    )
    return encoded.cast_column(column, List(ClassLabel(names=names)))


def load_splits(
    args: DataArguments, seed: int = 0, labelled: bool = True, evaluation_only: bool = False
) -> DatasetDict:
    """Train and validation splits with `args.image_column_name` and a ClassLabel `args.label_column_name` (only
    the image column when not `labelled`: unlabelled images for pretraining), every image checked readable (see
    `open_source` for where they come from). Raises ValueError naming a missing path or column, or an empty split.
    `evaluation_only` (a job that only evaluates): an evaluation split alone will do (`--validation_dir` alone);
    the result then has a validation split only.
    """
    splits = open_source(args, seed)
    columns = data_columns(args, labelled)
    if "train" not in splits and not (evaluation_only and evaluation_split_name(splits)):
        raise ValueError(f"The dataset has no 'train' split; it has {list(splits)}")
    check_columns(splits, columns, args.train_dir if args.dataset_name is None else None)
    splits = DatasetDict({name: split.select_columns(list(columns)) for name, split in splits.items()})
    name = evaluation_split_name(splits)
    if "train" not in splits:  # evaluation only, from an evaluation split alone
        splits = DatasetDict(validation=splits[name])
    elif not len(splits["train"]):
        raise ValueError(f"The dataset's train split has no images (columns {list(columns)})")
    elif name is None:
        parts = splits["train"].train_test_split(test_size=args.train_val_split, seed=seed)
        splits = DatasetDict(train=parts["train"], validation=parts["test"])
    else:
        splits = DatasetDict(train=splits["train"], validation=splits[name])
    has_train = "train" in splits

    # the classes are named by the training split when there is one
    label_feature = (
        splits["train" if has_train else "validation"].features[args.label_column_name] if labelled else None
    )
    if labelled and (is_multi_label(label_feature) or args.label_separator is not None):
        if not has_train:
            raise ValueError(
                "Multi-label data is evaluated with the training split beside it (its classes are named there)"
            )
        splits = encode_multi_label(splits, args.label_column_name, args.label_separator)
    elif labelled and not isinstance(label_feature, ClassLabel):
        splits = splits.class_encode_column(args.label_column_name)
    if has_train:
        encoded = splits["train"].features[args.label_column_name] if labelled else None
        if labelled and args.train_dir is not None and args.dataset_name is None and not is_multi_label(encoded):
            check_class_folders(args.train_dir, splits["train"], args.label_column_name)
        if args.max_train_samples is not None:
            count = min(args.max_train_samples, len(splits["train"]))
            splits["train"] = splits["train"].shuffle(seed=seed).select(range(count))
    if args.max_eval_samples is not None:
        count = min(args.max_eval_samples, len(splits["validation"]))
        splits["validation"] = splits["validation"].select(range(count))
    splits = splits.cast_column(args.image_column_name, Image(decode=False))
    return drop_unreadable(splits, args)


def drop_unreadable(splits: DatasetDict, args: DataArguments) -> DatasetDict:
    """`splits` without their unreadable images when `args.skip_unreadable_images` (counted in a warning); else
    a ValueError naming them all."""
    errors = on_main_process(
        lambda: {
            name: unreadable_in(split, args.image_column_name, name, args.preprocessing_num_workers)
            for name, split in splits.items()
        }
    )
    found = [error for split_errors in errors.values() for _, error in split_errors]
    if found:
        listed = "; ".join(found[:10]) + (f"; ... and {len(found) - 10} more" if len(found) > 10 else "")
        if not args.skip_unreadable_images:
            raise ValueError(
                f"{len(found)} unreadable image(s): {listed}. Remove them, or pass --skip_unreadable_images "
                "to leave them out"
            )
        logger.warning("Leaving out %d unreadable image(s): %s", len(found), listed)
        for name, split_errors in errors.items():
            bad = {index for index, _ in split_errors}
            splits[name] = splits[name].select([index for index in range(len(splits[name])) if index not in bad])
    return splits


def on_main_process(compute):
    """`compute()` run by the main process alone, its result (or its error) handed to every other process: a
    dataset's images are checked once, with all the machine's cores, however many processes train."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_world_size() == 1:
        return compute()
    outcome = [None, None]
    if torch.distributed.get_rank() == 0:
        try:
            outcome[0] = compute()
        except Exception as error:  # raised by every process, not only the first (the others would wait forever)
            outcome[1] = error
    torch.distributed.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def describe_dataset(args: DataArguments) -> tuple[str, str | None]:
    """(a name for people, the Hub dataset id or None): a model card lists a dataset only by its Hub id."""
    if args.dataset_name is not None:
        local = looks_like_local_path(args.dataset_name)
        return (
            os.path.basename(os.path.normpath(args.dataset_name)) if local else args.dataset_name,
            None if local else args.dataset_name,
        )
    if args.train_dir is not None or args.validation_dir is not None:
        return f"imagefolder {os.path.basename(os.path.normpath(args.train_dir or args.validation_dir))}", None
    return "scikit-learn digits (embedded in hf_vit)", None
