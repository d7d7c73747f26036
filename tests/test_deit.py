"""DeiT: the distillation token and losses, teacher distillation through the Trainer, the data-efficient recipe."""

import copy
import json
import math
from collections import Counter

import pytest
import timm
import torch
from accelerate.data_loader import BatchSamplerShard
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageClassification,
    ConvNextImageProcessor,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
)

from hf_vit import HfDeiTConfig, HfDeiTForImageClassification, HfDeiTModel
from hf_vit.data import DataArguments, collate, load_splits, set_transforms
from hf_vit.interop.key_maps import TIMM_VIT_RULES, TRANSFORMERS_VIT_RULES, load_converted_state_dict, rename_keys
from hf_vit.processors import make_image_processor
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.recipes import deit_ema_decay
from hf_vit.training.regularisation import BatchMixer, ModelEMA, RepeatedAugmentationSampler, TeacherInputAdapter
from hf_vit.training.trainer import ImageClassificationTrainer

from conftest import SMALL_VIT, TWO_PROCESSES, randomize
from test_ecosystem import assert_loads_as_remote_code
from test_finetune import TINY, run_script

SMALL = SMALL_VIT


@pytest.fixture
def tiny_deit_config():
    return HfDeiTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )


def heads(model, pixels):
    out = model(pixels)
    return out.cls_logits, out.distillation_logits


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_distillation_losses_match_the_formulas(tiny_deit_config, distillation_type):
    tiny_deit_config.distillation_type, tiny_deit_config.distillation_alpha = distillation_type, 0.3
    tiny_deit_config.distillation_tau = 2.0
    model = randomize(HfDeiTForImageClassification(tiny_deit_config)).train()
    torch.manual_seed(0)
    pixels, labels, teacher = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 4, 2]), torch.randn(4, 5) * 3
    out = model(pixels, labels=labels, teacher_logits=teacher)
    cls, dist = out.cls_logits, out.distillation_logits
    label_term = -torch.log_softmax(cls, -1)[torch.arange(4), labels].mean()
    if distillation_type == "hard":
        distill_term = -torch.log_softmax(dist, -1)[torch.arange(4), teacher.argmax(-1)].mean()
    else:
        p_teacher, log_p_student = torch.softmax(teacher / 2, -1), torch.log_softmax(dist / 2, -1)
        distill_term = (p_teacher * (torch.log(p_teacher) - log_p_student)).sum() / 4 * 2**2
    torch.testing.assert_close(out.loss, 0.7 * label_term + 0.3 * distill_term)


def test_without_a_teacher_both_heads_learn_from_the_labels_including_soft_ones(tiny_deit_config):
    model = randomize(HfDeiTForImageClassification(tiny_deit_config))
    pixels = torch.randn(3, 3, 32, 32)
    soft = torch.softmax(torch.randn(3, 5), -1)
    out = model(pixels, labels=soft)
    soft_ce = lambda logits: -(soft * torch.log_softmax(logits, -1)).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(out.loss, 0.5 * soft_ce(out.cls_logits) + 0.5 * soft_ce(out.distillation_logits))
    # the article's code trained the CLS head against zeros; here it follows the labels
    assert not torch.allclose(out.loss, model(pixels, labels=torch.zeros(3, dtype=torch.long)).loss)


def test_inference_averages_both_heads_and_bad_combinations_fail(tiny_deit_config):
    model = randomize(HfDeiTForImageClassification(tiny_deit_config))
    out = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    assert out.loss is None
    with pytest.raises(ValueError, match="teacher_logits need labels"):
        model(torch.randn(2, 3, 32, 32), teacher_logits=torch.randn(2, 5))
    tiny_deit_config.distillation_type = "none"
    with pytest.raises(ValueError, match="distillation_type='none'"):
        HfDeiTForImageClassification(tiny_deit_config)(
            torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]), teacher_logits=torch.randn(2, 5)
        )


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(distillation_type="kl"), "distillation_type"),
        (dict(distillation_alpha=1.5), "distillation_alpha"),
        (dict(distillation_tau=0), "distillation_tau"),
        (dict(pooling="mean"), "pooling"),
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
    ],
)
def test_invalid_deit_config_names_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        HfDeiTConfig(**fields)


def test_base_model_has_two_prefix_tokens_and_resamples_around_them(tiny_deit_config):
    model = randomize(HfDeiTModel(tiny_deit_config))
    assert model(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 2 + 16, 32)
    assert model(torch.randn(1, 3, 48, 32), interpolate_pos_encoding=True).last_hidden_state.shape == (1, 2 + 24, 32)


def test_transformers_deit_with_teacher_parity_at_224_and_at_a_resampled_size():
    reference = randomize(DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL, layer_norm_eps=1e-12)))
    ours = HfDeiTForImageClassification(HfDeiTConfig(**SMALL, layer_norm_eps=1e-12)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TRANSFORMERS_VIT_RULES, base="deit"))
    with torch.no_grad():
        for shape, interpolate in (((2, 3, 224, 224), False), ((2, 3, 256, 288), True)):
            pixels = torch.randn(shape)
            expected = reference(pixels, interpolate_pos_encoding=interpolate)
            got = ours(pixels, interpolate_pos_encoding=interpolate)
            assert expected.logits.std() > 0.1
            torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.cls_logits, expected.cls_logits, atol=1e-4, rtol=0)


def test_timm_distilled_deit_parity():
    reference = randomize(timm.create_model("deit_tiny_distilled_patch16_224", depth=2, num_classes=10))
    reference.set_distilled_training(False)
    ours = HfDeiTForImageClassification(HfDeiTConfig(**SMALL, interpolation_antialias=True)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TIMM_VIT_RULES, base="deit"))
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixels)
        assert expected.std() > 0.1
        torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)


def test_deit_checkpoint_loads_as_remote_code(tmp_path, tiny_deit_config):
    model = randomize(HfDeiTForImageClassification(tiny_deit_config))
    assert_loads_as_remote_code(model, tmp_path / "deit", torch.randn(2, 3, 32, 32))


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


def test_teacher_inputs_resize_and_renormalise():
    adapt = TeacherInputAdapter([0.5] * 3, [0.5] * 3, (16, 16), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    pixels = torch.full((1, 3, 8, 8), 1.0)  # white in the student's normalisation
    out = adapt(pixels)
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(
        out[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )
    same = TeacherInputAdapter([0.5] * 3, [0.5] * 3, (8, 8), [0.5] * 3, [0.5] * 3)
    assert same(pixels) is pixels


def make_resnet_teacher(path, labels, image_size=48):
    """A transformers CNN teacher with its own size and ImageNet normalisation."""
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=1.0).save_pretrained(path)
    return path


def test_trainer_keeps_the_teacher_frozen_and_out_of_the_checkpoint(tmp_path, tiny_deit_config):
    labels = [str(d) for d in range(10)]
    teacher = ResNetForImageClassification.from_pretrained(make_resnet_teacher(tmp_path / "teacher", labels))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tiny_deit_config.num_labels, tiny_deit_config.id2label = 10, dict(enumerate(labels))
    tiny_deit_config.label2id = {name: i for i, name in enumerate(labels)}
    student = HfDeiTForImageClassification(tiny_deit_config)
    data_args = DataArguments(max_train_samples=64)
    splits = load_splits(data_args)
    processor = make_image_processor(32)
    set_transforms(splits, processor, 3, data_args, crop_scale_min=0.8, hflip_prob=0.0)
    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path / "student"),
        num_train_epochs=1,
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-3,
        weight_decay=0.05,
        warmup_steps=0.02,
    )
    adapt = TeacherInputAdapter([0.5] * 3, [0.5] * 3, (48, 48), processor.image_mean, processor.image_std)
    trainer = ImageClassificationTrainer(
        model=student,
        args=args,
        train_dataset=splits["train"],
        data_collator=collate,
        teacher=teacher,
        teacher_inputs=adapt,
    )
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    trainer.train()
    for key, value in trainer.teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    trainer.save_model()
    saved = load_file(tmp_path / "student" / "model.safetensors")
    assert all(key.startswith(("deit.", "classifier.", "distillation_classifier.")) for key in saved)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "student")
    assert reloaded(torch.randn(1, 3, 32, 32)).logits.shape == (1, 10)

    other = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16], depths=[1], num_labels=3))
    with pytest.raises(ValueError, match="The teacher's labels .* differ from the student's"):
        ImageClassificationTrainer(model=student, args=args, train_dataset=splits["train"], teacher=other)


def test_whole_recipe_with_a_teacher_runs_end_to_end_in_two_processes(tmp_path):
    teacher = make_resnet_teacher(tmp_path / "teacher", [str(d) for d in range(10)])
    output_dir = tmp_path / "deit"
    launcher = TWO_PROCESSES
    args = [
        "--output_dir",
        str(output_dir),
        "--model_type",
        "hf_deit",
        "--recipe",
        "deit",
        "--teacher_name_or_path",
        str(teacher),
        "--num_train_epochs",
        "2",
        "--max_train_samples",
        "96",
        "--max_eval_samples",
        "32",
        "--config_overrides",
        TINY,
        "--disable_tqdm",
        "true",
        "--per_device_train_batch_size",
        "16",
    ]
    result = run_script(args, launcher=launcher)
    assert result.stdout.count("eval: accuracy") == 1
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * math.ceil(96 / 32)
    config = json.loads((output_dir / "config.json").read_text())
    assert (
        config["model_type"] == "hf_deit" and config["drop_path_rate"] == 0.0
    )  # DeiT's 0.1 scaled to 96 images x 2 epochs
    assert (
        result.stdout.count("recipe 'deit' for hf_deit from scratch, 96 training images of 32 px in 10 classes") == 1
        and "drop_path_rate = 0.0: DeiT's, at strength 0.00" in result.stdout
    )
    saved = load_file(output_dir / "model.safetensors")
    assert "deit.embeddings.distillation_token" in saved and not any("teacher" in key for key in saved)


def test_teacher_needs_a_distilling_student(tmp_path):
    teacher = make_resnet_teacher(tmp_path / "teacher", [str(d) for d in range(10)])
    result = run_script(
        ["--output_dir", str(tmp_path / "out"), "--teacher_name_or_path", str(teacher), "--config_overrides", TINY],
        expect_success=False,
    )
    assert result.returncode != 0 and "needs a model that distills (--model_type hf_deit)" in result.stderr


def test_recipe_study_writes_its_table_and_plot(tmp_path):
    runs = ["ViT, plain recipe", "DeiT, deit recipe + CNN teacher, truncated-normal start"]  # the second an ablation
    result = run_script(
        ["--output_dir", str(tmp_path), "--seeds", "0", "--epochs", "1", "--max_train_samples", "48", "--runs", *runs],
        script="recipe_study.py",
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(row["dataset"], row["run"]) for row in rows] == [
        (dataset, run) for dataset in ("digits", "photo_patches") for run in ["CNN (ResNet, 3 stages)", *runs]
    ]
    assert all(0 <= row["min_accuracy"] <= row["mean_accuracy"] <= row["max_accuracy"] <= 1 for row in rows)
    assert "| photo_patches | DeiT, deit recipe + CNN teacher, truncated-normal start |" in result.stdout
    assert (tmp_path / "results.csv").read_text().startswith("dataset,run,mean_accuracy")
    assert (tmp_path / "recipe_study.png").read_bytes()[:4] == b"\x89PNG"
    distilled = tmp_path / "photo_patches" / "seed0" / "DeiT_deit_recipe_and_CNN_teacher_truncated-normal_start"
    config = json.loads((distilled / "config.json").read_text())
    assert config["model_type"] == "hf_deit" and config["distillation_type"] == "hard"
    assert (
        config["position_embedding_init"] == "trunc_normal"
    )  # the ablation's flag, over the recipe's sine-cosine start
    assert config["patch_embedding_init"] == "xavier"  # the recipe's, for a student from scratch with a teacher


def test_deit_attention_implementations_agree_and_checkpointing_matches(tiny_deit_config):
    eager = randomize(
        HfDeiTForImageClassification._from_config(copy.deepcopy(tiny_deit_config), attn_implementation="eager")
    )
    sdpa = HfDeiTForImageClassification._from_config(copy.deepcopy(tiny_deit_config), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    torch.testing.assert_close(eager(pixels).logits, sdpa(pixels).logits, atol=1e-5, rtol=1e-5)
    assert eager(pixels, output_attentions=True).attentions[0].shape == (2, 4, 18, 18)
    checkpointed = HfDeiTForImageClassification(tiny_deit_config).train()
    checkpointed.load_state_dict(eager.state_dict())
    checkpointed.gradient_checkpointing_enable()
    for model in (eager.train(), checkpointed):
        model(
            pixels, labels=labels, teacher_logits=torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
        ).loss.backward()
    for (name, a), b in zip(eager.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
