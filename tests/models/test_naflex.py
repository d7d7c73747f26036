"""NaFlex inputs (`HfViTModel.forward`): pictures at their own aspect ratio as patches within a budget, the learned
positions resized to each picture's grid, padding that no valid token, pooling or loss ever sees."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_vit
from hf_vit.models.configuration_vit import DINOV3, EVA02
from hf_vit.models.layers import naflex_position_weights
from hf_vit.processors import naflex_image_processor

from conftest import TINY_VIT, random_pictures, randomize

POOLINGS = {
    "cls": {},
    "attention pooling, no class token": dict(class_token=False, pooling="map"),
    "mean, registers": dict(pooling="mean", num_register_tokens=2),
    "dinov3 rotary": {**DINOV3, "num_register_tokens": 2},
    "eva rotary": {**EVA02, "rope_reference_grid": [4, 4]},
    "map over the grid, factorized positions": dict(
        pooling="map",
        num_register_tokens=1,
        pooling_prefix_tokens=False,
        factorized_positions=True,
        prefix_position_embeddings=False,
        position_aspect_preserving=True,
    ),
}


def mixed_pictures() -> list[Image.Image]:
    """A square, a tall (1:3) and a wide (3:1) picture."""
    return random_pictures(((40, 40), (72, 24), (24, 72)))


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


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("grid", [(8, 8), (5, 7)])
def test_each_picture_gets_the_table_resized_as_f_interpolate_resizes_it(mode, antialias, grid):
    """The per-picture weights are F.interpolate's (align_corners=False) for up- and downsizing, and with
    aspect_preserving its resize to the longer side's square, cropped; padding tokens get nothing."""
    table = torch.randn(1, 4, *grid)
    shapes = torch.tensor([[3, 12], [12, 3], [8, 8], [16, 16], [1, 1], [5, 7], [20, 2]])
    for aspect_preserving in (False, True):
        rows, columns = naflex_position_weights(shapes, 300, grid, mode, antialias, aspect_preserving)
        resized = torch.einsum("bli,blj,cij->blc", rows, columns, table[0])
        for picture, (height, width) in enumerate(shapes.tolist()):
            size = (max(height, width),) * 2 if aspect_preserving and (height, width) != grid else (height, width)
            expected = F.interpolate(table, size=size, mode=mode, align_corners=False, antialias=antialias)
            expected = expected[0, :, :height, :width].flatten(1).T
            torch.testing.assert_close(resized[picture, : height * width], expected, atol=1e-5, rtol=0)
            assert not resized[picture, height * width :].any()


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


@pytest.mark.parametrize(
    "options",
    [dict(class_token=False, pooling="map"), {**DINOV3, "rope_shift": 0.1}],
    ids=["learned positions", "dinov3 rotary, augmented"],
)
def test_a_naflex_training_step_compiles_in_one_graph_in_bf16_for_every_mix_of_shapes(options):
    """At one patch budget every batch has the same tensor shapes, whatever its pictures' shapes: the positions are
    resized by a matrix product of the shapes' values (rotary ones computed from them), so a new mix of shapes is
    not a new graph."""
    config = hf_vit.HfViTConfig(**TINY_VIT, **options, num_labels=3, max_num_patches=32)
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
