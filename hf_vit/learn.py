"""The article's exercises and pictures, as functions the learner scripts (and tests) call.

    compare_vit_cnn(...)        exercise 1: the article's ViT against a 3-layer ConvNet, with and without augmentation
    data_efficiency(...)        ViT, conv-stem ViT, hybrid and CNN trained on growing fractions of the data
    check_patches(...)          exercise 2: patches, their reconstruction, position-embedding similarity
    attention_cost(...)         exercise 3: full vs window attention, measured and theoretical
    attention_rollout(...)      where the CLS token looks, per layer and rolled out
"""

import json
import os
import time

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .configuration_hybrid import HfViTHybridConfig
from .configuration_vit import HfViTConfig
from .data import DataArguments, load_splits, open_image
from .experiments import markdown_table
from .modeling_hybrid import HfViTHybridForImageClassification
from .modeling_vit import HfViTForImageClassification

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MEAN, STD = 0.5, 0.5  # the article normalises every channel to [-1, 1]


def image_tensors(split, image_column="image", label_column="label", size=32):
    """A dataset split as (N, 3, size, size) normalised tensors and (N,) labels, decoded once."""
    images = [open_image(value).convert("RGB").resize((size, size)) for value in split[image_column]]
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255
    return (pixels - MEAN) / STD, torch.tensor(split[label_column])


def split_tensors(data_args: DataArguments, seed: int):
    """(label names, (train pixels, labels), (test pixels, labels)) of the dataset `data_args` names."""
    splits = load_splits(data_args, seed=seed)
    columns = (data_args.image_column_name, data_args.label_column_name)
    labels = splits["train"].features[data_args.label_column_name].names
    return labels, image_tensors(splits["train"], *columns), image_tensors(splits["validation"], *columns)


class ConvNet(nn.Module):
    """The article's CNN baseline: (Conv 3x3 -> ReLU -> MaxPool 2) x 3, then a linear head. (B, 3, 32, 32) -> logits."""

    def __init__(self, num_labels: int, channels=(32, 64, 128), image_size: int = 32):
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous * (image_size // 2 ** len(channels)) ** 2, num_labels)

    def forward(self, pixel_values):
        return self.head(self.features(pixel_values).flatten(1))


def augment(pixels: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The article's augmentation, per image: random horizontal flip, then a random crop of the zero-padded image."""
    batch, _, height, width = pixels.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    return torch.stack([padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets.tolist())])


def train_and_evaluate(model, train, test, epochs, batch_size, learning_rate, augmented, device, seed, name):
    """Adam, cross-entropy; returns per-epoch train loss and test accuracy and prints them as it goes."""
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    (train_x, train_y), (test_x, test_y) = train, test
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc=name, leave=False):
        model.train()
        order, losses = torch.randperm(len(train_x), generator=generator), []
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            pixels = augment(train_x[index], generator) if augmented else train_x[index]
            logits = logits_of(model(pixels.to(device)))
            loss = F.cross_entropy(logits, train_y[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            predictions = torch.cat([logits_of(model(test_x[i : i + 512].to(device))).argmax(-1).cpu() for i in range(0, len(test_x), 512)])
        history.append(dict(epoch=epoch, train_loss=float(np.mean(losses)), test_accuracy=(predictions == test_y).float().mean().item()))
        print(f"{name:>14} epoch {epoch:3d}: train loss {history[-1]['train_loss']:.4f}, test accuracy {history[-1]['test_accuracy']:.4f}")
    return history


def logits_of(output) -> torch.Tensor:
    """The logits of any classifier's output: a transformers output object, a tensor (timm, plain modules), or
    the (class head, distillation head) pair a distilled timm DeiT returns in training (averaged)."""
    if isinstance(output, tuple):
        return (output[0] + output[1]) / 2
    return output if isinstance(output, torch.Tensor) else output.logits


def compare_vit_cnn(output_dir: str, data_args: DataArguments | None = None, epochs: int = 20, batch_size: int = 128,
                    learning_rate: float = 1e-3, device: str = "cpu", seed: int = 0) -> list[dict]:  # fmt: skip
    """Exercise 1. Writes curves.json, results.csv/.json and training_curves.png; returns the final table."""
    labels, train, test = split_tensors(data_args or DataArguments(), seed)
    os.makedirs(output_dir, exist_ok=True)
    curves, rows = {}, []
    for augmented in (False, True):
        for model_name in ("vit", "cnn"):
            torch.manual_seed(seed)
            if model_name == "vit":
                model = HfViTForImageClassification(HfViTConfig.from_preset("vit-cifar-patch4-32", num_labels=len(labels)))
            else:
                model = ConvNet(len(labels))
            name = f"{model_name}{' +aug' if augmented else ''}"
            curves[name] = train_and_evaluate(model, train, test, epochs, batch_size, learning_rate, augmented, device, seed, name)
            rows.append(dict(model=name, parameters=sum(p.numel() for p in model.parameters()),
                             final_train_loss=curves[name][-1]["train_loss"], final_test_accuracy=curves[name][-1]["test_accuracy"],
                             best_test_accuracy=max(h["test_accuracy"] for h in curves[name])))  # fmt: skip
    with open(os.path.join(output_dir, "curves.json"), "w") as f:
        json.dump(dict(train_samples=len(train[0]), test_samples=len(test[0]), epochs=epochs, curves=curves), f, indent=2)
    save_results(rows, output_dir)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in curves.items():
        style = "--" if "aug" in name else "-"
        epochs_axis = [h["epoch"] for h in history]
        loss_axes.plot(epochs_axis, [h["train_loss"] for h in history], style, label=name)
        accuracy_axes.plot(epochs_axis, [h["test_accuracy"] for h in history], style, label=name)
    loss_axes.set(xlabel="epoch", ylabel="train loss", title="training loss")
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(0, 1))
    save_plot(figure, os.path.join(output_dir, "training_curves.png"), loss_axes, accuracy_axes)
    return rows


def save_plot(figure, path: str, *all_axes) -> None:
    """Grid and legend on each of `all_axes`, then save the figure to `path` and close it."""
    for axes in all_axes:
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_results(rows: list[dict], output_dir: str, columns=None) -> None:
    """Print the rows as a Markdown table and write results.json and results.md."""
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    table = markdown_table(rows, columns or list(rows[0]))
    print(table)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(table + "\n")


# The models of the data-efficiency comparison: the article's 32 px ViT, the same with a convolutional stem, the
# same encoder on a small ResNet (64 tokens each), and exercise 1's CNN.
DATA_EFFICIENCY_MODELS = {
    "vit": lambda n: HfViTForImageClassification(HfViTConfig.from_preset("vit-cifar-patch4-32", num_labels=n)),
    "vit conv-stem": lambda n: HfViTForImageClassification(
        HfViTConfig.from_preset("vit-cifar-patch4-32", num_labels=n, patch_embedding_type="conv_stem")
    ),
    "hybrid resnet": lambda n: HfViTHybridForImageClassification(
        HfViTHybridConfig.from_preset("vit-hybrid-resnet-tiny-32", num_labels=n)
    ),
    "cnn": ConvNet,
}


def data_efficiency(output_dir: str, data_args: DataArguments | None = None, fractions=(0.1, 0.3, 1.0),
                    models=tuple(DATA_EFFICIENCY_MODELS), epochs: int = 30, batch_size: int = 32,
                    learning_rate: float = 1e-3, device: str = "cpu", seed: int = 0) -> list[dict]:  # fmt: skip
    """Every model on the first `fraction` of a fixed shuffle of the training split (same epochs, Adam, no
    augmentation), evaluated on the whole test split. Writes results.json/.md and data_efficiency.png."""
    labels, (train_x, train_y), test = split_tensors(data_args or DataArguments(), seed)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for fraction in fractions:
        subset = order[: max(1, round(fraction * len(order)))]
        for name in models:
            torch.manual_seed(seed)
            model = DATA_EFFICIENCY_MODELS[name](len(labels))
            run = f"{name} {fraction:.0%}"
            history = train_and_evaluate(model, (train_x[subset], train_y[subset]), test, epochs, batch_size,
                                         learning_rate, False, device, seed, run)  # fmt: skip
            rows.append(dict(model=name, parameters=sum(p.numel() for p in model.parameters()), train_fraction=fraction,
                             train_images=len(subset), final_test_accuracy=history[-1]["test_accuracy"],
                             best_test_accuracy=max(h["test_accuracy"] for h in history)))  # fmt: skip
    save_results(rows, output_dir)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name in models:
        points = [row for row in rows if row["model"] == name]
        axes.plot([r["train_images"] for r in points], [r["final_test_accuracy"] for r in points], "o-", label=name)
    axes.set(xscale="log", xlabel="training images", ylabel="test accuracy", ylim=(0, 1),
             title=f"accuracy against training-set size ({epochs} epochs)")  # fmt: skip
    save_plot(figure, os.path.join(output_dir, "data_efficiency.png"), axes)
    return rows


def cosine_similarity_matrix(position_embeddings: torch.Tensor) -> np.ndarray:
    """(1, N, C) position embeddings -> (N, N) cosine similarities."""
    normed = F.normalize(position_embeddings[0].detach().float(), dim=-1)
    return (normed @ normed.T).numpy()


def most_similar_pairs(similarity: np.ndarray, top: int = 5) -> list[tuple[int, int, float]]:
    rows, cols = np.triu_indices(len(similarity), k=1)
    best = np.argsort(similarity[rows, cols])[::-1][:top]
    return [(int(rows[i]), int(cols[i]), float(similarity[rows[i], cols[i]])) for i in best]


def check_patches(pixel_values: torch.Tensor, model: HfViTForImageClassification, output_dir: str, tag: str = "random") -> dict:
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
    save_image_pair(pixel_values, reconstruction, os.path.join(output_dir, "patches_reconstruction.png"), grid_h, grid_w)
    save_similarity_figures(similarity, grid_h, grid_w, model.vit.num_prefix_tokens, output_dir, tag)
    return dict(
        image_shape=list(pixel_values.shape[1:]), num_patches=grid_h * grid_w, patch_shape=[channels, patch, patch],
        mismatched_patches=mismatches, reconstruction_exact=bool(torch.equal(reconstruction, pixel_values)),
        similarity_shape=list(similarity.shape), most_similar_pairs=most_similar_pairs(similarity),
    )  # fmt: skip


def to_display(pixel_values: torch.Tensor) -> np.ndarray:
    return (pixel_values[0].permute(1, 2, 0).detach().numpy() * STD + MEAN).clip(0, 1)


def save_image_pair(original, reconstruction, path, grid_h, grid_w) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, image, title in zip(axes, (original, reconstruction), ("original", f"from {grid_h * grid_w} patches")):
        ax.imshow(to_display(image))
        ax.set_title(title)
        ax.set_xticks(np.arange(-0.5, image.shape[-1], image.shape[-1] / grid_w), labels=[])
        ax.set_yticks(np.arange(-0.5, image.shape[-2], image.shape[-2] / grid_h), labels=[])
        ax.grid(color="red", linewidth=0.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_similarity_figures(similarity, grid_h, grid_w, num_prefix, output_dir, tag) -> None:
    """The full (N, N) heatmap, and each patch's similarity to every patch laid out on the grid (ViT paper fig. 7)."""
    figure, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(similarity, cmap="viridis", vmin=-1, vmax=1)
    ax.set(title=f"position embedding cosine similarity ({tag})", xlabel="position (0 = CLS)", ylabel="position")
    figure.colorbar(image)
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, f"position_similarity_{tag}.png"), dpi=110)
    plt.close(figure)
    patches = similarity[num_prefix:, num_prefix:]
    figure, axes = plt.subplots(grid_h, grid_w, figsize=(grid_w, grid_h))
    for index, ax in enumerate(np.atleast_1d(axes).flat):
        ax.imshow(patches[index].reshape(grid_h, grid_w), cmap="viridis", vmin=-1, vmax=1)
        ax.axis("off")
    figure.suptitle(f"similarity of each patch's position embedding to all others ({tag})")
    figure.savefig(os.path.join(output_dir, f"position_similarity_grid_{tag}.png"), dpi=110)
    plt.close(figure)


def attention_cost(height: int = 56, width: int = 56, dim: int = 96, window: int = 7, num_heads: int = 3, runs: int = 10) -> dict:
    """Exercise 3: time full self-attention over all H*W tokens against window attention (w x w windows) on a
    (1, H*W, dim) map; theoretical ratio of the N^2 * d terms: N^2 / (num_windows * w^4) = N / w^2."""
    from .modeling_swin import window_partition

    tokens = torch.randn(1, height * width, dim)
    head_dim = dim // num_heads

    def full():
        q = k = v = tokens.view(1, -1, num_heads, head_dim).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v)

    def windowed():
        windows = window_partition(tokens.view(1, height, width, dim), window)[0]  # (num_windows, w * w, dim)
        q = k = v = windows.view(len(windows), -1, num_heads, head_dim).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v)

    seconds = {}
    with torch.no_grad():
        for name, run in (("full", full), ("window", windowed)):
            run()  # warm-up
            start = time.perf_counter()
            for _ in range(runs):
                run()
            seconds[name] = (time.perf_counter() - start) / runs
    n, num_windows = height * width, (height // window) * (width // window)
    theoretical = (n * n * dim) / (num_windows * (window * window) ** 2 * dim)
    return dict(tokens=n, num_windows=num_windows, window_tokens=window * window, full_seconds=seconds["full"],
                window_seconds=seconds["window"], theoretical_speedup=theoretical,
                measured_speedup=seconds["full"] / seconds["window"])  # fmt: skip


def attention_rollout(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Abnar & Zuidema (2020): per-layer CLS attention (layers, gh, gw), head-averaged, and the rollout
    (the product over layers of 0.5 * A + 0.5 * I, rows renormalised), from CLS to every patch, (gh, gw)."""
    base = model.base_model
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions
    grid_h, grid_w = base.embeddings.grid_size
    prefix = base.num_prefix_tokens
    per_layer = torch.stack([a[0].mean(0)[0, prefix:] for a in attentions]).view(-1, grid_h, grid_w)
    rollout = torch.eye(attentions[0].shape[-1])
    for attention in attentions:
        mixed = 0.5 * attention[0].mean(0) + 0.5 * torch.eye(attention.shape[-1])
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    return per_layer, rollout[0, prefix:].view(grid_h, grid_w)


def save_attention_maps(pixel_values, per_layer, rollout, path: str) -> None:
    """The image with the CLS attention of each layer and the rollout overlaid."""
    maps = [*per_layer, rollout]
    titles = [f"layer {i + 1}" for i in range(len(per_layer))] + ["rollout"]
    figure, axes = plt.subplots(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.4))
    image = to_display(pixel_values)
    axes[0].imshow(image)
    axes[0].set_title("image")
    for ax, attention, title in zip(axes[1:], maps, titles):
        heat = F.interpolate(attention[None, None], size=image.shape[:2], mode="bilinear")[0, 0]
        ax.imshow(image)
        ax.imshow((heat / heat.max()).numpy(), cmap="inferno", alpha=0.6)
        ax.set_title(title)
    for ax in axes:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def attention_cost_sweep(sides=(14, 28, 42, 56, 70, 84), output_dir: str = ".", **kwargs) -> list[dict]:
    """`attention_cost` over square maps of each side; saves attention_cost.json and attention_cost.png."""
    rows = [attention_cost(side, side, **kwargs) for side in tqdm(sides, desc="resolutions")]
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "attention_cost.json"), "w") as f:
        json.dump(rows, f, indent=2)
    figure, ax = plt.subplots(figsize=(5.5, 4))
    tokens = [row["tokens"] for row in rows]
    ax.plot(tokens, [row["full_seconds"] * 1000 for row in rows], "o-", label="full self-attention (quadratic)")
    ax.plot(tokens, [row["window_seconds"] * 1000 for row in rows], "o-", label="7x7 window attention (linear)")
    ax.set(xlabel="tokens (H x W)", ylabel="milliseconds per call", title="attention cost against resolution")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, "attention_cost.png"), dpi=110)
    plt.close(figure)
    return rows
