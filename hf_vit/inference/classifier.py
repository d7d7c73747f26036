"""A trained classifier and the pictures it is shown, as the inference jobs (evaluate, predict, demo) share them.

load_classifier(name_or_path) -> (model on the accelerator if there is one, image processor); a checkpoint without a
    trained head is refused
read_picture(path, channels) -> (C, H, W) pixels, read as every job reads them (`data.decode_image`)
attention_overlay(picture, heat, processor) -> where the model looks, over the region it saw
class_scores(model, logits) -> softmax probabilities, or independent sigmoid scores for multi-label models
"""

import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_pil_image
from transformers import AutoModelForImageClassification

from ..checkpoints import load_checkpoint, set_token_merging
from ..data import decode_image
from ..devices import batch_inputs, inference_device, inference_precision
from ..processors import checkpoint_image_processor, processor_size
from .attention import attention_heatmaps, overlay


def load_classifier(name_or_path: str, trust_remote_code: bool = False, token_merging: int = 0):
    """(model in eval mode, image processor) of an image-classification checkpoint, merging `token_merging` tokens
    per block (`set_token_merging`). A checkpoint whose classifier head is missing (a base model, a pretraining
    checkpoint) is a `CheckpointMismatchError` naming the missing weights: its predictions would come from a head
    started at random."""
    model = load_checkpoint(AutoModelForImageClassification, name_or_path, trust_remote_code=trust_remote_code)
    set_token_merging(model, token_merging)
    processor = checkpoint_image_processor(name_or_path, model.config, trust_remote_code)
    return model.to(inference_device()).eval(), processor


def is_multi_label(model) -> bool:
    return model.config.problem_type == "multi_label_classification"


def class_scores(model, logits: torch.Tensor) -> torch.Tensor:
    """(B, num_labels) scores: softmax probabilities, or a multi-label model's independent sigmoids (what
    `pipeline()` returns)."""
    logits = logits.float()
    return logits.sigmoid() if is_multi_label(model) else logits.softmax(-1)


def read_picture(path: str, num_channels: int = 3) -> torch.Tensor:
    """A picture file as every job reads it (`data.decode_image`, the reader of finetune, evaluate and probe):
    (C, H, W) uint8 (uint16 for a 16-bit PNG), RGB or grayscale, transparency dropped. A file that is not a picture
    is a ValueError naming it."""
    return decode_image({"path": path, "bytes": None}, num_channels)


def display_picture(picture: torch.Tensor) -> Image.Image:
    """(C, H, W) uint8 or uint16 pixels -> an 8-bit PIL image to draw on."""
    if picture.dtype != torch.uint8:
        picture = (picture.float() / torch.iinfo(picture.dtype).max * 255).round().to(torch.uint8)
    return to_pil_image(picture)


def seen_region(image_processor, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a height x width picture that the model sees through `image_processor`: the
    centre crop of a cropping processor (its short side resized, then cut), else the whole picture."""
    if not getattr(image_processor, "do_center_crop", False):
        return 0, 0, width, height
    crop_height, crop_width = processor_size(image_processor)
    size = image_processor.size
    scale = size["shortest_edge"] / min(height, width) if "shortest_edge" in size else None
    scale_y, scale_x = (scale, scale) if scale else (size["height"] / height, size["width"] / width)
    seen_h, seen_w = min(height, crop_height / scale_y), min(width, crop_width / scale_x)
    top, left = (height - seen_h) / 2, (width - seen_w) / 2
    return round(left), round(top), round(left + seen_w), round(top + seen_h)


def attention_overlay(picture: torch.Tensor, heat: torch.Tensor, image_processor) -> Image.Image:
    """The heat map (h, w) drawn over the region of `picture` (C, H, W) that the model saw (`seen_region`)."""
    image = display_picture(picture)
    return overlay(image.crop(seen_region(image_processor, image.height, image.width)), heat)


def classify(model, inputs, attention: bool = False):
    """(scores (B, num_labels) as `class_scores`, heat maps of where the model looks or None) of a batch prepared by
    the evaluation transform: (B, C, H, W) pixels, or NaFlex's dict of patches (`collate`'s), on the model's device
    (`devices`); the results on the CPU. Heat maps are (B, h, w), or for NaFlex one (h_i, w_i) map per picture."""
    inputs = batch_inputs(inputs if isinstance(inputs, dict) else {"pixel_values": inputs}, model.device)
    with inference_precision(model.device):
        if attention:
            logits, heat = attention_heatmaps(model, **inputs)
            heat = [map_.float().cpu() for map_ in heat] if isinstance(heat, list) else heat.float().cpu()
        else:
            with torch.inference_mode():
                logits, heat = model(**inputs).logits, None
    return class_scores(model, logits).cpu(), heat
