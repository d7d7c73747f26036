"""Data hunger answered in the package: masked-image-modeling pretraining (SimMIM, MAE) on the training images
without their labels, then fine-tuning on a fraction of the labels, against the same ViT trained from scratch with
the same fine-tuning budget (epochs, batch, the labelled images).

    study_pretraining(output_dir, ...) -> rows (run, labelled fraction, mean / min / max accuracy over seeds, mean
        seconds); results.*, pretraining.png (accuracy against the labelled fraction), and each pretraining's
        checkpoint with its reconstructions.png under output_dir/<method>
"""

import os
import statistics
import textwrap
import time

from hf_vit.data import DataArguments
from hf_vit.figures import new_figure, save_plot
from hf_vit.training.arguments import FinetuneTrainingArguments, ModelArguments, PretrainTrainingArguments
from hf_vit.training.finetune import FinetuneModelArguments, finetune
from hf_vit.training.pretrain import PretrainArguments, pretrain
from hf_vit.training.recipes import RecipeArguments

from .report import save_results

# Each method's pretraining of the article's small ViT (`pretrain` config overrides; every other setting is the
# method's default in `scripts/pretrain.py`). MAE: a one-block decoder as wide as the encoder (MAE's own is 512
# wide and 8 deep, made for ViT-B and up).
PRETRAINING = {
    "simmim": None,
    "mae": "decoder_hidden_size=128,decoder_num_hidden_layers=1,decoder_num_attention_heads=4,"
    "decoder_intermediate_size=512",
}
# How each run fine-tunes: (pretraining method or None, config overrides, learning rate). From scratch: the auto
# recipe, as a user gets it. From a pretrained encoder: the practice of MAE's and SimMIM's fine-tuning, the average
# of the patch tokens as the head's input (neither trains the CLS token to summarise the image), at twice the
# auto recipe's rate (the encoder starts trained).
RUNS = {
    "ViT from scratch": (None, None, None),
    "ViT, SimMIM-pretrained": ("simmim", "pooling='mean'", 1e-3),
    "ViT, MAE-pretrained": ("mae", "pooling='mean'", 1e-3),
}


def study_pretraining(
    output_dir: str,
    fractions=(0.1, 0.3, 1.0),
    seeds=(0, 1, 2),
    pretrain_epochs: float = 50,
    finetune_epochs: float = 20,
    batch_size: int = 16,
    runs=tuple(RUNS),
) -> list[dict]:
    """Pretrain each method the runs need once on the embedded digits' training images (no labels), then fine-tune
    every run of `runs` on each labelled fraction with each seed; the validation split scores every run."""
    for method in dict.fromkeys(RUNS[name][0] for name in runs if RUNS[name][0]):
        pretrain(
            ModelArguments(config_overrides=PRETRAINING[method]),
            PretrainArguments(method=method),
            DataArguments(),
            PretrainTrainingArguments(
                output_dir=os.path.join(output_dir, method),
                num_train_epochs=pretrain_epochs,
                save_strategy="no",
                per_device_train_batch_size=batch_size,
            ),
        )
    num_train_images = 1437  # the embedded digits' training split
    accuracies, seconds = {}, {}
    for fraction in fractions:
        for seed in seeds:
            for name in runs:
                method, config_overrides, learning_rate = RUNS[name]
                training_args = FinetuneTrainingArguments(
                    output_dir=os.path.join(output_dir, "fine-tuned", f"{method or 'scratch'}_{fraction:g}_seed{seed}"),
                    num_train_epochs=finetune_epochs,
                    per_device_train_batch_size=batch_size,
                    seed=seed,
                    save_strategy="no",
                    learning_rate=learning_rate,
                )
                model_args = FinetuneModelArguments(
                    model_name_or_path=method and os.path.join(output_dir, method), config_overrides=config_overrides
                )
                start = time.perf_counter()
                metrics = finetune(
                    model_args,
                    DataArguments(max_train_samples=round(fraction * num_train_images)),
                    training_args,
                    RecipeArguments(),
                )
                accuracies.setdefault((name, fraction), []).append(metrics["eval_accuracy"])
                seconds.setdefault((name, fraction), []).append(time.perf_counter() - start)
    rows = [
        dict(
            run=name,
            labelled_fraction=fraction,
            labelled_images=round(fraction * num_train_images),
            mean_accuracy=statistics.mean(values),
            min_accuracy=min(values),
            max_accuracy=max(values),
            seconds=statistics.mean(seconds[(name, fraction)]),
        )
        for (name, fraction), values in accuracies.items()
    ]
    title = (
        f"final eval accuracy over seeds {list(seeds)}: pretrained {pretrain_epochs:g} epochs on the unlabelled "
        f"images, every run fine-tuned {finetune_epochs:g} epochs at batch {batch_size}"
    )
    save_results(
        rows,
        output_dir,
        title,
        accuracies={f"{name} @ {fraction:g}": values for (name, fraction), values in accuracies.items()},
    )
    plot_accuracy_by_fraction(rows, os.path.join(output_dir, "pretraining.png"), title)
    return rows


def plot_accuracy_by_fraction(rows: list[dict], path: str, title: str) -> None:
    """Mean accuracy against the labelled fraction, one line per run, bars from the minimum to the maximum seed."""
    figure, axes = new_figure(figsize=(7, 4.5))
    for name in dict.fromkeys(row["run"] for row in rows):
        points = sorted((row for row in rows if row["run"] == name), key=lambda row: row["labelled_fraction"])
        means = [row["mean_accuracy"] for row in points]
        errors = [
            [m - row["min_accuracy"] for m, row in zip(means, points)],
            [row["max_accuracy"] - m for m, row in zip(means, points)],
        ]
        axes.errorbar(
            [100 * row["labelled_fraction"] for row in points], means, yerr=errors, marker="o", capsize=4, label=name
        )
    axes.set(
        xlabel="labelled training images (%)",
        ylabel="eval accuracy",
        title=textwrap.fill(title, 70),
        ylim=(0, 1),
        xscale="log",
    )
    axes.title.set_fontsize(9)
    save_plot(figure, path, axes)
