"""The recipe study: which recipe fits small data, measured over seeds on two datasets.

On the embedded digits (1,437 gray 8x8 digits) and the photo patches (`photo_patches`: 400 colour crops of real
photographs, 8 classes), for each seed: a small CNN (a transformers ResNet, 3 stages) trained first, then the
article's ViT with the plain and the DeiT recipe, and DeiT (distillation token) with the DeiT recipe and hard
distillation from that CNN (`ABLATIONS`: the same without parts of MAE's start, the sine-cosine positions or the
Xavier patch projection, or without RandAugment). From scratch the default `auto` recipe is the DeiT recipe scaled
to the run, so its rows are these. Every run has the same epochs and batch.

    study_recipes(output_dir, ...) -> rows (mean, min, max accuracy per dataset and run); results.* and a plot

From a checkpoint: the same ViT trained on the digits 0-4, then fine-tuned on a few labelled images of the digits
5-9 (a new label set) with several learning rates, with and without layer-wise learning-rate decay, against the
same ViT from scratch.

    study_fine_tuning(output_dir, ...) -> rows of the same form; results.* and a plot
"""

import os
import statistics
import time

import numpy as np
from datasets import ClassLabel
from transformers import ResNetConfig, ResNetForImageClassification

from hf_vit.data import DataArguments, collate, load_digits_splits, load_splits, set_transforms
from hf_vit.data.metrics import compute_metrics
from hf_vit.data.sources import DIGITS
from hf_vit.figures import new_figure, save_plot
from hf_vit.processors import make_image_processor
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.building import label_fields
from hf_vit.training.finetune import FinetuneModelArguments, finetune
from hf_vit.training.recipes import PLAIN, TRAINING_INGREDIENTS, RecipeArguments, flip_choice
from hf_vit.training.trainer import ImageClassificationTrainer

from .photo_patches import make_photo_patches
from .report import save_results

TEACHER = "CNN (ResNet, 3 stages)"
# run name: (model type, recipe and flags, distilled from the CNN)
RUNS = {
    "ViT, plain recipe": ("hf_vit", dict(recipe="plain"), False),
    "ViT, deit recipe": ("hf_vit", dict(recipe="deit"), False),
    "DeiT, deit recipe + CNN teacher": ("hf_deit", dict(recipe="deit"), True),
    # any student distills: the plain ViT (no distillation token) with the same teacher
    "ViT, deit recipe + CNN teacher": ("hf_vit", dict(recipe="deit"), True),
}
# What MAE's start (sine-cosine positions, Xavier patch projection) and RandAugment do (`--runs`; not by default).
ABLATIONS = {
    "DeiT, deit recipe + CNN teacher, truncated-normal start, no RandAugment": (
        "hf_deit",
        dict(recipe="deit", position_embedding_init="trunc_normal", rand_augment_magnitude=0),
        True,
    ),
    "DeiT, deit recipe + CNN teacher, no RandAugment": ("hf_deit", dict(recipe="deit", rand_augment_magnitude=0), True),
    "DeiT, deit recipe + CNN teacher, truncated-normal start": (
        "hf_deit",
        dict(recipe="deit", position_embedding_init="trunc_normal"),
        True,
    ),
    "DeiT, deit recipe + CNN teacher, truncated-normal patch projection": (
        "hf_deit",
        dict(recipe="deit", patch_embedding_init="trunc_normal"),
        True,
    ),
}


# run name: (from the checkpoint, learning rate, layer decay); every other ingredient is the auto recipe's
FINE_TUNING_RUNS = {
    "from scratch, auto recipe": (False, "auto", None, None),
    "checkpoint, lr 5e-4": (True, "auto", 5e-4, 1.0),
    "checkpoint, lr 5e-5": (True, "auto", 5e-5, 1.0),
    "checkpoint, lr 5e-4, layer decay 0.75": (True, "auto", 5e-4, 0.75),
    "checkpoint, lr 5e-4, layer decay 0.65": (True, "auto", 5e-4, 0.65),
    "checkpoint, lr 5e-5, layer decay 0.75": (True, "auto", 5e-5, 0.75),
    "checkpoint, finetune recipe": (True, "finetune", None, None),
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
        model=ResNetForImageClassification(config),
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=collate,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )
    trainer.train()
    trainer.save_model()
    return trainer.evaluate()


def dataset_arguments(name: str, output_dir: str, max_train_samples: int | None) -> DataArguments:
    """The embedded digits, or the photo patches written under `output_dir`; 32 px either way."""
    dataset_name = None if name == DIGITS else make_photo_patches(os.path.join(output_dir, "data", name))
    return DataArguments(dataset_name=dataset_name, max_train_samples=max_train_samples, image_size=32)


def study_recipes(
    output_dir: str,
    datasets=(DIGITS, "photo_patches"),
    runs=tuple(RUNS),
    seeds=(0, 1, 2),
    epochs: float = 15,
    batch_size: int = 16,
    max_train_samples: int | None = None,
) -> list[dict]:
    """Every run of `runs` (and the CNN) on every dataset and seed. Rows: dataset, run, mean / min / max final eval
    accuracy over the seeds, mean seconds. Writes results.json (with every run's accuracy), .md, .csv and
    recipe_study.png."""
    accuracies, seconds = {}, {}
    for dataset in datasets:
        data_args = dataset_arguments(dataset, output_dir, max_train_samples)
        for seed in seeds:
            run_dir = os.path.join(output_dir, dataset, f"seed{seed}")

            def training(name: str, run_dir=run_dir, seed=seed) -> FinetuneTrainingArguments:
                return FinetuneTrainingArguments(
                    output_dir=os.path.join(run_dir, name.replace(" ", "_").replace(",", "").replace("+", "and")),
                    num_train_epochs=epochs,
                    per_device_train_batch_size=batch_size,
                    seed=seed,
                    save_strategy="no",
                )

            start = time.perf_counter()
            teacher = training(TEACHER)
            metrics = train_cnn(teacher.output_dir, data_args, teacher)
            accuracies.setdefault((dataset, TEACHER), []).append(metrics["eval_accuracy"])
            seconds.setdefault((dataset, TEACHER), []).append(time.perf_counter() - start)
            for name in runs:
                model_type, recipe, distilled = (RUNS | ABLATIONS)[name]
                model_args = FinetuneModelArguments(
                    model_type=model_type, teacher_name_or_path=teacher.output_dir if distilled else None
                )
                start = time.perf_counter()
                metrics = finetune(model_args, data_args, training(name), RecipeArguments(**recipe))
                accuracies.setdefault((dataset, name), []).append(metrics["eval_accuracy"])
                seconds.setdefault((dataset, name), []).append(time.perf_counter() - start)
    title = f"final eval accuracy over seeds {list(seeds)}, {epochs:g} epochs, batch {batch_size}"
    return summarise(accuracies, seconds, output_dir, title, "recipe_study.png")


def summarise(accuracies: dict, seconds: dict, output_dir: str, title: str, picture: str) -> list[dict]:
    """Rows (dataset, run, mean / min / max accuracy over seeds, mean seconds) from {(dataset, run): [accuracy per
    seed]}; writes results.json (with every run's accuracy), .md, .csv and the bar plot `picture`."""
    rows = [
        dict(
            dataset=dataset,
            run=name,
            mean_accuracy=statistics.mean(values),
            min_accuracy=min(values),
            max_accuracy=max(values),
            seeds=len(values),
            mean_seconds=round(statistics.mean(seconds[(dataset, name)]), 1),
        )
        for (dataset, name), values in accuracies.items()
    ]
    save_results(rows, output_dir, title, accuracies={f"{d} | {n}": v for (d, n), v in accuracies.items()})
    plot_study(rows, os.path.join(output_dir, picture), title)
    return rows


def write_digit_subset(path: str, digits: list[int]) -> str:
    """The embedded digits of the classes `digits` (train and validation), relabelled 0..n-1 and named by their
    digit, as a local dataset directory for `--dataset_name`."""
    os.makedirs(path, exist_ok=True)
    for split_name, split in load_digits_splits().items():
        subset = split.filter(lambda row: row["label"] in digits)
        labels = [digits.index(label) for label in subset["label"]]
        subset = subset.remove_columns("label").add_column("label", labels)
        subset.cast_column("label", ClassLabel(names=[str(digit) for digit in digits])).to_parquet(
            os.path.join(path, f"{split_name}.parquet")
        )
    return path


def study_fine_tuning(
    output_dir: str,
    runs=tuple(FINE_TUNING_RUNS),
    seeds=(0, 1, 2),
    epochs: float = 20,
    batch_size: int = 16,
    max_train_samples: int = 150,
) -> list[dict]:
    """The article's ViT trained on the digits 0-4 (auto recipe, seed 0), then each run of `runs` on
    `max_train_samples` labelled images of the digits 5-9 for every seed. Rows and files as `study_recipes`."""
    source = write_digit_subset(os.path.join(output_dir, "data", "digits_0-4"), [0, 1, 2, 3, 4])
    target = write_digit_subset(os.path.join(output_dir, "data", "digits_5-9"), [5, 6, 7, 8, 9])
    checkpoint = os.path.join(output_dir, "checkpoint_digits_0-4")
    source_args = FinetuneTrainingArguments(
        output_dir=checkpoint,
        num_train_epochs=epochs,
        save_strategy="no",
        per_device_train_batch_size=batch_size,
        seed=0,
    )
    no_flips = dict(hflip_prob=0.0)  # a mirrored digit is another digit
    finetune(
        FinetuneModelArguments(),
        DataArguments(dataset_name=source, image_size=32),
        source_args,
        RecipeArguments(**no_flips),
    )
    data_args = DataArguments(dataset_name=target, image_size=32, max_train_samples=max_train_samples)
    accuracies, seconds = {}, {}
    for seed in seeds:
        for name in runs:
            from_checkpoint, recipe, learning_rate, layer_decay = FINE_TUNING_RUNS[name]
            run_dir = os.path.join(output_dir, f"seed{seed}", name.replace(" ", "_").replace(",", ""))
            training_args = FinetuneTrainingArguments(
                output_dir=run_dir,
                num_train_epochs=epochs,
                per_device_train_batch_size=batch_size,
                seed=seed,
                save_strategy="no",
                learning_rate=learning_rate,
            )
            model_args = FinetuneModelArguments(model_name_or_path=checkpoint if from_checkpoint else None)
            start = time.perf_counter()
            recipe_args = RecipeArguments(recipe=recipe, layer_decay=layer_decay, **no_flips)
            metrics = finetune(model_args, data_args, training_args, recipe_args)
            accuracies.setdefault(("digits 5-9", name), []).append(metrics["eval_accuracy"])
            seconds.setdefault(("digits 5-9", name), []).append(time.perf_counter() - start)
    return summarise(
        accuracies,
        seconds,
        output_dir,
        f"final eval accuracy on digits 5-9 ({max_train_samples} labelled "
        f"images), over seeds {list(seeds)}, {epochs:g} epochs, batch {batch_size}",
        "fine_tuning.png",
    )


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
