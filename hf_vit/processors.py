"""The image processors saved with every checkpoint: what `pipeline()` and the jobs' evaluation resize and normalise
to.

    make_image_processor(image_size, channels)        hf_vit's: resize, scale to [0, 1], mean and std 0.5
    naflex_image_processor(patch_size, max_num_patches)   SigLIP 2's: each picture at its own aspect ratio, as patches
    naflex_processor_for(config)                      that processor for a config's patch budget and patch side
    checkpoint_image_processor(name_or_path, config)  a checkpoint's own (hf_vit's for one saved without it)
    timm_image_processor(pretrained_cfg, config)      timm's evaluation transform (NaFlex's for NaFlexVit)
    set_processor_size / processor_size               a processor's output size
"""

from transformers import AutoImageProcessor, BitImageProcessor, Siglip2ImageProcessor, ViTImageProcessor
from transformers.utils import logging

from .models.configuration_utils import to_2tuple

logger = logging.get_logger(__name__)

TIMM_INTERPOLATION = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL resampling codes


def make_image_processor(
    image_size, num_channels: int = 3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
) -> ViTImageProcessor:
    """The processor saved with every checkpoint: resize to image_size (a side or (height, width)), scale to [0, 1],
    normalise `num_channels` channels (a one-channel model's processor normalises (H, W, 1) arrays; three values
    would not broadcast)."""
    height, width = to_2tuple(image_size)
    return ViTImageProcessor(
        size={"height": height, "width": width},
        image_mean=list(mean[:num_channels]),
        image_std=list(std[:num_channels]),
    )


def naflex_image_processor(patch_size: int, max_num_patches: int, mean=(0.5,) * 3, std=(0.5,) * 3):
    """transformers' `Siglip2ImageProcessor`: each picture resized, keeping its aspect ratio, to the largest grid of
    `patch_size` patches within `max_num_patches`, cut into patches (channels last) and padded to the budget; it
    returns `pixel_values` (B, max_num_patches, p * p * C), `pixel_attention_mask` and `spatial_shapes`. The budget
    may be given again at call time (`processor(images, max_num_patches=...)`)."""
    return Siglip2ImageProcessor(
        patch_size=patch_size, max_num_patches=max_num_patches, image_mean=list(mean), image_std=list(std)
    )


def naflex_processor_for(config, mean=None, std=None):
    """The NaFlex processor a config's patch budget (`max_num_patches`) and square patch side call for, normalising
    with `mean` and `std` (default 0.5 for each of its channels)."""
    neutral = (0.5,) * config.num_channels
    return naflex_image_processor(
        to_2tuple(config.patch_size)[0], config.max_num_patches, mean or neutral, std or neutral
    )


def is_naflex(image_processor) -> bool:
    """Whether the processor cuts pictures into NaFlex patches at their own aspect ratio."""
    return isinstance(image_processor, Siglip2ImageProcessor)


def checkpoint_image_processor(name_or_path: str, config, trust_remote_code: bool = False):
    """The checkpoint's own image processor; one saved without it (a user's `model.save_pretrained`) gets hf_vit's
    (`make_image_processor`: resize to the config's image size, mean and std 0.5), with a warning that says so."""
    try:
        return AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError:
        budget = getattr(config, "max_num_patches", None)
        logger.warning(
            "%s has no preprocessor_config.json: the image processor is built from config.json (%s, mean and std "
            "0.5); if the model was trained with other values, save its processor beside it",
            name_or_path,
            f"NaFlex within {budget} patches" if budget else f"resize to {config.image_size}",
        )
        if budget:
            return naflex_processor_for(config)
        return make_image_processor(config.image_size, config.num_channels)


def set_processor_size(image_processor, image_size) -> None:
    """Make `image_processor` produce inputs of `image_size` (a side, or (height, width) as timm-converted configs
    store it); a center-cropping processor keeps its crop fraction (it resizes the short side to the crop's short
    side / crop fraction first)."""
    height, width = to_2tuple(image_size)
    if getattr(image_processor, "do_center_crop", False):
        size = image_processor.size
        resized = size.get("shortest_edge") or size["height"]
        crop_fraction = image_processor.crop_size["height"] / resized
        image_processor.size = {"shortest_edge": int(min(height, width) / crop_fraction)}
        image_processor.crop_size = {"height": height, "width": width}
    else:
        image_processor.size = {"height": height, "width": width}


def processor_size(image_processor) -> tuple[int, int]:
    size = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", False) else None
    size = size or image_processor.size
    if "height" in size:
        return size["height"], size["width"]
    return size["shortest_edge"], size["shortest_edge"]


def timm_image_processor(pretrained_cfg: dict, config=None):
    """timm's evaluation transform as a transformers processor: resize the short side to size / crop_pct,
    center-crop, normalise with the source's mean and std; for a NaFlex model (`config.max_num_patches`, timm's
    NaFlexVit) each picture at its own aspect ratio within the budget, normalised the same way."""
    mean, std = pretrained_cfg.get("mean", (0.485, 0.456, 0.406)), pretrained_cfg.get("std", (0.229, 0.224, 0.225))
    if getattr(config, "max_num_patches", None):
        return naflex_processor_for(config, mean, std)
    size = pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    crop_pct = pretrained_cfg.get("crop_pct") or 0.875
    return BitImageProcessor(
        size={"shortest_edge": int(size / crop_pct)},
        resample=TIMM_INTERPOLATION.get(pretrained_cfg.get("interpolation", "bicubic"), 3),
        crop_size={"height": size, "width": size},
        image_mean=list(mean),
        image_std=list(std),
    )
