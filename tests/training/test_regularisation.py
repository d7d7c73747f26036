"""The data-efficient recipe's regularisers: repeated augmentation, Mixup/CutMix with smoothing, the EMA and its
decay."""

from collections import Counter

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from hf_vit.training.recipes import RECIPES, RunFacts, deit_ema_decay
from hf_vit.training.regularisation import BatchMixer, ModelEMA, RepeatedAugmentationSampler


def test_repeated_augmentation_sampler_repeats_within_batches_keeps_length_and_shards_disjointly():
    sampler = RepeatedAugmentationSampler(100, batch_size=16, repeats=3, seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 100
    batches = [indices[start : start + 16] for start in range(0, 100, 16)]
    assert all(max(Counter(batch).values()) <= 3 for batch in batches)  # at most `repeats` copies, in the same batch
    assert all(len(set(batch)) < len(batch) for batch in batches[:-1])  # and they are repeated there
    assert len(set(indices)) == sum(len(set(batch)) for batch in batches) < 50  # no image in two batches, ~n / 3
    assert list(RepeatedAugmentationSampler(100, 16, 3, seed=1)) == indices  # same order on every process
    sampler.set_epoch(1)
    assert list(sampler) != indices
    batches = torch.utils.data.BatchSampler(
        RepeatedAugmentationSampler(96, 8, 3, seed=0), batch_size=8, drop_last=False
    )
    shards = [list(BatchSamplerShard(batches, num_processes=2, process_index=rank)) for rank in (0, 1)]
    positions = [{(i, j) for i, batch in enumerate(shard) for j in range(len(batch))} for shard in shards]
    assert len(shards[0]) == len(shards[1]) == 6
    flat = [index for shard in shards for batch in shard for index in batch]
    assert sorted(flat) == sorted(RepeatedAugmentationSampler(96, 8, 3, seed=0))  # together they cover the epoch once
    assert shards[0] != shards[1] and positions[0] == positions[1]


@pytest.mark.parametrize("batch_size, repeats", [(16, 3), (7, 3), (128, 3), (5, 2), (2, 3), (9, 4)])
def test_no_image_is_mixed_with_its_own_copy_under_repeated_augmentation(batch_size, repeats):
    """Labels name the images: a mixed target is pure (one class) exactly when an image met a copy of itself."""
    num_images = 4 * batch_size + 3  # a last, smaller batch too
    sampler = RepeatedAugmentationSampler(num_images, batch_size, repeats, seed=0)
    loader = torch.utils.data.DataLoader(torch.arange(num_images), batch_size=batch_size, sampler=sampler)
    mixer = BatchMixer(num_classes=num_images, mixup_alpha=1.0, cutmix_alpha=1.0)
    torch.manual_seed(0)
    for images in loader:
        if len(images) == 1:
            continue
        assert max(Counter(images.tolist()).values()) <= repeats
        partners = images[BatchMixer.partners(len(images))]
        assert not torch.any(partners == images)
        for _ in range(3):  # Mixup and CutMix draws
            _, targets = mixer(torch.randn(len(images), 3, 16, 16), images)
            mixed = (targets > 0).sum(-1)
            assert torch.all((mixed == 2) | (targets.max(-1).values == 1.0))  # two images, unless lam drew 0 or 1


def test_ema_follows_the_update_rule_and_swaps_weights_in_and_out():
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * start["weight"] + 0.1 * model.weight)
    trained = model.weight.detach().clone()
    with ema.applied_to(model):
        torch.testing.assert_close(model.weight, ema.shadow["weight"])
    torch.testing.assert_close(model.weight, trained)
    assert deit_ema_decay(15_000) == pytest.approx(0.999)


def test_batch_mixer_makes_soft_targets_with_smoothing():
    mixer = BatchMixer(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    pixels, targets = mixer(torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert targets.shape == (6, 4) and pixels.shape == (6, 3, 8, 8)
    torch.testing.assert_close(targets.sum(-1), torch.ones(6))
    assert targets.min() >= 0.1 / 4 - 1e-6
    smoothing_only = BatchMixer(num_classes=4, label_smoothing=0.2)
    _, targets = smoothing_only(torch.randn(2, 3, 8, 8), torch.tensor([3, 0]))
    torch.testing.assert_close(targets, torch.tensor([[0.05, 0.05, 0.05, 0.85], [0.85, 0.05, 0.05, 0.05]]))
    assert not BatchMixer(num_classes=4).active


def test_the_ema_decay_follows_max_steps_not_the_epochs():
    facts = dict(
        num_train_images=50_000,
        num_labels=10,
        image_size=32,
        model_type="hf_vit",
        from_checkpoint=False,
        has_teacher=False,
        num_train_epochs=20,
        global_batch_size=128,
    )
    by_epochs = RECIPES["deit"](RunFacts(**facts))["ema_decay"][0]
    by_steps = RECIPES["deit"](RunFacts(**facts, max_steps=500))["ema_decay"][0]
    assert by_epochs == pytest.approx(1 - 15 / (391 * 20))
    assert by_steps == pytest.approx(1 - 15 / 500)  # the last ~1/15 of the 500 steps taken
    assert 0.9**500 < 1e-20 and by_steps**500 < 1e-6  # nothing of the random start survives in the average
