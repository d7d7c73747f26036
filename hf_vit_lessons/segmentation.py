"""The article's advice for dense prediction, tried: UperNet (transformers) on an hf_vit backbone (a plain ViT
with ViTDet's simple feature pyramid) and on an hf_swin backbone (its stages), trained with the Trainer on canvases
of embedded digits labelled per pixel (background 0, digit d as d + 1).

    digit_canvases(split, count, ...)        -> Dataset: pixel_values (3, S, S), labels (S, S)
    study_segmentation(output_dir, ...)      -> rows (backbone, mIoU, pixel accuracy, parameters, seconds);
                                                results.* and masks.png (canvas, truth, each backbone's prediction)
"""

import os
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, UperNetConfig, UperNetForSemanticSegmentation

from hf_vit.data import load_digits_splits
from hf_vit.figures import new_figure, save_figure
from hf_vit.models.configuration_swin import HfSwinConfig
from hf_vit.models.configuration_vit import HfViTConfig

from .report import save_results

NUM_LABELS = 11  # background and the ten digits
# Backbones of about the article's CIFAR size, for canvases of `size` px (a multiple of 16). The ViT's patches
# (size / 8 px) give one 8x8 map, which the simple feature pyramid turns into maps at 4, 2, 1 and 1/2 times its
# resolution; Swin's patches (size / 16 px) and stages give 16x16, 8x8 and 4x4 maps.
BACKBONES = {
    "hf_vit + simple feature pyramid": lambda size: HfViTConfig(
        image_size=size,
        patch_size=size // 8,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        feature_pyramid_channels=64,
    ),
    "hf_swin": lambda size: HfSwinConfig(
        image_size=size,
        patch_size=size // 16,
        window_size=4,
        embed_dim=32,
        depths=[2, 2, 2],
        num_heads=[2, 4, 8],
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3"],
    ),
}


def digit_canvases(split: str, count: int, size: int = 32, scale: int = 1, seed: int = 0) -> Dataset:
    """`count` canvases of `size` px, each holding two or three digits of the embedded `split` ("train" or
    "validation", so the validation canvases show unseen digits) enlarged `scale` times, in distinct cells of a
    grid; labels are d + 1 on the digit's ink (brighter than a quarter), 0 elsewhere."""
    digits = load_digits_splits()[split]
    images = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in digits["image"]])
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    labels = np.asarray(digits["label"])
    cell = images.shape[1]
    cells_per_side = size // cell
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        canvas = rng.normal(0.0, 0.05, (size, size)).astype(np.float32)
        mask = np.zeros((size, size), dtype=np.int64)
        for place in rng.choice(cells_per_side**2, size=rng.integers(2, 4), replace=False):
            index = rng.integers(len(images))
            top, left = (place // cells_per_side) * cell, (place % cells_per_side) * cell
            canvas[top : top + cell, left : left + cell] += images[index]
            mask[top : top + cell, left : left + cell][images[index] > 0.25] = labels[index] + 1
        pixels = np.repeat(((canvas.clip(0, 1) - 0.5) / 0.5)[None], 3, axis=0)
        rows.append({"pixel_values": pixels, "labels": mask})
    return Dataset.from_list(rows).with_format("torch")


def segmentation_model(backbone: str, size: int) -> UperNetForSemanticSegmentation:
    """UperNet (without its auxiliary head) on one of `BACKBONES`."""
    config = UperNetConfig(
        backbone_config=BACKBONES[backbone](size), hidden_size=64, num_labels=NUM_LABELS, use_auxiliary_head=False
    )
    return UperNetForSemanticSegmentation(config)


def predict(model, dataset: Dataset, batch_size: int = 64) -> np.ndarray:
    """(N, S, S) predicted labels."""
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            pixels = dataset[start : start + batch_size]["pixel_values"]
            predictions.append(model(pixels).logits.argmax(dim=1).numpy())
    return np.concatenate(predictions)


def segmentation_scores(predictions: np.ndarray, labels: np.ndarray, num_labels: int = NUM_LABELS) -> dict:
    """Mean intersection over union over the classes present in the labels or predictions, and pixel accuracy."""
    confusion = np.bincount(labels.ravel() * num_labels + predictions.ravel(), minlength=num_labels**2).reshape(
        num_labels, num_labels
    )
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return dict(
        mean_iou=float((intersection[present] / union[present]).mean()),
        pixel_accuracy=float(intersection.sum() / confusion.sum()),
        digit_iou=float((intersection[1:][present[1:]] / union[1:][present[1:]]).mean()),
    )


def study_segmentation(
    output_dir: str,
    backbones=tuple(BACKBONES),
    train_canvases: int = 1000,
    eval_canvases: int = 200,
    epochs: float = 10,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    size: int = 32,
    seed: int = 0,
) -> list[dict]:
    """Train UperNet on each backbone; rows of mIoU, digit mIoU, pixel accuracy; writes results.* and masks.png."""
    train, validation = (
        digit_canvases("train", train_canvases, size, seed=seed),
        digit_canvases("validation", eval_canvases, size, seed=seed + 1),
    )
    labels = validation[:]["labels"].numpy()
    rows, predictions = [], {}
    for name in backbones:
        torch.manual_seed(seed)
        model = segmentation_model(name, size)
        args = TrainingArguments(
            output_dir=os.path.join(output_dir, name.split()[0]),
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=0.05,
            warmup_steps=0.05,
            lr_scheduler_type="cosine",
            save_strategy="no",
            logging_strategy="epoch",
            report_to="none",
            seed=seed,
        )
        start = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=train).train()
        predictions[name] = predict(model, validation)
        rows.append(
            dict(
                backbone=name,
                **segmentation_scores(predictions[name], labels),
                parameters=sum(p.numel() for p in model.parameters()),
                seconds=time.perf_counter() - start,
            )
        )
    save_results(
        rows,
        output_dir,
        f"UperNet on digit canvases ({train_canvases} for training, {eval_canvases} to evaluate, {epochs:g} epochs)",
    )
    draw_masks(
        validation[:6]["pixel_values"].numpy(),
        labels[:6],
        {name: p[:6] for name, p in predictions.items()},
        os.path.join(output_dir, "masks.png"),
    )
    return rows


def draw_masks(pixels: np.ndarray, labels: np.ndarray, predictions: dict, path: str) -> None:
    """One column per canvas: the canvas, the true labels, each backbone's prediction (one colour per class)."""
    names = ["canvas", "truth", *predictions]
    figure, axes = new_figure(len(names), len(pixels), figsize=(1.9 * len(pixels), 2.0 * len(names)))
    for column in range(len(pixels)):
        panels = [pixels[column, 0] * 0.5 + 0.5, labels[column], *(p[column] for p in predictions.values())]
        for row, (name, panel) in enumerate(zip(names, panels)):
            style = (
                dict(cmap="gray", vmin=0, vmax=1)
                if row == 0
                else dict(cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
            )
            axes[row, column].imshow(panel, **style)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if column == 0:
                axes[row, 0].set_ylabel(name.replace(" + ", "\n+ "), fontsize=8)
    save_figure(figure, path)
