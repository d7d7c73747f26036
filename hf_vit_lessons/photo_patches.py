"""A second small dataset for checking recipes on data other than the digits: colour crops of real photographs.

scikit-learn ships two photographs (a pagoda, a flower; 427 x 640). Each is cut into a 2 x 2 grid; a class is one
quadrant (8 classes), an example a random square crop of 48 to 96 px inside it, resized to 32 px. Mirrored crops
keep their class. Train and validation crops are drawn from disjoint halves of each quadrant (left / right), so
the validation images are unseen parts of the scene.

    make_photo_patches(output_dir) -> output_dir, a local dataset (train / validation parquet) for --dataset_name
"""

import os

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_sample_images

PHOTOS = ("pagoda", "flower")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


def crops(photo: np.ndarray, quadrant: int, half: int, count: int, size: int, rng) -> list:
    """`count` random square crops (48 to 96 px) from one half (0 left, 1 right) of one quadrant, as size px."""
    height, width = photo.shape[0] // 2, photo.shape[1] // 2
    top, left = (quadrant // 2) * height, (quadrant % 2) * width + half * width // 2
    images = []
    for _ in range(count):
        side = int(rng.integers(48, 97))
        y = top + int(rng.integers(0, height - side + 1))
        x = left + int(rng.integers(0, width // 2 - side + 1))
        images.append(PILImage.fromarray(photo[y : y + side, x : x + side]).resize((size, size), PILImage.BICUBIC))
    return images


def make_photo_patches(
    output_dir: str, train_per_class: int = 50, validation_per_class: int = 20, size: int = 32, seed: int = 0
) -> str:
    """Write the dataset (8 classes: 400 training and 160 validation images by default) and return its directory."""
    rng = np.random.default_rng(seed)
    names = [f"{photo} {quadrant}" for photo in PHOTOS for quadrant in QUADRANTS]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    os.makedirs(output_dir, exist_ok=True)
    for split, half, count in (("train", 0, train_per_class), ("validation", 1, validation_per_class)):
        images, labels = [], []
        for photo_index, photo in enumerate(load_sample_images().images):
            for quadrant in range(len(QUADRANTS)):
                images += crops(photo, quadrant, half, count, size, rng)
                labels += [photo_index * len(QUADRANTS) + quadrant] * count
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            os.path.join(output_dir, f"{split}.parquet")
        )
    return output_dir
