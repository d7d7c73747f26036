"""Reading one picture, the one way every job reads it (training, evaluation, probes, prediction, the demo).

decode_image(value, channels)   an undecoded `datasets.Image` value -> a (C, H, W) uint8 (uint16) tensor
open_image(value)               -> a PIL image, naming the file when it cannot be read
unreadable_in(split, ...)       every image of a split that cannot be read, found before training
collate(examples)               examples -> a batch
"""

import io
import os

import torch
import torchvision
from datasets import Dataset
from PIL import Image as PILImage
from torchvision.io import ImageReadMode
from torchvision.transforms.v2.functional import pil_to_tensor

PARALLEL_CHECK_FROM = 5_000  # images in a split from which opening them all is worth a pool of processes


def collate(examples) -> dict:
    """Examples -> {"pixel_values": (B, C, H, W), "labels": (B,) ids or (B, num_labels) multi-hot targets} (no
    labels for unlabelled examples); NaFlex examples also stack their `pixel_attention_mask` and `spatial_shapes`
    (their `pixel_values` are (N, p * p * C) patches, all padded to one budget)."""
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0] if key != "labels"}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch


def open_image(value) -> PILImage.Image:
    """Decode one undecoded `datasets.Image` value ({"bytes", "path"}), naming the file if it can't be read."""
    name = value.get("path") or "<in-memory image>"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        image = PILImage.open(source)
        image.load()
        return image
    except Exception as error:
        raise ValueError(f"Cannot read image {name}: {error}") from error


def decode_image(value, num_channels: int) -> torch.Tensor:
    """One undecoded `datasets.Image` value -> a (C, H, W) uint8 tensor with `num_channels` (3: RGB, 1: gray),
    decoded once, straight into the tensor the transforms work on (torchvision's decoders: JPEG, PNG, WebP, GIF);
    other formats go through PIL. A file that cannot be read is a ValueError naming it."""
    try:
        if value.get("bytes") is not None:
            data = value["bytes"]
        else:
            with open(value["path"], "rb") as file:
                data = file.read()
        return torchvision.io.decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB if num_channels == 3 else ImageReadMode.GRAY,
        )
    except (RuntimeError, OSError):  # not a format torchvision decodes, or not an image at all: PIL says which
        return pil_to_tensor(open_image(value).convert("RGB" if num_channels == 3 else "L"))


def unreadable_images(batch: dict, column: str) -> dict:
    """`datasets.map` function: the error of each image that cannot be opened ("" for the readable ones)."""
    errors = []
    for value in batch[column]:
        try:
            open_image(value)
            errors.append("")
        except ValueError as error:
            errors.append(str(error))
    return {"error": errors}


def unreadable_in(split: Dataset, column: str, split_name: str, num_proc: int | None = None) -> list[tuple[int, str]]:
    """(index, error) of every image of `split` that cannot be opened: each is opened once before training starts,
    in `num_proc` processes (default: the cores for splits of more than `PARALLEL_CHECK_FROM` images), so bad files
    are found at once and nothing is half-written."""
    if num_proc is None:
        num_proc = (os.cpu_count() or 1) if len(split) > PARALLEL_CHECK_FROM else None
    checked = split.select_columns([column]).map(
        unreadable_images,
        fn_kwargs={"column": column},
        batched=True,
        batch_size=256,
        num_proc=num_proc,
        remove_columns=[column],
        desc=f"Checking {split_name} images",
    )
    return [(index, error) for index, error in enumerate(checked["error"]) if error]
