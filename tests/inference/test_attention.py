"""Attention maps (`hf_vit.inference.attention`): from the SDPA forward, equal to eager rollout, drawn over the
region the model saw."""

import torch

from hf_vit import HfSwinConfig, HfSwinForImageClassification, HfViTConfig, HfViTForImageClassification
from hf_vit.inference.attention import attention_heatmaps
from hf_vit.inference.classifier import attention_overlay, seen_region
from hf_vit.processors import make_image_processor, timm_image_processor
from hf_vit_lessons.attention import attention_rollout

from conftest import TINY_VIT


def test_attention_is_drawn_over_the_centre_crop_the_model_saw():
    processor = timm_image_processor({"input_size": (3, 32, 32), "crop_pct": 1.0})  # short side 32, crop 32x32
    picture = torch.zeros(3, 32, 96, dtype=torch.uint8)  # 32 rows, 96 columns: the model saw the middle 32
    assert seen_region(processor, 32, 96) == (32, 0, 64, 32)
    drawn = attention_overlay(picture, torch.rand(4, 4), processor)
    assert drawn.width == drawn.height  # a square region, not the 1:3 picture with the map stretched over it
    assert seen_region(make_image_processor(32), 32, 96) == (0, 0, 96, 32)  # a plain resize sees all of it


def test_attention_maps_come_from_the_sdpa_forward_and_match_eager_rollout():
    torch.manual_seed(0)
    model = HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=3)).eval()
    model.set_attn_implementation("sdpa")
    pixels = torch.randn(2, 3, 32, 32)
    logits, heat = attention_heatmaps(model, pixels)
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(logits, model(pixels).logits)
    model.set_attn_implementation("eager")
    for index in range(2):
        expected = attention_rollout(model, pixels[index : index + 1])[1]
        torch.testing.assert_close(heat[index], expected, atol=1e-6, rtol=0)

    swin = HfSwinForImageClassification(HfSwinConfig.from_preset("swin-cifar-patch2-window4-32", num_labels=3)).eval()
    _, heat = attention_heatmaps(swin, torch.randn(2, 3, 32, 48))  # a 4 x 6 last stage: two windows of 4 x 4, padded
    assert heat.shape == (2, 4, 6) and torch.all(heat >= 0)


def test_a_naflex_pictures_map_is_its_own_grid_whatever_the_padding_beside_it():
    """Without a class token the map starts from the mean over the tokens: the picture's, never the padding's."""
    import numpy as np
    from PIL import Image

    from hf_vit.processors import naflex_image_processor

    config = HfViTConfig(**TINY_VIT, num_labels=3, class_token=False, pooling="map", max_num_patches=32)
    model = HfViTForImageClassification(config).eval()
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((72, 24), (40, 40))]
    batch = naflex_image_processor(8, 32)(pictures, return_tensors="pt")
    _, heat = attention_heatmaps(model, **batch)
    for row, (height, width) in enumerate(batch["spatial_shapes"].tolist()):
        alone = {key: value[row : row + 1] for key, value in batch.items()}
        for key in ("pixel_values", "pixel_attention_mask"):
            alone[key] = alone[key][:, : height * width]
        _, (expected,) = attention_heatmaps(model, **alone)
        assert heat[row].shape == (height, width)
        torch.testing.assert_close(heat[row], expected, atol=1e-5, rtol=1e-5)
