"""Folders of pictures: the files `imagefolder` reads, class folders, and folders streamed as they are walked.

image_files(directory)                 the image files under a folder, walked lazily
class_folders(directory)               its class folders
stream_image_folders(directories)      imagefolders as streams that start at once
check_class_folders(train_dir, ...)    the class folders the training split lost
"""

import itertools
import os

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, IterableDataset, IterableDatasetDict
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from transformers.utils import logging

logger = logging.get_logger(__name__)


IMAGE_EXTENSIONS = set(ImageFolder.EXTENSIONS)  # the files `imagefolder` reads


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
