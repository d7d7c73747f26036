"""NaFlex inputs (`HfViTModel.forward`): pictures at their own aspect ratio as patches within a budget, the learned
positions resized to each picture's grid, padding that no valid token, pooling or loss ever sees."""

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vit
from hf_vit.models.configuration_vit import DINOV3, EVA02
from hf_vit.processors import naflex_image_processor

from conftest import TINY_VIT, randomize

POOLINGS = {
    "cls": {},
    "attention pooling, no class token": dict(class_token=False, pooling="map"),
    "mean, registers": dict(pooling="mean", num_register_tokens=2),
    "dinov3 rotary": {**DINOV3, "num_register_tokens": 2},
    "eva rotary": {**EVA02, "rope_reference_grid": [4, 4]},
}


def mixed_pictures() -> list[Image.Image]:
    """A square, a tall (1:3) and a wide (3:1) picture."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 40), (72, 24), (24, 72))]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("options", POOLINGS.values(), ids=POOLINGS.keys())
def test_each_picture_of_a_padded_batch_gets_what_it_gets_alone(options, attn_implementation):
    config = hf_vit.HfViTConfig(**TINY_VIT, **options, num_labels=3, max_num_patches=32)
    model = randomize(hf_vit.HfViTForImageClassification._from_config(config, attn_implementation=attn_implementation))
    processor = naflex_image_processor(8, 32)
    batch = processor(mixed_pictures(), return_tensors="pt")
    assert not batch["pixel_attention_mask"].all()  # some pictures are padded
    with torch.no_grad():
        together = model(**batch).logits
        for row, (height, width) in enumerate(batch["spatial_shapes"].tolist()):
            alone = {key: value[row : row + 1] for key, value in batch.items()}
            alone["pixel_values"] = alone["pixel_values"][:, : height * width]
            alone["pixel_attention_mask"] = alone["pixel_attention_mask"][:, : height * width]
            torch.testing.assert_close(model(**alone).logits[0], together[row], atol=1e-5, rtol=1e-5)


def test_patches_on_the_trained_grid_give_what_the_image_gives():
    """NaFlex patches of a picture cut at the trained grid are the image's patches: the same projection, the
    positions resized to the grid they came from (unchanged)."""
    model = randomize(hf_vit.HfViTForImageClassification(hf_vit.HfViTConfig(**TINY_VIT, num_labels=3)))
    image = torch.randn(1, 3, 32, 32)
    patches = image.reshape(1, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(1, 16, 8 * 8 * 3)  # (row, col, C)
    with torch.no_grad():
        expected = model(image).logits
        got = model(patches, spatial_shapes=torch.tensor([[4, 4]]), pixel_attention_mask=torch.ones(1, 16)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_loss_reads_no_padding_and_training_reaches_every_weight():
    config = hf_vit.HfViTConfig(**TINY_VIT, num_labels=3, class_token=False, pooling="map", max_num_patches=32)
    model = randomize(hf_vit.HfViTForImageClassification(config)).train()
    batch = naflex_image_processor(8, 32)(mixed_pictures(), return_tensors="pt")
    loss = model(**batch, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    poisoned = dict(
        batch, pixel_values=batch["pixel_values"].masked_fill(~batch["pixel_attention_mask"].bool()[..., None], 1e4)
    )
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(**poisoned).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_what_cannot_take_naflex_patches_is_named():
    patches, shapes = torch.randn(1, 16, 192), torch.tensor([[4, 4]])
    with pytest.raises(
        ValueError, match="NaFlex patches \\(batch, patches, p \\* p \\* channels\\) come with spatial_shapes"
    ):
        hf_vit.HfViTModel(hf_vit.HfViTConfig(**TINY_VIT))(patches)
    with pytest.raises(ValueError, match="max_num_patches \\(NaFlex\\) needs square 'patch' patches"):
        hf_vit.HfViTConfig(**TINY_VIT, patch_embedding_type="conv_stem", max_num_patches=16)
    swin = hf_vit.HfSwinForImageClassification(hf_vit.HfSwinConfig.from_preset("swin-cifar-patch2-window4-32"))
    with pytest.raises(ValueError, match="hf_swin takes \\(B, C, H, W\\) images of any size, not NaFlex patches"):
        swin(patches, spatial_shapes=shapes)


def test_a_naflex_training_step_compiles_in_one_graph_in_bf16_for_every_mix_of_shapes():
    """At one patch budget every batch has the same tensor shapes, whatever its pictures' shapes: the positions are
    resized by a matrix product of the shapes' values, so a new mix of shapes is not a new graph."""
    config = hf_vit.HfViTConfig(**TINY_VIT, num_labels=3, class_token=False, pooling="map", max_num_patches=32)
    model = randomize(hf_vit.HfViTForImageClassification(config)).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    processor, rng = naflex_image_processor(8, 32), np.random.default_rng(1)
    first = processor(mixed_pictures(), return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(**first, labels=torch.tensor([0, 1, 2])).loss
    assert loss.dtype == torch.float32
    loss.backward()
    others = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((16, 80), (50, 30), (8, 8))]
    second = processor(others, return_tensors="pt")
    assert not torch.equal(first["spatial_shapes"], second["spatial_shapes"])
    with torch._dynamo.config.patch(error_on_recompile=True), torch.autocast("cpu", dtype=torch.bfloat16):
        compiled(**second, labels=torch.tensor([2, 1, 0])).loss.backward()
    torch._dynamo.reset()  # what dynamo learnt of these shared layers must not shape the next test's graphs
