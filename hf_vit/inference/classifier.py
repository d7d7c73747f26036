"""A trained classifier and the pictures it is shown, as the inference jobs (evaluate, predict, demo) share them.

load_classifier(name_or_path) -> (model, image processor); a checkpoint without a trained head is refused
read_picture(path, channels) -> an RGB (or grayscale) PIL image, transparency flattened onto white
class_scores(model, logits) -> softmax probabilities, or independent sigmoid scores for multi-label models
"""

import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from ..models.configuration_utils import CheckpointMismatchError
from ..processors import checkpoint_image_processor
from ..training.data import open_image
from .attention import attention_heatmaps


def load_classifier(name_or_path: str, trust_remote_code: bool = False):
    """(model in eval mode, image processor) of an image-classification checkpoint. A checkpoint whose classifier
    head is missing (a base model, a pretraining checkpoint) is a `CheckpointMismatchError` naming the missing
    weights: its predictions would come from a head started at random."""
    model, info = AutoModelForImageClassification.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    missing = sorted(info["missing_keys"]) + sorted(f"{key} (misshapen)" for key, *_ in info["mismatched_keys"])
    if missing:
        raise CheckpointMismatchError(
            f"{name_or_path!r} has no trained classifier head: {', '.join(missing[:6])}"
            + (", ..." if len(missing) > 6 else "")
            + " would start at random; fine-tune it first (hf-vit finetune, or hf-vit probe --method linear)"
        )
    processor = checkpoint_image_processor(name_or_path, model.config, trust_remote_code)
    return model.eval(), processor


def is_multi_label(model) -> bool:
    return model.config.problem_type == "multi_label_classification"


def class_scores(model, logits: torch.Tensor) -> torch.Tensor:
    """(B, num_labels) scores: softmax probabilities, or a multi-label model's independent sigmoids (what
    `pipeline()` returns)."""
    logits = logits.float()
    return logits.sigmoid() if is_multi_label(model) else logits.softmax(-1)


def read_picture(path: str, num_channels: int = 3) -> Image.Image:
    """A picture file of any mode as the model's channels: RGBA / LA / palette transparency composited onto white,
    then RGB (or grayscale for one-channel models). A file that is not a picture is a ValueError naming it."""
    return as_model_mode(open_image({"path": path, "bytes": None}), num_channels)


def as_model_mode(image: Image.Image, num_channels: int = 3) -> Image.Image:
    """`image` in the model's mode: RGB (grayscale for one channel), transparency composited onto white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB" if num_channels == 3 else "L")


def classify(model, transform, pictures: list[Image.Image], attention: bool = False):
    """(scores (B, num_labels) as `class_scores`, heat maps (B, h, w) of where the model looks or None) of `pictures`
    prepared by `transform` (the evaluation transform)."""
    pixel_values = torch.stack([transform(picture) for picture in pictures])
    if attention:
        logits, heat = attention_heatmaps(model, pixel_values)
    else:
        with torch.inference_mode():
            logits, heat = model(pixel_values).logits, None
    return class_scores(model, logits), heat
