"""The article's DeiT comparison: its small ViT from scratch with a naive recipe, with DeiT's recipe, and with
DeiT's recipe plus hard distillation from a small CNN teacher trained first.

    compare_recipes(output_dir, ...) -> rows; results.json / .md / .csv and eval_curves.png
"""

import json
import os
import time

from transformers import ResNetConfig, ResNetForImageClassification

from ..data import DIGITS, DataArguments, collate, load_splits, make_image_processor, set_transforms
from ..finetune import ModelArguments, finetune, label_fields
from ..metrics import compute_metrics
from ..recipes import RecipeArguments
from ..trainer import FinetuneTrainingArguments, ImageClassificationTrainer
from .report import plot_curves, save_results


def train_cnn_teacher(output_dir: str, data_args: DataArguments, training_args: FinetuneTrainingArguments) -> dict:
    """A small transformers ResNet trained on the same data (crop augmentation, no flip on digits) and saved with
    its image processor."""
    splits = load_splits(data_args, seed=training_args.seed)
    labels = splits["train"].features[data_args.label_column_name].names
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], **label_fields(labels))
    processor = make_image_processor(data_args.image_size or 32)
    set_transforms(splits, processor, 3, data_args, crop_scale_min=0.8, hflip_prob=0.0 if data_args.uses_embedded_digits else 0.5)
    trainer = ImageClassificationTrainer(
        model=ResNetForImageClassification(config), args=training_args, train_dataset=splits["train"],
        eval_dataset=splits["validation"], data_collator=collate, compute_metrics=compute_metrics,
        processing_class=processor,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return trainer.evaluate()


def eval_curve(output_dir: str) -> list[float]:
    """Eval accuracy after each epoch (the closing evaluation repeats the last epoch and is not counted twice)."""
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        by_epoch = {entry["epoch"]: entry["eval_accuracy"] for entry in json.load(f)["log_history"] if "eval_accuracy" in entry}
    return list(by_epoch.values())


def compare_recipes(output_dir: str, epochs: int = 15, batch_size: int = 32, learning_rate: float = 1e-3,
                    dataset_name: str | None = None, max_train_samples: int | None = None, seed: int = 42) -> list[dict]:  # fmt: skip
    """Train the article's ViT (32 px, patch 4, d_model 128) three ways on the same data, epochs and peak lr.

    - naive: AdamW without weight decay, constant learning rate, no augmentation beyond resizing;
    - deit: `--recipe deit` (RandAugment, Mixup/CutMix, label smoothing, random erasing, stochastic depth, repeated
      augmentation, EMA, weight decay, cosine schedule with warmup) on hf_deit, both heads learning the labels;
    - deit + teacher: the same with hard distillation from a small CNN trained first.

    DeiT's linear learning-rate rule (5e-4 x batch / 512) is meant for 300 epochs on ImageNet; every run here uses
    the same peak `learning_rate` so that only the recipe differs. Writes results.json / .md / .csv and a plot.
    """
    data_args = DataArguments(dataset_name=dataset_name, max_train_samples=max_train_samples, image_size=32)

    def training(run_dir: str, **overrides) -> FinetuneTrainingArguments:
        return FinetuneTrainingArguments(
            output_dir=run_dir, num_train_epochs=epochs, per_device_train_batch_size=batch_size, seed=seed,
            learning_rate=learning_rate, save_strategy="no", disable_tqdm=False, **overrides,
        )  # fmt: skip

    teacher_dir = os.path.join(output_dir, "cnn_teacher")
    start = time.perf_counter()
    teacher_metrics = train_cnn_teacher(teacher_dir, data_args, training(teacher_dir, weight_decay=0.05, warmup_steps=0.02))
    rows = [dict(run="CNN teacher (ResNet, 3 stages)", eval_accuracy=teacher_metrics["eval_accuracy"],
                 epochs=epochs, seconds=round(time.perf_counter() - start, 1))]  # fmt: skip
    runs = {
        "ViT, naive recipe": (
            ModelArguments(model_type="hf_vit"), dict(weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0),
            RecipeArguments(crop_scale_min=1.0, hflip_prob=0.0),
        ),
        "DeiT recipe": (
            ModelArguments(model_type="hf_deit", config_overrides="distillation_type=none"), {}, RecipeArguments(recipe="deit"),
        ),
        "DeiT recipe + hard distillation": (
            ModelArguments(model_type="hf_deit", teacher_name_or_path=teacher_dir), {}, RecipeArguments(recipe="deit"),
        ),
    }  # fmt: skip
    curves = {}
    for name, (model_args, training_overrides, recipe_args) in runs.items():
        run_dir = os.path.join(output_dir, name.lower().replace(",", "").replace("+ ", "").replace(" ", "_"))
        start = time.perf_counter()
        metrics = finetune(model_args, data_args, training(run_dir, **training_overrides), recipe_args)
        curves[name] = eval_curve(run_dir)
        rows.append(dict(run=name, eval_accuracy=metrics["eval_accuracy"], best_eval_accuracy=max(curves[name]),
                         epochs=epochs, seconds=round(time.perf_counter() - start, 1)))  # fmt: skip
    title = f"{dataset_name or DIGITS}: the article's ViT, {epochs} epochs"
    save_results(rows, output_dir, title, curves=curves)
    plot_curves(curves, os.path.join(output_dir, "eval_curves.png"), title)
    return rows
