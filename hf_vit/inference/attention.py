"""Where a classifier looks, with the forward pass at SDPA's speed: an attention function that runs
`scaled_dot_product_attention` for the tokens and computes the softmax maps beside it, so that nothing falls back
to eager attention.

    attention_heatmaps(model, pixel_values) -> (logits (B, num_labels), heat maps (B, h, w))
        ViT, DeiT, hybrid: attention rollout (Abnar & Zuidema 2020) from the class token (no class token: from every
        token); Swin: the attention each token of the last stage receives, its windows put back in place
    overlay(image, heat) -> the picture with the heat map blended over it (PIL)
"""

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..models.layers import grid_mean, patches_present
from ..models.modeling_swin import window_and_shift, window_reverse

ATTENTION_WITH_MAPS = "hf_vit_sdpa_with_maps"
DISPLAY_SIDE = 224  # the shorter side, in pixels, of a small picture's overlay


def sdpa_with_maps(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """SDPA's output and, beside it, the (B, heads, Nq, N) softmax weights it applied."""
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    return output, scores.softmax(dim=-1, dtype=torch.float32)


AttentionInterface.register(ATTENTION_WITH_MAPS, sdpa_with_maps)


@contextmanager
def maps_from_sdpa(model):
    """Within the block, `model`'s attention is `sdpa_with_maps`."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = ATTENTION_WITH_MAPS
    try:
        yield model
    finally:
        model.config._attn_implementation = previous


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, columns) of `tokens` grid tokens of a height x width picture."""
    columns = round(math.sqrt(tokens * width / height))
    if tokens % columns:
        raise ValueError(f"{tokens} tokens do not form a grid of a {height}x{width} picture")
    return tokens // columns, columns


def rollout(attentions, prefix: int, class_token: bool, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Attention rollout over (B, heads, N, N) maps, heads averaged, half identity for the residual: from the class
    token (else the mean over the tokens, the `valid` (B, N) ones only: a NaFlex batch's padding is nobody's) to each
    grid token, (B, N - prefix)."""
    identity = torch.eye(attentions[0].shape[-1], device=attentions[0].device)
    flow = identity.expand(attentions[0].shape[0], -1, -1)
    for attention in attentions:
        mixed = 0.5 * attention.float().mean(1) + 0.5 * identity
        flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
    source = flow[:, 0] if class_token else grid_mean(flow, valid)
    return source[:, prefix:]


def last_stage_attention(config, attentions, batch: int, height: int, width: int) -> torch.Tensor:
    """Swin: the attention each token of the last stage's first (unshifted) block receives, averaged over heads and
    queries, its windows put back in place: (B, h, w) for a height x width picture."""
    height, width = -(-height // config.patch_size), -(-width // config.patch_size)
    for _ in config.depths[1:]:  # each patch merging halves the map, padding odd sides
        height, width = -(-height // 2), -(-width // 2)
    window, _ = window_and_shift(height, width, config.window_size, 0)
    weights = attentions[-config.depths[-1]]  # (B * windows, heads, N, N)
    received = weights.float().mean(1).mean(1).view(batch, -1, window * window, 1)
    return window_reverse(received, height, width, window)[..., 0]


@torch.inference_mode()
def attention_heatmaps(model, pixel_values: torch.Tensor, **naflex) -> tuple[torch.Tensor, torch.Tensor | list]:
    """(logits (B, num_labels), heat maps (B, h, w)) of an hf_vit classifier, in one forward pass; for NaFlex
    patches (`naflex`: their `spatial_shapes` and `pixel_attention_mask`), one (h_i, w_i) map per picture."""
    if getattr(model.config, "token_merging", 0):
        raise ValueError("attention maps need every patch's own token: they are not drawn with token merging")
    with maps_from_sdpa(model):
        output = model(pixel_values, output_attentions=True, return_dict=True, **naflex)
    if hasattr(model.config, "window_size"):  # Swin
        return output.logits, last_stage_attention(
            model.config, output.attentions, len(pixel_values), *pixel_values.shape[-2:]
        )
    base, valid = model.base_model, None
    if naflex.get("spatial_shapes") is not None:  # NaFlex: each picture's own grid, its padding dropped
        spatial_shapes = naflex["spatial_shapes"]
        grid_valid = patches_present(spatial_shapes, pixel_values.shape[1])
        valid = torch.cat([grid_valid.new_ones(len(grid_valid), base.num_prefix_tokens), grid_valid], 1)
    heat = rollout(output.attentions, base.num_prefix_tokens, model.config.class_token, valid)
    if valid is not None:
        return output.logits, [row[: h * w].view(h, w) for row, (h, w) in zip(heat, spatial_shapes.tolist())]
    return output.logits, heat.view(-1, *token_grid(heat.shape[1], *pixel_values.shape[-2:]))


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """`image` (enlarged by a whole factor to at least `DISPLAY_SIDE` a side, pixels kept sharp) with `heat` (h, w),
    scaled to [0, 1] and coloured by matplotlib's inferno, blended over it."""
    from matplotlib import colormaps

    scale = max(1, math.ceil(DISPLAY_SIDE / min(image.size)))
    image = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    heat = F.interpolate(heat[None, None].float(), size=(image.height, image.width), mode="bilinear")[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    colours = (colormaps["inferno"](heat.numpy())[..., :3] * 255).astype("uint8")
    return Image.blend(image, Image.fromarray(colours), alpha)
