"""Multi-label data to try hf_vit on without a download: 2 x 2 grids of scikit-learn's handwritten digits, each
tagged with the digits it shows (one to four slots filled, repeats allowed), as imagefolders with a metadata.jsonl.

    python -m hf_vit_lessons.digit_grids --output_dir data/digit-grids
    hf-vit finetune --train_dir data/digit-grids/train --validation_dir data/digit-grids/validation \\
        --label_column_name labels --output_dir runs/digit-grids
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

from hf_vit.data import load_digits_splits

SLOT = 8  # the digits' side, in pixels


def make_split(digits, count: int, directory: str, rng: np.random.Generator, fill: float = 0.5) -> None:
    """`count` 16 x 16 grids of `digits` (a split of `load_digits_splits`) under `directory`, with metadata.jsonl:
    {"file_name", "labels": the sorted distinct digits shown}. Each slot shows a digit with chance `fill`; a grid
    shows at least one."""
    images, labels = [np.asarray(image) for image in digits["image"]], digits["label"]
    names = digits.features["label"].names
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metadata.jsonl"), "w", encoding="utf-8") as metadata:
        for index in range(count):
            filled = rng.random(4) < fill
            filled[rng.integers(4)] = True
            canvas, tags = np.zeros((2 * SLOT, 2 * SLOT), np.uint8), set()
            for slot in np.flatnonzero(filled):
                pick = int(rng.integers(len(images)))
                row, column = divmod(int(slot), 2)
                canvas[row * SLOT : (row + 1) * SLOT, column * SLOT : (column + 1) * SLOT] = images[pick]
                tags.add(names[labels[pick]])
            name = f"{index:05d}.png"
            Image.fromarray(canvas, mode="L").save(os.path.join(directory, name))
            metadata.write(json.dumps({"file_name": name, "labels": sorted(tags)}) + "\n")


def make_digit_grids(output_dir: str, train_images: int = 3000, validation_images: int = 600, seed: int = 0) -> dict:
    """`output_dir`/train and /validation: grids built from the digits' training and validation splits (no digit
    image in both). Returns the two directories."""
    splits, rng = load_digits_splits(seed), np.random.default_rng(seed)
    directories = {name: os.path.join(output_dir, name) for name in ("train", "validation")}
    make_split(splits["train"], train_images, directories["train"], rng)
    make_split(splits["validation"], validation_images, directories["validation"], rng)
    return directories


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_images", type=int, default=3000)
    parser.add_argument("--validation_images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_digit_grids(args.output_dir, args.train_images, args.validation_images, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
