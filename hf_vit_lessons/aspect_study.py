"""Native aspect ratio (NaFlex) against squashing to a square at the same patch budget, on pictures whose shape
matters: strips of three of scikit-learn's handwritten digits, side by side (wide, 1:3) or stacked (tall, 3:1),
labelled by the middle digit. Squashed to a square, a wide strip's digits are squeezed three times across and a
tall strip's three times down, so the model must learn each digit twice, distorted; NaFlex cuts each strip at its
own shape, every digit square. Nothing is downloaded; both runs get the same recipe (without Mixup and CutMix,
which NaFlex turns off, and without flips, which make other digits).

    python scripts/aspect_study.py --output_dir docs/learn/aspect_ratio          # seeds 0-2
"""

import math
import os
import time

import numpy as np
from PIL import Image

from hf_vit.data import DataArguments, load_digits_splits
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.finetune import FinetuneModelArguments, finetune
from hf_vit.training.recipes import RecipeArguments

from .recipe_study import summarise

DIGIT = 8  # the digits' side, in pixels
STRIPS = "digit strips (1:3 and 3:1)"


def make_strips(digits, count: int, directory: str, rng: np.random.Generator) -> None:
    """`count` strips of three `digits` (a split of `load_digits_splits`), each wide or tall at random, as class
    folders named by the middle digit."""
    images, labels = [np.asarray(image) for image in digits["image"]], digits["label"]
    names = digits.features["label"].names
    for index in range(count):
        picks = rng.integers(len(images), size=3)
        strip = np.concatenate([images[pick] for pick in picks], axis=1 if rng.random() < 0.5 else 0)
        folder = os.path.join(directory, names[labels[picks[1]]])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(strip, mode="L").save(os.path.join(folder, f"{index:05d}.png"))


def make_digit_strips(output_dir: str, train_images: int = 3000, validation_images: int = 600, seed: int = 0) -> dict:
    """`output_dir`/train and /validation: strips of the digits' training and validation splits (no digit image in
    both). Returns the two directories."""
    splits, rng = load_digits_splits(seed), np.random.default_rng(seed)
    directories = {name: os.path.join(output_dir, name) for name in ("train", "validation")}
    make_strips(splits["train"], train_images, directories["train"], rng)
    make_strips(splits["validation"], validation_images, directories["validation"], rng)
    return directories


def study_aspect(
    output_dir: str,
    seeds=(0, 1, 2),
    epochs: float = 10,
    batch_size: int = 32,
    budget: int = 49,
    train_images: int = 3000,
    validation_images: int = 600,
) -> list[dict]:
    """The article's ViT (4 px patches) trained from scratch on the digit strips twice per seed: squashed to the
    square of `budget` patches (49: 28 px), and NaFlex within `budget` patches. Rows: run, mean / min / max final
    eval accuracy over the seeds, mean seconds; writes results.json / .md / .csv and aspect_study.png."""
    directories = make_digit_strips(os.path.join(output_dir, "data"), train_images, validation_images)
    side = math.isqrt(budget) * 4  # the model's patches are 4 px
    runs = {
        f"squashed to {side} px ({math.isqrt(budget) ** 2} patches)": dict(image_size=side),
        f"NaFlex (<= {budget} patches)": dict(max_num_patches=budget),
    }
    recipe = RecipeArguments(mixup_alpha=0.0, cutmix_alpha=0.0, hflip_prob=0.0)
    accuracies, seconds = {}, {}
    for seed in seeds:
        for name, size in runs.items():
            data_args = DataArguments(train_dir=directories["train"], validation_dir=directories["validation"], **size)
            training_args = FinetuneTrainingArguments(
                output_dir=os.path.join(output_dir, f"seed{seed}", "naflex" if "NaFlex" in name else "squashed"),
                num_train_epochs=epochs,
                per_device_train_batch_size=batch_size,
                seed=seed,
                save_strategy="no",
            )
            start = time.perf_counter()
            metrics = finetune(FinetuneModelArguments(model_type="hf_vit"), data_args, training_args, recipe)
            accuracies.setdefault((STRIPS, name), []).append(metrics["eval_accuracy"])
            seconds.setdefault((STRIPS, name), []).append(time.perf_counter() - start)
    title = f"final eval accuracy over seeds {list(seeds)}, {epochs:g} epochs, batch {batch_size}, {budget} patches"
    return summarise(accuracies, seconds, output_dir, title, "aspect_study.png")
