"""Exercise 1 (the article's ViT against its CNN, with and without augmentation) and the data-efficiency
comparison (ViT, conv-stem ViT, hybrid and CNN on growing fractions of the training data).

    compare_vit_cnn(output_dir, ...)   -> the final table; curves.json, results.*, training_curves.png
    data_efficiency(output_dir, ...)   -> the table; results.*, data_efficiency.png
"""

import json
import os

import torch

from hf_vit.data import DataArguments
from hf_vit.figures import new_figure, save_plot
from hf_vit.registry import FAMILIES

from .loop import ConvNet, split_tensors, train_and_evaluate
from .report import save_results

# The models of the data-efficiency comparison: the article's 32 px ViT, the same with a convolutional stem, the
# same encoder on a small ResNet (64 tokens each), and exercise 1's CNN.
DATA_EFFICIENCY_MODELS = {
    "vit": lambda n: FAMILIES["hf_vit"].classifier_class(FAMILIES["hf_vit"].config(num_labels=n)),
    "vit conv-stem": lambda n: FAMILIES["hf_vit"].classifier_class(
        FAMILIES["hf_vit"].config(num_labels=n, patch_embedding_type="conv_stem")
    ),
    "hybrid resnet": lambda n: FAMILIES["hf_vit_hybrid"].classifier_class(
        FAMILIES["hf_vit_hybrid"].config(num_labels=n)
    ),
    "cnn": ConvNet,
}


def compare_vit_cnn(
    output_dir: str,
    data_args: DataArguments | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict]:
    """Exercise 1. Writes curves.json, results.csv/.json and training_curves.png; returns the final table."""
    labels, train, test = split_tensors(data_args or DataArguments(), seed)
    os.makedirs(output_dir, exist_ok=True)
    curves, rows = {}, []
    for augmented in (False, True):
        for model_name in ("vit", "cnn"):
            torch.manual_seed(seed)
            if model_name == "vit":
                model = DATA_EFFICIENCY_MODELS["vit"](len(labels))
            else:
                model = ConvNet(len(labels))
            name = f"{model_name}{' +aug' if augmented else ''}"
            curves[name] = train_and_evaluate(
                model, train, test, epochs, batch_size, learning_rate, augmented, device, seed, name
            )
            rows.append(
                dict(
                    model=name,
                    parameters=sum(p.numel() for p in model.parameters()),
                    final_train_loss=curves[name][-1]["train_loss"],
                    final_test_accuracy=curves[name][-1]["test_accuracy"],
                    best_test_accuracy=max(h["test_accuracy"] for h in curves[name]),
                )
            )
    with open(os.path.join(output_dir, "curves.json"), "w", encoding="utf-8") as f:
        json.dump(
            dict(train_samples=len(train[0]), test_samples=len(test[0]), epochs=epochs, curves=curves), f, indent=2
        )
    save_results(rows, output_dir, "ViT against CNN")
    figure, (loss_axes, accuracy_axes) = new_figure(1, 2, figsize=(11, 4))
    for name, history in curves.items():
        style = "--" if "aug" in name else "-"
        epochs_axis = [h["epoch"] for h in history]
        loss_axes.plot(epochs_axis, [h["train_loss"] for h in history], style, label=name)
        accuracy_axes.plot(epochs_axis, [h["test_accuracy"] for h in history], style, label=name)
    loss_axes.set(xlabel="epoch", ylabel="train loss", title="training loss")
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1))
    save_plot(figure, os.path.join(output_dir, "training_curves.png"), loss_axes, accuracy_axes)
    return rows


def data_efficiency(
    output_dir: str,
    data_args: DataArguments | None = None,
    fractions=(0.1, 0.3, 1.0),
    models=tuple(DATA_EFFICIENCY_MODELS),
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict]:
    """Every model on the first `fraction` of a fixed shuffle of the training split (same epochs, Adam, no
    augmentation), evaluated on the whole test split. Writes results.json/.md and data_efficiency.png."""
    labels, (train_x, train_y), test = split_tensors(data_args or DataArguments(), seed)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for fraction in fractions:
        subset = order[: max(1, round(fraction * len(order)))]
        for name in models:
            torch.manual_seed(seed)
            model = DATA_EFFICIENCY_MODELS[name](len(labels))
            run = f"{name} {fraction:.0%}"
            history = train_and_evaluate(
                model,
                (train_x[subset], train_y[subset]),
                test,
                epochs,
                batch_size,
                learning_rate,
                False,
                device,
                seed,
                run,
            )
            rows.append(
                dict(
                    model=name,
                    parameters=sum(p.numel() for p in model.parameters()),
                    train_fraction=fraction,
                    train_images=len(subset),
                    final_test_accuracy=history[-1]["test_accuracy"],
                    best_test_accuracy=max(h["test_accuracy"] for h in history),
                )
            )
    save_results(rows, output_dir, f"Data efficiency ({epochs} epochs)")
    figure, axes = new_figure(figsize=(6, 4))
    for name in models:
        points = [row for row in rows if row["model"] == name]
        axes.plot([r["train_images"] for r in points], [r["final_test_accuracy"] for r in points], "o-", label=name)
    axes.set(
        xscale="log",
        xlabel="training images",
        ylabel="test accuracy",
        ylim=(0, 1),
        title=f"accuracy against training-set size ({epochs} epochs)",
    )
    save_plot(figure, os.path.join(output_dir, "data_efficiency.png"), axes)
    return rows
