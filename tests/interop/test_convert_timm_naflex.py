"""timm's NaFlexViT (naflexvit_*) converted, with parity against timm on random weights: NaFlex batches that mix
square, tall and wide pictures at two patch budgets, through the processor the conversion saves, and plain images
at a square and a non-square size; learned, aspect-preserving and factorized positions, average and MAP pooling."""

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_vit.interop.convert import convert_checkpoint

from conftest import random_pictures, save_timm

SQUARE_TALL_WIDE = ((60, 60), (90, 30), (30, 90))
TINY = dict(embed_dim=64, depth=2, num_heads=4, patch_size=8, pos_embed_grid_size=(8, 8))


def patch_coordinates(spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """timm's `patch_coord` (B, N, 2): each patch's (row, column) in its picture, row-major; zeros for padding."""
    coordinates = torch.zeros(len(spatial_shapes), length, 2, dtype=torch.long)
    for picture, (height, width) in enumerate(spatial_shapes.tolist()):
        rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coordinates[picture, : height * width] = torch.stack([rows.flatten(), columns.flatten()], -1)
    return coordinates


@pytest.mark.parametrize(
    "architecture",
    [
        "naflexvit_base_patch16_gap",
        "naflexvit_base_patch16_par_gap",
        "naflexvit_base_patch16_parfac_gap",
        "naflexvit_base_patch16_map",
        "naflexvit_base_patch16_siglip",
    ],
)
def test_timm_naflexvit_converts_with_parity_on_pictures_and_images(tmp_path, architecture):
    torch.manual_seed(0)
    reference, source = save_timm(tmp_path, "source", architecture, std=0.05, **TINY)
    reference.eval()
    convert_checkpoint(source, str(tmp_path / "converted"))
    ours = AutoModelForImageClassification.from_pretrained(tmp_path / "converted").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "converted")
    assert ours.config.max_num_patches == 64 and processor.max_num_patches == 64  # the 8x8 learned grid
    for budget in (64, 144):
        inputs = processor(random_pictures(SQUARE_TALL_WIDE), max_num_patches=budget, return_tensors="pt")
        heights, widths = inputs["spatial_shapes"].T.tolist()
        assert heights[1] > widths[1] and heights[2] < widths[2]  # the tall one stays tall, the wide one wide
        patches, valid = inputs["pixel_values"], inputs["pixel_attention_mask"].bool()
        with torch.no_grad():
            expected = reference(
                patches, patch_coord=patch_coordinates(inputs["spatial_shapes"], patches.shape[1]), patch_valid=valid
            )
            got = ours(**inputs).logits
        assert expected.std() > 0.1
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    for height, width in ((64, 64), (48, 48), (48, 96)):  # the table's grid, a smaller square, a 1:2 image
        images = torch.randn(2, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(
                ours(images, interpolate_pos_encoding=True).logits, reference(images), atol=1e-4, rtol=0
            )
