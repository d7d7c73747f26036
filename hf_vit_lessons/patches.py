"""Exercise 2: an image cut into patches, a check that the patch embedding consumes exactly each pixel block,
the image rebuilt from its patches, and the cosine similarity of the learned position embeddings.

    check_patches(pixel_values, model, output_dir, tag) -> the figures, printed by scripts/visualize_patches.py
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

from hf_vit.figures import new_figure, save_figure
from hf_vit.models.modeling_vit import HfViTForImageClassification

from .loop import MEAN, STD


def cosine_similarity_matrix(position_embeddings: torch.Tensor) -> np.ndarray:
    """(1, N, C) position embeddings -> (N, N) cosine similarities."""
    normed = F.normalize(position_embeddings[0].detach().float(), dim=-1)
    return (normed @ normed.T).numpy()


def most_similar_pairs(similarity: np.ndarray, top: int = 5) -> list[tuple[int, int, float]]:
    rows, cols = np.triu_indices(len(similarity), k=1)
    best = np.argsort(similarity[rows, cols])[::-1][:top]
    return [(int(rows[i]), int(cols[i]), float(similarity[rows[i], cols[i]])) for i in best]


def check_patches(
    pixel_values: torch.Tensor, model: HfViTForImageClassification, output_dir: str, tag: str = "random"
) -> dict:
    """Exercise 2 on one (1, 3, H, W) image: patch counts, a patch-by-patch check that the patch embedding consumes
    exactly each pixel block, reconstruction from patches, and the position-embedding similarity (saved)."""
    os.makedirs(output_dir, exist_ok=True)
    config = model.config
    patch = config.patch_size
    _, channels, height, width = pixel_values.shape
    grid_h, grid_w = height // patch, width // patch
    # Unfold reads the blocks exactly as the stride-p convolution does.
    blocks = F.unfold(pixel_values, kernel_size=patch, stride=patch).transpose(1, 2)[0]  # (N, C * p * p)
    projection = model.vit.patch_embeddings.projection
    embedded = projection(pixel_values).flatten(2).transpose(1, 2)[0].detach()
    mismatches = []
    for index in range(grid_h * grid_w):
        row, col = divmod(index, grid_w)
        block = pixel_values[0, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
        by_hand = projection.weight.flatten(1) @ block.flatten() + projection.bias
        if not (torch.equal(block.flatten(), blocks[index]) and torch.allclose(by_hand, embedded[index], atol=1e-4)):
            mismatches.append(index)
    reconstruction = F.fold(blocks.T[None], (height, width), kernel_size=patch, stride=patch)
    similarity = cosine_similarity_matrix(model.vit.embeddings.position_embeddings)
    np.save(os.path.join(output_dir, f"position_similarity_{tag}.npy"), similarity)
    save_image_pair(
        pixel_values, reconstruction, os.path.join(output_dir, "patches_reconstruction.png"), grid_h, grid_w
    )
    save_similarity_figures(similarity, grid_h, grid_w, model.vit.num_prefix_tokens, output_dir, tag)
    return dict(
        image_shape=list(pixel_values.shape[1:]),
        num_patches=grid_h * grid_w,
        patch_shape=[channels, patch, patch],
        mismatched_patches=mismatches,
        reconstruction_exact=bool(torch.equal(reconstruction, pixel_values)),
        similarity_shape=list(similarity.shape),
        most_similar_pairs=most_similar_pairs(similarity),
    )


def to_display(pixel_values: torch.Tensor) -> np.ndarray:
    return (pixel_values[0].permute(1, 2, 0).detach().numpy() * STD + MEAN).clip(0, 1)


def save_image_pair(original, reconstruction, path, grid_h, grid_w) -> None:
    figure, axes = new_figure(1, 2, figsize=(6, 3))
    for ax, image, title in zip(axes, (original, reconstruction), ("original", f"from {grid_h * grid_w} patches")):
        ax.imshow(to_display(image))
        ax.set_title(title)
        ax.set_xticks(np.arange(-0.5, image.shape[-1], image.shape[-1] / grid_w), labels=[])
        ax.set_yticks(np.arange(-0.5, image.shape[-2], image.shape[-2] / grid_h), labels=[])
        ax.grid(color="red", linewidth=0.5)
    save_figure(figure, path)


def save_similarity_figures(similarity, grid_h, grid_w, num_prefix, output_dir, tag) -> None:
    """The full (N, N) heatmap, and each patch's similarity to every patch laid out on the grid (ViT paper fig. 7)."""
    figure, ax = new_figure(figsize=(5, 4.5))
    image = ax.imshow(similarity, cmap="viridis", vmin=-1, vmax=1)
    ax.set(title=f"position embedding cosine similarity ({tag})", xlabel="position (0 = CLS)", ylabel="position")
    figure.colorbar(image)
    save_figure(figure, os.path.join(output_dir, f"position_similarity_{tag}.png"))
    patches = similarity[num_prefix:, num_prefix:]
    figure, axes = new_figure(grid_h, grid_w, figsize=(grid_w, grid_h))
    for index, ax in enumerate(np.atleast_1d(axes).flat):
        ax.imshow(patches[index].reshape(grid_h, grid_w), cmap="viridis", vmin=-1, vmax=1)
        ax.axis("off")
    figure.suptitle(f"similarity of each patch's position embedding to all others ({tag})")
    save_figure(figure, os.path.join(output_dir, f"position_similarity_grid_{tag}.png"), tight_layout=False)
