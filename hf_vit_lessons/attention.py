"""Exercise 3 (the cost of full against window self-attention, measured and in theory) and attention rollout
(where the CLS token looks).

    attention_cost(...) / attention_cost_sweep(...)   -> timings; attention_cost.json and .png for the sweep
    attention_rollout(model, pixel_values)            -> per-layer CLS attention and the rollout, on the grid
"""

import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_vit.figures import new_figure, save_figure, save_plot
from hf_vit.inference.attention import maps_from_sdpa, rollout
from hf_vit.models.modeling_swin import window_partition

from .patches import to_display


def attention_cost(
    height: int = 56, width: int = 56, dim: int = 96, window: int = 7, num_heads: int = 3, runs: int = 10
) -> dict:
    """Exercise 3: time full self-attention over all H*W tokens against window attention (w x w windows) on a
    (1, H*W, dim) map; theoretical ratio of the N^2 * d terms: N^2 / (num_windows * w^4) = N / w^2."""
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
    return dict(
        tokens=n,
        num_windows=num_windows,
        window_tokens=window * window,
        full_seconds=seconds["full"],
        window_seconds=seconds["window"],
        theoretical_speedup=theoretical,
        measured_speedup=seconds["full"] / seconds["window"],
    )


def attention_cost_sweep(sides=(14, 28, 42, 56, 70, 84), output_dir: str = ".", **kwargs) -> list[dict]:
    """`attention_cost` over square maps of each side; saves attention_cost.json and attention_cost.png."""
    rows = [attention_cost(side, side, **kwargs) for side in tqdm(sides, desc="resolutions")]
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "attention_cost.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    figure, ax = new_figure(figsize=(5.5, 4))
    tokens = [row["tokens"] for row in rows]
    ax.plot(tokens, [row["full_seconds"] * 1000 for row in rows], "o-", label="full self-attention (quadratic)")
    ax.plot(tokens, [row["window_seconds"] * 1000 for row in rows], "o-", label="7x7 window attention (linear)")
    ax.set(xlabel="tokens (H x W)", ylabel="milliseconds per call", title="attention cost against resolution")
    save_plot(figure, os.path.join(output_dir, "attention_cost.png"), ax)
    return rows


def attention_rollout(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Abnar & Zuidema (2020): per-layer CLS attention (layers, gh, gw), head-averaged, and the rollout
    (the product over layers of 0.5 * A + 0.5 * I, rows renormalised), from CLS to every patch, (gh, gw), of the
    first image of the batch."""
    base = model.base_model
    with maps_from_sdpa(model), torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions
    grid_h, grid_w = base.embeddings.grid_size
    prefix = base.num_prefix_tokens
    per_layer = torch.stack([a[0].mean(0)[0, prefix:] for a in attentions]).view(-1, grid_h, grid_w)
    return per_layer, rollout(attentions, prefix, class_token=True)[0].view(grid_h, grid_w)


def save_attention_maps(pixel_values, per_layer, rollout, path: str) -> None:
    """The image with the CLS attention of each layer and the rollout overlaid."""
    maps = [*per_layer, rollout]
    titles = [f"layer {i + 1}" for i in range(len(per_layer))] + ["rollout"]
    figure, axes = new_figure(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.4))
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
    save_figure(figure, path)
