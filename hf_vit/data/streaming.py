"""Training data a job reads as a stream (`--streaming`), and the training data of any job, whole or streamed.

load_stream(...)          -> (training IterableDataset, evaluation Dataset) for --streaming
load_training_data(...)   -> TrainingData: a stream, or both splits whole (`transforms.attach_transforms`
                             prepares it)
"""

import hashlib
import multiprocessing
from dataclasses import dataclass

from datasets import ClassLabel, Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict

from .batching import BudgetedPictures, EpochBatches, PatchBudgetBatches, SeededViews
from .decoding import collate
from .sources import (
    DataArguments,
    check_columns,
    data_columns,
    drop_unreadable,
    evaluation_split_name,
    is_multi_label,
    load_splits,
    open_source,
)

STREAM_EVAL_SAMPLES = 1000  # evaluation images taken from the head of a stream that has no evaluation split


def check_streaming(args: DataArguments, training_args) -> None:
    """A stream has no length: `--streaming` needs `--max_steps`."""
    if args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a stream has no length to count epochs in)")


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
    train_batches: PatchBudgetBatches | EpochBatches | None = None  # `batch_by_patches`, `replay_views`

    def batch_by_patches(self, cut, budgets, patches_per_batch: int, seed: int) -> None:
        """Train on NaFlex batches filled by patches (`data.batching`): each batch draws one of `budgets`, holds
        about `patches_per_batch` patches, and `cut(picture, budget)` cuts its pictures (`NaFlexPatches.cut`). The
        training split's transform must leave the pictures whole (`set_transforms` does, given
        `--train_patch_budgets`)."""
        self.train_batches = PatchBudgetBatches(len(self.train), budgets, patches_per_batch, seed)
        self.train = BudgetedPictures(self.train, cut)

    def replay_views(self, batch_size: int, seed: int, drop_last: bool = False) -> None:
        """Train on views that can be replayed (`data.batching.SeededViews`): each picture's view in an epoch drawn
        from (seed, epoch, index) alone, its batches keyed by (index, epoch) (`EpochBatches`)."""
        self.train_batches = EpochBatches(len(self.train), batch_size, seed, drop_last)
        self.train = SeededViews(self.train, seed)

    def trainer_inputs(self) -> dict:
        """The Trainer's `train_dataset`, `eval_dataset` and `data_collator` (and `train_batch_sampler` for batches
        filled by patches)."""
        inputs = dict(train_dataset=self.train, eval_dataset=self.validation, data_collator=self.collator)
        return inputs if self.train_batches is None else dict(inputs, train_batch_sampler=self.train_batches)

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
