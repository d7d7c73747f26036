"""NaFlex batches filled by patches (`hf_vit.data.batching`): the batch sampler's schedule, its epochs, its shards
across processes, and the batches a real split gives through it."""

import torch
from accelerate.data_loader import BatchSamplerShard
from datasets import ClassLabel, Dataset, Features, Image

from hf_vit.data import DataArguments, collate, set_transforms
from hf_vit.data.batching import BudgetedPictures, PatchBudgetBatches
from hf_vit.data.transforms import NaFlexPatches
from hf_vit.processors import naflex_image_processor

from conftest import random_pictures


def test_each_batch_holds_about_the_same_patches_and_every_picture_comes_once_an_epoch():
    sampler = PatchBudgetBatches(num_examples=103, budgets=[16, 32, 64], patches_per_batch=256, seed=0)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        indices = [index for batch in batches for index, _ in batch]
        assert sorted(indices) == list(range(103))
        for batch in batches:
            (budget,) = {budget for _, budget in batch}  # one budget a batch
            assert len(batch) * budget <= 256 and (len(batch) == 256 // budget or batch is not batches[-1])
        assert {budget for batch in batches for _, budget in batch} == {16, 32, 64}
        epochs.append(indices)
    assert epochs[0] != epochs[1]  # each epoch its own order
    sampler.set_epoch(0)
    assert [index for batch in sampler for index, _ in batch] == epochs[0]  # and the same again for the same epoch


def test_two_processes_get_whole_batches_of_their_own_and_the_same_count():
    sampler = PatchBudgetBatches(num_examples=50, budgets=[16, 64], patches_per_batch=128, seed=3)
    shards = [BatchSamplerShard(sampler, num_processes=2, process_index=rank) for rank in range(2)]
    first, second = (list(shard) for shard in shards)
    assert len(first) == len(second) == len(shards[0])
    assert all(len({budget for _, budget in batch}) == 1 for batch in first + second)
    seen = {index for batch in first + second for index, _ in batch}
    assert seen == set(range(50))


def test_a_split_read_through_the_sampler_gives_batches_cut_within_their_budget(tmp_path):
    shapes = [(72, 24), (24, 72), (48, 48)] * 4
    paths = []
    for index, picture in enumerate(random_pictures(shapes)):
        paths.append(str(tmp_path / f"{index}.png"))
        picture.save(paths[-1])
    features = Features({"image": Image(decode=False), "label": ClassLabel(names=["a", "b"])})
    split = Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "label": [0, 1] * 6}, features)
    processor = naflex_image_processor(8, 64)
    args = DataArguments(max_num_patches=64, train_patch_budgets=[16, 64])
    set_transforms({"train": split}, processor, 3, args)
    pictures = BudgetedPictures(split, NaFlexPatches(processor).cut)
    sampler = PatchBudgetBatches(len(split), [16, 64], patches_per_batch=128, seed=0)
    loader = torch.utils.data.DataLoader(pictures, batch_sampler=sampler, collate_fn=collate)
    for batch in loader:
        size, budget, _ = batch["pixel_values"].shape
        assert budget in (16, 64) and size <= 128 // budget
        heights, widths = batch["spatial_shapes"].T
        assert (heights * widths <= budget).all() and batch["pixel_attention_mask"].sum(1).tolist() == (
            heights * widths
        ).tolist()
        ratios = (
            heights / widths
        ).tolist()  # a 3:1, 1:3 or 1:1 picture (cropped a little) keeps its shape at every budget
        assert all(ratio >= 2 or ratio <= 0.5 or ratio == 1 for ratio in ratios), ratios
