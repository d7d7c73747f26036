"""Native aspect ratio (NaFlex): SigLIP 2's NaFlex tower converted from transformers, with parity on batches that mix
square, tall and wide pictures at two patch budgets, through the processor it carries."""

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, Siglip2Config, Siglip2Model, Siglip2VisionConfig, Siglip2VisionModel

from hf_vit.interop.convert import convert_checkpoint, from_transformers
from hf_vit.processors import naflex_image_processor

from conftest import random_pictures, randomize

VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, patch_size=8)


def pictures(seed: int = 0) -> list[Image.Image]:
    """A square, a tall (1:3) and a wide (3:1) picture."""
    return random_pictures(((60, 60), (90, 30), (30, 90)), seed)


def assert_same_outputs(ours, reference, inputs):
    """Every picture's own tokens and the pooled output agree within 1e-4 (padding tokens are nobody's)."""
    with torch.no_grad():
        expected, got = reference(**inputs), ours(**inputs)
    valid = inputs["pixel_attention_mask"].bool()
    assert expected.last_hidden_state.std() > 0.1
    torch.testing.assert_close(got.last_hidden_state[valid], expected.last_hidden_state[valid], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_siglip2_naflex_converts_with_parity_on_mixed_shapes_at_two_budgets(tmp_path, attn_implementation):
    torch.manual_seed(0)
    reference = randomize(Siglip2VisionModel(Siglip2VisionConfig(**VISION, num_patches=64)), std=0.05)
    reference.save_pretrained(tmp_path / "source")
    naflex_image_processor(8, 64).save_pretrained(tmp_path / "source")
    convert_checkpoint(str(tmp_path / "source"), str(tmp_path / "converted"))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "converted")
    ours = from_transformers(reference.config.to_dict(), reference.state_dict()).base_model
    assert ours.config.max_num_patches == 64 and ours.config.image_size == 64  # an 8x8 learned grid of 8 px patches
    reference.set_attn_implementation(attn_implementation)
    ours.set_attn_implementation(attn_implementation)
    for budget in (64, 144):
        inputs = processor(pictures(), max_num_patches=budget, return_tensors="pt")
        heights, widths = inputs["spatial_shapes"].T.tolist()
        assert heights[1] > widths[1] and heights[2] < widths[2]  # the tall one stays tall, the wide one wide
        assert_same_outputs(ours, reference, inputs)


def test_the_vision_tower_of_a_whole_siglip2_checkpoint_converts_and_keeps_the_budget(tmp_path):
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    whole = Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(VISION, num_patches=16)))
    randomize(whole, std=0.05)
    model = from_transformers(whole.config.to_dict(), whole.state_dict())
    inputs = naflex_image_processor(8, 36)(pictures(1), return_tensors="pt")
    assert_same_outputs(model.base_model, whole.vision_model, inputs)
