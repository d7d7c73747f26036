"""A plain PyTorch training loop on in-memory tensors, and the article's CNN: the lessons compare models on equal
terms with it (same data, optimiser and schedule), outside the Trainer.

    split_tensors(data_args, seed)       -> labels, (train pixels, labels), (test pixels, labels)
    train_and_evaluate(model, ...)       -> per-epoch train loss and test accuracy
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hf_vit.data import DataArguments, load_splits, open_image

MEAN, STD = 0.5, 0.5  # the article normalises every channel to [-1, 1]


def image_tensors(split, image_column="image", label_column="label", size=32):
    """A dataset split as (N, 3, size, size) normalised tensors and (N,) labels, decoded once."""
    images = [open_image(value).convert("RGB").resize((size, size)) for value in split[image_column]]
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255
    return (pixels - MEAN) / STD, torch.tensor(split[label_column])


def split_tensors(data_args: DataArguments, seed: int):
    """(label names, (train pixels, labels), (test pixels, labels)) of the dataset `data_args` names."""
    splits = load_splits(data_args, seed=seed)
    columns = (data_args.image_column_name, data_args.label_column_name)
    labels = splits["train"].features[data_args.label_column_name].names
    return labels, image_tensors(splits["train"], *columns), image_tensors(splits["validation"], *columns)


class ConvNet(nn.Module):
    """The article's CNN baseline: (Conv 3x3 -> ReLU -> MaxPool 2) x 3, then a linear head. (B, 3, 32, 32) -> logits."""

    def __init__(self, num_labels: int, channels=(32, 64, 128), image_size: int = 32):
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous * (image_size // 2 ** len(channels)) ** 2, num_labels)

    def forward(self, pixel_values):
        return self.head(self.features(pixel_values).flatten(1))


def augment(pixels: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The article's augmentation, per image: random horizontal flip, then a random crop of the zero-padded image."""
    batch, _, height, width = pixels.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets.tolist())])


def logits_of(output) -> torch.Tensor:
    """The logits of any classifier's output: a transformers output object, a tensor (timm, plain modules), or
    the (class head, distillation head) pair a distilled timm DeiT returns in training (averaged)."""
    if isinstance(output, tuple):
        return (output[0] + output[1]) / 2
    return output if isinstance(output, torch.Tensor) else output.logits


def train_and_evaluate(model, train, test, epochs, batch_size, learning_rate, augmented, device, seed, name):
    """Adam, cross-entropy; returns per-epoch train loss and test accuracy and prints them as it goes."""
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    (train_x, train_y), (test_x, test_y) = train, test
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc=name, leave=False):
        model.train()
        order, losses = torch.randperm(len(train_x), generator=generator), []
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            pixels = augment(train_x[index], generator) if augmented else train_x[index]
            logits = logits_of(model(pixels.to(device)))
            loss = F.cross_entropy(logits, train_y[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            predictions = torch.cat(
                [logits_of(model(test_x[i : i + 512].to(device))).argmax(-1).cpu() for i in range(0, len(test_x), 512)]
            )
        history.append(
            dict(
                epoch=epoch,
                train_loss=float(np.mean(losses)),
                test_accuracy=(predictions == test_y).float().mean().item(),
            )
        )
        print(
            f"{name:>14} epoch {epoch:3d}: train loss {history[-1]['train_loss']:.4f}, "
            f"test accuracy {history[-1]['test_accuracy']:.4f}"
        )
    return history
