"""Batches filled by patches rather than by pictures, for NaFlex training (timm's NaFlex loader is the model): each
batch draws one patch budget, cuts its pictures within it, and holds as many pictures as fit a fixed number of
patches, so a batch at a small budget (short sequences) holds more pictures instead of more padding.

    PatchBudgetBatches   the batch sampler: lists of (index, budget) keys
    BudgetedPictures     a map-style split read by those keys: each picture cut into patches within its budget

And views that can be replayed (for the teacher-logit cache): each picture's training view drawn from (seed,
epoch, index) alone.

    EpochBatches         the batch sampler: lists of (index, epoch) keys
    SeededViews          a map-style split read by those keys: each example transformed under its own seed
"""

import hashlib
from collections.abc import Callable

import torch


class EpochSeed:
    """The epoch a sampler draws for; accelerate calls `set_epoch` on a batch sampler's `sampler` when it shards the
    batches across processes, and the Trainer on the batch sampler itself otherwise."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class PatchBudgetBatches(torch.utils.data.Sampler):
    """Batches of (index, budget) keys: each batch draws one of `budgets` and holds `patches_per_batch // budget`
    pictures (at least one), so every batch carries about `patches_per_batch` patches.

    The schedule of (budget, pictures) is drawn once from `seed`, so every epoch and every process has the same
    number of batches (the Trainer counts them; accelerate deals them out to the processes); each epoch shuffles the
    pictures and the order of the batches.
    """

    def __init__(self, num_examples: int, budgets, patches_per_batch: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.schedule, remaining = [], num_examples
        while remaining > 0:
            budget = budgets[int(torch.randint(len(budgets), (), generator=generator))]
            size = min(max(1, patches_per_batch // budget), remaining)
            self.schedule.append((budget, size))
            remaining -= size
        self.num_examples, self.seed, self.sampler = num_examples, seed, EpochSeed()

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.schedule)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + 1 + self.sampler.epoch)
        order = torch.randperm(self.num_examples, generator=generator).tolist()
        start = 0
        for position in torch.randperm(len(self.schedule), generator=generator).tolist():
            budget, size = self.schedule[position]
            yield [(index, budget) for index in order[start : start + size]]
            start += size


class BudgetedPictures(torch.utils.data.Dataset):
    """A map-style training split whose transform leaves each picture whole (augmented, (C, H, W)), read by the
    (index, budget) keys of `PatchBudgetBatches`: the example with its picture cut into NaFlex patches within that
    budget by `cut(picture, budget)` (`NaFlexPatches.cut`: `pixel_values` (budget, p * p * C),
    `pixel_attention_mask`, `spatial_shapes`)."""

    def __init__(self, split, cut: Callable[[torch.Tensor, int], dict]):
        self.split, self.cut = split, cut

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key) -> dict:
        index, budget = key
        example = dict(self.split[index])
        return {**example, **self.cut(example["pixel_values"], budget)}


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of picture `index`'s training view in `epoch`, from the run's seed alone."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SeededViews(torch.utils.data.Dataset):
    """A map-style training split (its transform set) read by (index, epoch) keys: each example transformed under
    the torch seed `view_seed(seed, epoch, index)`, with `example_index` and `epoch` beside it, so the same key gives
    the same view in any run, process or worker."""

    def __init__(self, split, seed: int):
        self.split, self.seed = split, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key) -> dict:
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, epoch, index))
            example = dict(self.split[index])
        return {**example, "example_index": torch.tensor(index), "epoch": torch.tensor(epoch)}


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (index, epoch) keys: every picture once an epoch, shuffled from (seed, epoch); `drop_last` drops a
    last smaller batch. The epoch comes from `set_epoch` (the Trainer's, through accelerate)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, drop_last: bool = False):
        self.num_examples, self.batch_size, self.seed, self.drop_last = num_examples, batch_size, seed, drop_last
        self.sampler = EpochSeed()

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        whole, rest = divmod(self.num_examples, self.batch_size)
        return whole + (rest > 0 and not self.drop_last)

    def __iter__(self):
        epoch = self.sampler.epoch
        order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield [(index, epoch) for index in order[start : start + self.batch_size]]
