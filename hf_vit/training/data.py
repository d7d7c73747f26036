"""Where a job's images come from, checked before anything is trained: the embedded digits, an imagefolder, a Hub
dataset or a local one, whole or streamed.

    load_splits(...)          -> DatasetDict(train, validation) with an image column and a ClassLabel column, or
                                 a list of ClassLabel for multi-label data (`labelled=False`: the image column
                                 alone, for pretraining), every image checked
    label_names(feature) / is_multi_label(feature) / encode_label(value, num_labels)   the label column's classes
    load_stream(...)          -> (training IterableDataset, evaluation Dataset) for --streaming
    load_training_data(...)   -> TrainingData: either of the above (`transforms.attach_transforms` prepares it)
    decode_image(value, channels) / collate(examples)   one image -> a uint8 tensor; examples -> a batch
"""

import hashlib
import io
import itertools
import multiprocessing
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    IterableDatasetDict,
    LargeList,
    List,
    load_dataset,
)
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image as PILImage
from torchvision.io import ImageReadMode
from torchvision.transforms.v2.functional import pil_to_tensor
from transformers.utils import logging

from ..guards import check_local_path, looks_like_local_path

logger = logging.get_logger(__name__)

DIGITS = "digits"
EVALUATION_SPLITS = ("validation", "val", "valid", "test")  # the names a dataset's evaluation split goes by, in order
PARALLEL_CHECK_FROM = 5_000  # images in a split from which opening them all is worth a pool of processes
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
        for flag in ("max_train_samples", "max_eval_samples"):
            if getattr(self, flag) is not None and getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be at least 1, got {getattr(self, flag)}")
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


# imagefolder's metadata files (extra columns per image); a folder with one is streamed by `datasets` itself
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(name: str) -> bool:
    """What `datasets` leaves out of a data directory."""
    return name.startswith((".", "__"))


def image_files(directory: str):
    """The image files under `directory`, walked lazily (sorted within each folder, hidden ones left out)."""
    for root, folders, names in os.walk(directory):
        folders[:] = sorted(folder for folder in folders if not is_hidden(folder))
        yield from (os.path.join(root, name) for name in sorted(names) if is_image_file(name) and not is_hidden(name))


def labelled_images(folders: tuple[str, ...], labels: tuple[int, ...], shards: list[int], num_shards: int):
    """Undecoded images under the class `folders` with their `labels`, one image of each class in turn while the
    class has any left; of those, shard s of `num_shards` holds every num_shards-th from the s-th on (so every
    shard holds every class) and `shards` names the shards to read."""
    for shard in shards:
        yield from itertools.islice(classes_in_turn(folders, labels), shard, None, num_shards)


def classes_in_turn(folders: tuple[str, ...], labels: tuple[int, ...]):
    walks = {label: image_files(folder) for label, folder in zip(labels, folders)}
    while walks:
        for label, walk in list(walks.items()):
            path = next(walk, None)
            if path is None:
                del walks[label]
            else:
                yield {"image": {"path": path, "bytes": None}, "label": label}


def unlabelled_images(directory: str, shards: list[int], num_shards: int):
    for shard in shards:
        walk = itertools.islice(image_files(directory), shard, None, num_shards)
        yield from ({"image": {"path": path, "bytes": None}} for path in walk)


def class_folders(directory: str) -> list[str]:
    """The folders of `directory` that hold images (each looked into up to its first), sorted; images beside class
    folders are an error (imagefolder would label them by the parent folder's name)."""
    entries = [entry for entry in os.scandir(directory) if not is_hidden(entry.name)]
    folders = sorted(entry.path for entry in entries if entry.is_dir() and next(image_files(entry.path), None))
    loose = sorted(entry.name for entry in entries if entry.is_file() and is_image_file(entry.name))
    if folders and loose:
        raise ValueError(
            f"{directory!r} holds images beside its class folders ({', '.join(loose[:3])}, ...): put "
            "every image in the folder of its class"
        )
    return folders


def stream_image_folders(directories: dict[str, str], num_shards: int = 1) -> IterableDatasetDict:
    """Imagefolders (split -> directory) as streams that start at once, however many files they hold: only the
    class folders are listed (each up to its first image), to name the labels as `imagefolder` does (sorted over
    every split, folders without images left out); their files are walked as the stream is read, one image of each
    class in turn, so that a shuffle buffer mixes the classes however many images each holds (`datasets`' own
    imagefolder stream lists and checks every file first, then reads them class by class). Each stream is cut into
    `num_shards` shards, every shard all classes, so that as many data-loading workers can read it (`datasets` gives
    each worker whole shards). Images nested deeper take their top-level folder's class; a folder of images without
    class folders streams them unlabelled. Columns: `image` (undecoded), `label` (ClassLabel)."""
    folders = {split: class_folders(directory) for split, directory in directories.items()}
    names = sorted({os.path.basename(folder) for split_folders in folders.values() for folder in split_folders})
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    streams, shards = {}, {"shards": list(range(num_shards)), "num_shards": num_shards}  # lists are cut into shards
    for split, directory in directories.items():
        if not folders[split]:
            streams[split] = IterableDataset.from_generator(
                unlabelled_images, gen_kwargs={"directory": directory, **shards}, features=Features({"image": Image()})
            )
            continue
        labels = tuple(names.index(os.path.basename(folder)) for folder in folders[split])
        # tuples, not lists: `datasets` would cut lists of folders into shards, each shard a few classes
        streams[split] = IterableDataset.from_generator(
            labelled_images,
            gen_kwargs={"folders": tuple(folders[split]), "labels": labels, **shards},
            features=features,
        )
    return IterableDatasetDict(streams)


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
            if column not in names and train_dir is not None and len(columns) > 1 and column == columns[1]:
                folders = [os.path.basename(folder) for folder in class_folders(train_dir)]
                raise ValueError(
                    f"--train_dir {train_dir!r} holds {len(folders)} class folder(s) {folders[:3]}: a classifier "
                    "needs at least two classes, each in a folder of its own"
                )
            if column not in names:
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
    if "train" not in splits:
        return evaluation_split(splits, args)
    if not len(splits["train"]):
        raise ValueError(f"The dataset's train split has no images (columns {list(columns)})")
    train, name = splits["train"], evaluation_split_name(splits)
    if name is None:
        parts = train.train_test_split(test_size=args.train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
    else:
        validation = splits[name]
    splits = DatasetDict(train=train, validation=validation)

    label_feature = train.features[args.label_column_name] if labelled else None
    if labelled and (is_multi_label(label_feature) or args.label_separator is not None):
        splits = encode_multi_label(splits, args.label_column_name, args.label_separator)
    elif labelled and not isinstance(label_feature, ClassLabel):
        splits = splits.class_encode_column(args.label_column_name)
    encoded = splits["train"].features[args.label_column_name] if labelled else None
    if labelled and args.train_dir is not None and args.dataset_name is None and not is_multi_label(encoded):
        check_class_folders(args.train_dir, splits["train"], args.label_column_name)
    if args.max_train_samples is not None:
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        count = min(args.max_eval_samples, len(splits["validation"]))
        splits["validation"] = splits["validation"].select(range(count))
    splits = splits.cast_column(args.image_column_name, Image(decode=False))
    return drop_unreadable(splits, args)


def evaluation_split(splits: DatasetDict, args: DataArguments) -> DatasetDict:
    """An evaluation split on its own (`load_splits(evaluation_only=True)` without a training split), labels
    encoded, images checked: DatasetDict(validation=...)."""
    validation = splits[evaluation_split_name(splits)]
    splits = DatasetDict(validation=validation)
    feature = validation.features[args.label_column_name]
    if is_multi_label(feature) or args.label_separator is not None:
        raise ValueError(
            "Multi-label data is evaluated with the training split beside it (its classes are named there)"
        )
    if not isinstance(feature, ClassLabel):
        splits = splits.class_encode_column(args.label_column_name)
    if args.max_eval_samples is not None:
        splits["validation"] = splits["validation"].select(range(min(args.max_eval_samples, len(validation))))
    return drop_unreadable(splits.cast_column(args.image_column_name, Image(decode=False)), args)


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


STREAM_EVAL_SAMPLES = 1000  # evaluation images taken from the head of a stream that has no evaluation split


def check_streaming(args: DataArguments, training_args) -> None:
    """A stream has no length: `--streaming` needs `--max_steps`."""
    if args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a stream has no length to count epochs in)")


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


def load_stream(args: DataArguments, seed: int = 0, labelled: bool = True, readers: int = 1):
    """(training stream, evaluation Dataset) for `--streaming`: the training split as a shuffled `IterableDataset`
    of undecoded images, nothing read ahead; the evaluation split map-style (its images checked): the source's own,
    else the first `max_eval_samples` (default `STREAM_EVAL_SAMPLES`) images of the stream, which training leaves
    out by name (path or content, so however the stream is later split between processes). `readers`: the
    processes x data-loading workers that will share the stream (our streams get as many shards)."""
    source = open_source(args, seed, streaming=True, num_shards=readers)
    columns = data_columns(args, labelled)
    if "train" not in source:
        raise ValueError(f"The dataset has no 'train' split; it has {list(source)}")
    check_columns(source, columns)
    source = IterableDatasetDict({name: split.select_columns(list(columns)) for name, split in source.items()})
    train = source["train"]
    feature = train.features[args.label_column_name] if labelled else None
    if labelled and not isinstance(feature.feature if is_multi_label(feature) else feature, ClassLabel):
        raise ValueError(
            f"--streaming needs the label column {args.label_column_name!r} to be a ClassLabel or a list of "
            f"ClassLabel (its classes known before reading the stream); it is {feature}"
        )
    count = args.max_eval_samples or STREAM_EVAL_SAMPLES
    name = evaluation_split_name(source)
    train = train.cast_column(args.image_column_name, Image(decode=False))
    evaluation = source[name].cast_column(args.image_column_name, Image(decode=False)) if name is not None else train
    validation = Dataset.from_list(list(evaluation.take(count)), features=evaluation.features)
    if name is None and len(validation) < count:
        raise ValueError(
            f"The stream holds only {len(validation)} images, and all of them would be held out for evaluation "
            f"(up to {count}): give an evaluation split (--validation_dir), a smaller --max_eval_samples, or train "
            "without --streaming"
        )
    if name is None:
        held_out = {image_key(value) for value in validation[args.image_column_name]}
        train = train.filter(lambda example: image_key(example[args.image_column_name]) not in held_out)
    validation = drop_unreadable(DatasetDict(validation=validation), args)["validation"]
    return train.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size), validation


def image_key(value: dict) -> str:
    """What identifies an undecoded image: its path, else a digest of its bytes."""
    return value.get("path") or hashlib.sha1(value["bytes"]).hexdigest()


def check_class_folders(train_dir: str, train: Dataset, label_column: str) -> None:
    """imagefolder drops class folders without images: warn about those in `train_dir`, and fail on a class that
    has evaluation images but no training image (the model could never learn it)."""
    names = train.features[label_column].names
    counts = np.bincount(train[label_column], minlength=len(names))
    untrained = [name for name, count in zip(names, counts) if count == 0]
    if untrained:
        raise ValueError(
            f"Classes {untrained} have evaluation images but no training image in --train_dir "
            f"{train_dir!r}; add training images or remove the classes from the evaluation data"
        )
    folders = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir())
    dropped = [folder for folder in folders if folder not in names]
    if dropped and set(names) <= set(folders):  # one folder per class: the missing ones hold no image
        logger.warning(
            "Class folders without images in --train_dir %r are left out of the label set: %s",
            train_dir,
            ", ".join(dropped),
        )


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


def unreadable_images(batch: dict, column: str) -> dict:
    """`datasets.map` function: the error of each image that cannot be opened ("" for the readable ones)."""
    errors = []
    for value in batch[column]:
        try:
            open_image(value)
            errors.append("")
        except ValueError as error:
            errors.append(str(error))
    return {"error": errors}


def unreadable_in(split: Dataset, column: str, split_name: str, num_proc: int | None = None) -> list[tuple[int, str]]:
    """(index, error) of every image of `split` that cannot be opened: each is opened once before training starts,
    in `num_proc` processes (default: the cores for splits of more than `PARALLEL_CHECK_FROM` images), so bad files
    are found at once and nothing is half-written."""
    if num_proc is None:
        num_proc = (os.cpu_count() or 1) if len(split) > PARALLEL_CHECK_FROM else None
    checked = split.select_columns([column]).map(
        unreadable_images,
        fn_kwargs={"column": column},
        batched=True,
        batch_size=256,
        num_proc=num_proc,
        remove_columns=[column],
        desc=f"Checking {split_name} images",
    )
    return [(index, error) for index, error in enumerate(checked["error"]) if error]


def collate(examples) -> dict:
    """Examples -> {"pixel_values": (B, C, H, W), "labels": (B,) ids or (B, num_labels) multi-hot targets} (no
    labels for unlabelled examples)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch


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


def decode_image(value, num_channels: int) -> torch.Tensor:
    """One undecoded `datasets.Image` value -> a (C, H, W) uint8 tensor with `num_channels` (3: RGB, 1: gray),
    decoded once, straight into the tensor the transforms work on (torchvision's decoders: JPEG, PNG, WebP, GIF);
    other formats go through PIL. A file that cannot be read is a ValueError naming it."""
    try:
        if value.get("bytes") is not None:
            data = value["bytes"]
        else:
            with open(value["path"], "rb") as file:
                data = file.read()
        return torchvision.io.decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB if num_channels == 3 else ImageReadMode.GRAY,
        )
    except (RuntimeError, OSError):  # not a format torchvision decodes, or not an image at all: PIL says which
        return pil_to_tensor(open_image(value).convert("RGB" if num_channels == 3 else "L"))


def stream_readers(training_args) -> int:
    """How many read a training stream at once: the data-loading workers (or the process itself) of each process."""
    return max(1, training_args.dataloader_num_workers) * training_args.world_size


@dataclass
class TrainingData:
    """What a job trains and evaluates on: the training split (a `Dataset`, or with `--streaming` an
    `IterableDataset`), the evaluation split (a `Dataset`), and for a stream the count of the unreadable images it
    skipped (shared with the data-loading workers)."""

    train: Dataset | IterableDataset
    validation: Dataset
    skipped: object = None  # multiprocessing.Value("i") for a stream
    collator: object = collate  # the Trainer's data_collator

    def trainer_inputs(self) -> dict:
        """The Trainer's `train_dataset`, `eval_dataset` and `data_collator`."""
        return dict(train_dataset=self.train, eval_dataset=self.validation, data_collator=self.collator)

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, IterableDataset)

    def length(self, training_args) -> str:
        """How long the run trains, for its closing line: "N steps" (of a stream) or "N epochs"."""
        if training_args.max_steps > 0:
            return f"{training_args.max_steps} steps" + (" of a stream" if self.streaming else "")
        return f"{training_args.num_train_epochs:g} epochs"


def load_training_data(args: DataArguments, seed: int = 0, labelled: bool = True, training_args=None) -> TrainingData:
    """The training and evaluation data `args` name: a stream and its evaluation split with `args.streaming`
    (`load_stream`, in a shard for every worker of every process `training_args` start), else both splits, every
    image checked (`load_splits`)."""
    if args.streaming:
        readers = 1 if training_args is None else stream_readers(training_args)
        train, validation = load_stream(args, seed, labelled, readers)
        return TrainingData(train, validation, multiprocessing.Value("i", 0))
    splits = load_splits(args, seed, labelled)
    return TrainingData(splits["train"], splits["validation"])
