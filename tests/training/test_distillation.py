"""Teacher distillation (DeiT): the teacher's inputs, the teacher frozen and out of the checkpoint, the whole recipe
in two processes, fp32 losses, and the combinations that are refused."""

import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models._hub import save_for_hf
from transformers import (
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
)

from hf_vit import HfDeiTConfig, HfDeiTForImageClassification
from hf_vit.data import DataArguments, collate, load_splits, set_transforms
from hf_vit.guards import UsageError
from hf_vit.models.modeling_deit import deit_loss
from hf_vit.processors import make_image_processor
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.finetune import finetune
from hf_vit.training.finetune import parse_args as finetune_args
from hf_vit.training.regularisation import TeacherInputAdapter
from hf_vit.training.trainer import ImageClassificationTrainer

from conftest import TINY, TINY_CLASSIFIER, TWO_PROCESSES, make_resnet_teacher, run_script

# the optimisation ingredients a Trainer built by hand needs set (the recipe sets them in finetune)
RECIPE_SET = dict(learning_rate=1e-3, weight_decay=0.05, warmup_steps=0.02, eval_strategy="no")


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
    with pytest.raises(ValueError, match="The teacher has 3 classes and the data 10"):
        ImageClassificationTrainer(model=student, args=args, train_dataset=splits["train"], teacher=other)


def test_whole_recipe_with_a_teacher_runs_end_to_end_in_two_processes(tmp_path):
    teacher = make_resnet_teacher(tmp_path / "teacher", [str(d) for d in range(10)])
    output_dir = tmp_path / "deit"
    launcher = TWO_PROCESSES
    args = ["--output_dir", str(output_dir), "--model_type", "hf_deit", "--recipe", "deit",
            "--teacher_name_or_path", str(teacher), "--num_train_epochs", "2", "--max_train_samples", "96",
            "--max_eval_samples", "32", "--config_overrides", TINY, "--disable_tqdm", "true",
            "--per_device_train_batch_size", "16"]  # fmt: skip
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


def test_any_student_learns_from_a_teacher_whose_classes_come_in_another_order(tmp_path):
    """An hf_vit student (no distillation token) with a CNN teacher whose classes are the digits backwards: the
    teacher's logits are put in the student's order, the soft loss is the one the flags name, the summary says so,
    and the saved student holds no teacher weight."""
    teacher = make_resnet_teacher(tmp_path / "teacher", [str(d) for d in reversed(range(10))])
    output_dir = tmp_path / "vit"
    args = ["--output_dir", str(output_dir), "--teacher_name_or_path", str(teacher), "--distillation_type", "soft",
            "--distillation_tau", "2", "--num_train_epochs", "1", "--max_train_samples", "64", "--max_eval_samples",
            "16", "--config_overrides", TINY, "--disable_tqdm", "true"]  # fmt: skip
    result = run_script(args)
    assert f"distillation from {teacher}: soft, alpha 0.5, tau 2" in result.stdout
    saved = load_file(output_dir / "model.safetensors")
    assert saved and all(key.startswith(("vit.", "classifier.")) for key in saved)

    student = AutoModelForImageClassification.from_pretrained(output_dir)
    model_args = finetune_args(args)[0]
    trainer = ImageClassificationTrainer(
        model=student,
        args=FinetuneTrainingArguments(output_dir=str(tmp_path / "again"), **RECIPE_SET),
        teacher=ResNetForImageClassification.from_pretrained(teacher),
        distillation=model_args.distillation(student.config),
    )
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reversed_logits = trainer.teacher(pixels).logits
    torch.testing.assert_close(trainer.teacher_logits(pixels), reversed_logits.flip(-1))  # "0" is the teacher's last
    logits, labels = torch.randn(2, 10), torch.tensor([3, 7])
    expected = 0.5 * F.cross_entropy(logits, labels) + 0.5 * 4 * F.kl_div(
        F.log_softmax(logits / 2, -1), F.softmax(reversed_logits / 2, -1), reduction="batchmean"
    )
    torch.testing.assert_close(trainer.distillation.loss(logits, labels, reversed_logits, student.config), expected)


def test_a_swin_student_learns_from_a_timm_teacher(tmp_path):
    """A timm checkpoint as timm saves it for the Hub (`save_for_hf`: transformers loads it as a TimmWrapper)
    teaches an hf_swin student; its classes have no names, so they are taken in order."""
    reference = timm.create_model("resnet18", num_classes=10, pretrained=False)
    save_for_hf(reference, str(tmp_path / "timm_teacher"), safe_serialization=True)
    output_dir = tmp_path / "swin"
    args = ["--output_dir", str(output_dir), "--model_type", "hf_swin", "--teacher_name_or_path",
            str(tmp_path / "timm_teacher"), "--num_train_epochs", "1", "--max_train_samples", "32",
            "--max_eval_samples", "16", "--disable_tqdm", "true", "--per_device_train_batch_size", "16",
            "--config_overrides", "embed_dim=16,depths=[1,1],num_heads=[1,2]"]  # fmt: skip
    result = run_script(args)
    assert result.stdout.count("eval: accuracy") == 1 and "distillation from" in result.stdout
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == "hf_swin"


@pytest.mark.parametrize(
    "teacher_labels, flags, message",
    [
        ([str(d) for d in range(9)] + ["ten"], (), "The teacher's classes .* are not the data's"),
        ([str(d) for d in range(10)], ("--distillation_type", "medium"), "--distillation_type must be 'hard' or"),
        (None, ("--distillation_alpha", "0.3"), "--distillation_alpha sets how a student learns from a teacher"),
    ],
    ids=["unmatched class names", "unknown type", "settings without a teacher"],
)
def test_a_teacher_that_cannot_teach_is_refused_before_training(tmp_path, teacher_labels, flags, message):
    teacher = () if teacher_labels is None else ("--teacher_name_or_path", str(tmp_path / "teacher"))
    if teacher_labels is not None:
        make_resnet_teacher(tmp_path / "teacher", teacher_labels)
    args = ["--output_dir", str(tmp_path / "out"), *teacher, *flags, "--config_overrides", TINY]
    with pytest.raises(UsageError, match=message):
        finetune(*finetune_args(args))
    assert not (tmp_path / "out").exists()


def test_class_weights_and_a_teacher_are_refused_together(tmp_path):
    args = ["--output_dir", str(tmp_path / "run"), "--model_type", "hf_deit", "--teacher_name_or_path",
            str(tmp_path), "--class_weights", "balanced"]  # fmt: skip
    with pytest.raises(UsageError, match="--class_weights and --teacher_name_or_path do not combine"):
        finetune(*finetune_args(args))


def test_distillation_and_label_losses_are_computed_in_fp32():
    config = HfDeiTConfig(**TINY_CLASSIFIER, distillation_type="soft", distillation_tau=2.0)
    torch.manual_seed(0)
    cls_logits, distillation_logits, teacher = (torch.randn(4, 3) * 8 for _ in range(3))
    labels = torch.tensor([0, 1, 2, 0])
    half = [tensor.bfloat16() for tensor in (cls_logits, distillation_logits, teacher)]
    loss = deit_loss(*half[:2], labels, half[2], config)
    assert loss.dtype == torch.float32
    expected = deit_loss(*(tensor.float() for tensor in half[:2]), labels, half[2].float(), config)
    assert float(loss) == float(expected)  # the bf16 logits, but every term in fp32
    config.distillation_type = "hard"
    assert deit_loss(*half[:2], labels, half[2], config).dtype == torch.float32
