"""The recipe study: which recipe fits small data, measured over seeds on two datasets.

On the embedded digits (1,437 gray 8x8 digits) and the photo patches (`photo_patches`: 400 colour crops of real
photographs, 8 classes), for each seed: a small CNN (a transformers ResNet, 3 stages) trained first, then the
article's ViT with the plain, auto and DeiT recipes, and DeiT (distillation token) with the auto recipe and hard
distillation from that CNN. Every run has the same epochs and batch.

    study_recipes(output_dir, ...) -> rows (mean, min, max accuracy per dataset and run); results.* and a plot
"""

import os
import statistics
import time

import numpy as np
from transformers import ResNetConfig, ResNetForImageClassification

from ..data import DIGITS, DataArguments, collate, load_splits, make_image_processor, set_transforms
from ..figures import new_figure, save_plot
from ..finetune import ModelArguments, finetune, label_fields
from ..metrics import compute_metrics
from ..recipes import PLAIN, TRAINING_INGREDIENTS, RecipeArguments, flip_choice
from ..trainer import FinetuneTrainingArguments, ImageClassificationTrainer
from .photo_patches import make_photo_patches
from .report import save_results

TEACHER = "CNN (ResNet, 3 stages)"
# run name: (model type, recipe, distilled from the CNN)
RUNS = {
    "ViT, plain recipe": ("hf_vit", "plain", False),
    "ViT, auto recipe": ("hf_vit", "auto", False),
    "ViT, deit recipe": ("hf_vit", "deit", False),
    "DeiT, auto recipe + CNN teacher": ("hf_deit", "auto", True),
}


def train_cnn(output_dir: str, data_args: DataArguments, training_args: FinetuneTrainingArguments) -> dict:
    """The small CNN, trained with the plain recipe's optimisation and crop (+ flip) augmentation, saved with its
    image processor so that it can teach."""
    splits = load_splits(data_args, seed=training_args.seed)
    labels = splits["train"].features[data_args.label_column_name].names
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], **label_fields(labels))
    processor = make_image_processor(data_args.image_size or 32)
    hflip_prob, _ = flip_choice(not data_args.uses_embedded_digits)
    set_transforms(splits, processor, 3, data_args, crop_scale_min=PLAIN["crop_scale_min"], hflip_prob=hflip_prob)
    for name in TRAINING_INGREDIENTS:
        setattr(training_args, name, PLAIN[name])
    trainer = ImageClassificationTrainer(
        model=ResNetForImageClassification(config), args=training_args, train_dataset=splits["train"],
        eval_dataset=splits["validation"], data_collator=collate, compute_metrics=compute_metrics,
        processing_class=processor,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return trainer.evaluate()


def dataset_arguments(name: str, output_dir: str, max_train_samples: int | None) -> DataArguments:
    """The embedded digits, or the photo patches written under `output_dir`; 32 px either way."""
    dataset_name = None if name == DIGITS else make_photo_patches(os.path.join(output_dir, "data", name))
    return DataArguments(dataset_name=dataset_name, max_train_samples=max_train_samples, image_size=32)


def study_recipes(output_dir: str, datasets=(DIGITS, "photo_patches"), runs=tuple(RUNS), seeds=(0, 1, 2),
                  epochs: float = 15, batch_size: int = 16, max_train_samples: int | None = None) -> list[dict]:  # fmt: skip
    """Every run of `runs` (and the CNN) on every dataset and seed. Rows: dataset, run, mean / min / max final eval
    accuracy over the seeds, mean seconds. Writes results.json (with every run's accuracy), .md, .csv and
    recipe_study.png."""
    accuracies, seconds = {}, {}
    for dataset in datasets:
        data_args = dataset_arguments(dataset, output_dir, max_train_samples)
        for seed in seeds:
            run_dir = os.path.join(output_dir, dataset, f"seed{seed}")

            def training(name: str) -> FinetuneTrainingArguments:
                return FinetuneTrainingArguments(
                    output_dir=os.path.join(run_dir, name.replace(" ", "_").replace(",", "").replace("+", "and")),
                    num_train_epochs=epochs, per_device_train_batch_size=batch_size, seed=seed, save_strategy="no",
                )  # fmt: skip

            start = time.perf_counter()
            teacher = training(TEACHER)
            metrics = train_cnn(teacher.output_dir, data_args, teacher)
            accuracies.setdefault((dataset, TEACHER), []).append(metrics["eval_accuracy"])
            seconds.setdefault((dataset, TEACHER), []).append(time.perf_counter() - start)
            for name in runs:
                model_type, recipe, distilled = RUNS[name]
                model_args = ModelArguments(model_type=model_type, teacher_name_or_path=teacher.output_dir if distilled else None)
                start = time.perf_counter()
                metrics = finetune(model_args, data_args, training(name), RecipeArguments(recipe=recipe))
                accuracies.setdefault((dataset, name), []).append(metrics["eval_accuracy"])
                seconds.setdefault((dataset, name), []).append(time.perf_counter() - start)
    rows = [
        dict(dataset=dataset, run=name, mean_accuracy=statistics.mean(values), min_accuracy=min(values),
             max_accuracy=max(values), seeds=len(values), mean_seconds=round(statistics.mean(seconds[(dataset, name)]), 1))
        for (dataset, name), values in accuracies.items()
    ]  # fmt: skip
    title = f"final eval accuracy over seeds {list(seeds)}, {epochs:g} epochs, batch {batch_size}"
    save_results(rows, output_dir, title, accuracies={f"{d} | {n}": v for (d, n), v in accuracies.items()})
    plot_study(rows, os.path.join(output_dir, "recipe_study.png"), title)
    return rows


def plot_study(rows: list[dict], path: str, title: str) -> None:
    """One group of bars per dataset (mean accuracy), whiskers from the worst to the best seed."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    names = list(dict.fromkeys(row["run"] for row in rows))
    figure, axes = new_figure(figsize=(9, 4.5))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        found = [next((row for row in rows if row["dataset"] == d and row["run"] == name), None) for d in datasets]
        x = [i + index * width for i, row in enumerate(found) if row is not None]
        found = [row for row in found if row is not None]
        means = np.array([row["mean_accuracy"] for row in found])
        spread = [means - [row["min_accuracy"] for row in found], [row["max_accuracy"] for row in found] - means]
        axes.bar(x, means, width, yerr=spread, capsize=3, label=name)
    axes.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(datasets))], datasets)
    axes.set(ylabel="final eval accuracy", ylim=(0, 1), title=title)
    save_plot(figure, path, axes)

