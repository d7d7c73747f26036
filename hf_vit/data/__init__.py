"""The data wing, shared by training and by using a trained model (as `timm.data` is by timm's train and inference
scripts): where pictures come from, how one is read, how it is transformed, how predictions are scored.

    sources      DataArguments, the digits, imagefolders, Hub and local datasets, their labels, checked (`load_splits`)
    folders      folders of pictures: the files imagefolder reads, class folders, folders streamed as walked
    decoding     the one way every job reads a picture (`decode_image`), and the unreadable ones found
    streaming    training data read as a stream, and any job's training data (`load_training_data`)
    transforms   the torchvision pipelines of training and evaluation, attached to the splits
    metrics      accuracy, top-5, multi-label mAP and F1, as the Trainer's `compute_metrics`
"""

from .decoding import collate, decode_image, open_image
from .folders import image_files, is_image_file
from .sources import (
    DataArguments,
    describe_dataset,
    is_multi_label,
    label_names,
    load_digits_splits,
    load_splits,
)
from .streaming import TrainingData, check_streaming, load_training_data
from .transforms import attach_transforms, build_transforms, evaluation_loader, model_inputs, set_transforms

__all__ = [
    "DataArguments",
    "TrainingData",
    "attach_transforms",
    "build_transforms",
    "check_streaming",
    "collate",
    "decode_image",
    "describe_dataset",
    "evaluation_loader",
    "image_files",
    "is_image_file",
    "is_multi_label",
    "label_names",
    "load_digits_splits",
    "load_splits",
    "load_training_data",
    "model_inputs",
    "open_image",
    "set_transforms",
]
