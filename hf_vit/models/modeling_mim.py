"""Masked image modeling, the pretraining that answers the ViT's data hunger with unlabelled images: what the
families' pretraining heads share.

- MAE (He et al. 2022): drop most grid tokens before the encoder (`random_masking`), a light transformer decoder
  (`MaskedAutoencoderDecoder`) predicts the pixels of the dropped patches, MSE on those (`mae_loss`).
- SimMIM (Xie et al. 2022): replace masked patches by a learned mask token, a 1x1 convolution and a pixel shuffle
  (`simmim_decoder`) predict every pixel, L1 on the masked ones (`simmim_loss`); masks come in blocks
  (`random_block_mask`).

Checkpoints carry this file beside their modeling file (``trust_remote_code``), so it imports only torch,
transformers and the other carried files.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput, logging

from .configuration_utils import to_2tuple
from .layers import PreNormBlock, resample_position_embeddings, vit_block_parts, vit_norm

logger = logging.get_logger(__name__)


@dataclass
class MaskedAutoencoderOutput(ModelOutput):
    """MAE's outputs: `loss` (masked patches' MSE), `logits` (B, N, p * p * C) predicted patches (in the normalised
    space of each patch with `norm_pix_loss`), `mask` (B, N) 1 for dropped patches, `ids_restore` (B, N) the
    permutation that puts the shuffled tokens back, and the encoder's hidden states and attentions (visible tokens
    only)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SimMIMOutput(ModelOutput):
    """SimMIM's outputs: `loss` (L1 over masked pixels), `reconstruction` (B, C, H, W), `mask` (B, N) the masked
    patches (True: masked), and the encoder's hidden states and attentions."""

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def sincos_position_embeddings(grid_size, dim: int) -> torch.Tensor:
    """MAE's fixed 2D sine-cosine position embeddings, (gh * gw, dim): per token [sin(x w), cos(x w), sin(y w),
    cos(y w)] with x its column, y its row and w = 1 / 10000**(k / (dim / 4)), k < dim / 4 (MAE's released layout)."""
    grid_h, grid_w = grid_size
    if dim % 4:
        raise ValueError(f"2D sine-cosine position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, columns = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    angles = [coordinate.flatten()[:, None] * omega for coordinate in (columns, rows)]
    return torch.cat([part for angle in angles for part in (angle.sin(), angle.cos())], dim=1).float()


def sincos_position_table(grid_size, dim: int, num_prefix: int) -> torch.Tensor:
    """(1, num_prefix + gh * gw, dim): zeros for the prefix tokens, then `sincos_position_embeddings` for the grid."""
    table = sincos_position_embeddings(grid_size, dim)
    return torch.cat([torch.zeros(num_prefix, dim), table])[None]


def random_masking(batch_size: int, num_tokens: int, mask_ratio: float, noise=None, device=None):
    """MAE's per-sample random masking, as transformers' ViTMAE draws it: the tokens with the smallest `noise` (B, N)
    are kept. Returns (ids_keep (B, K), mask (B, N) with 1 for dropped tokens, ids_restore (B, N)), K = int(N * (1 -
    mask_ratio))."""
    num_kept = int(num_tokens * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch_size, num_tokens, device=device)
    elif tuple(noise.shape) != (batch_size, num_tokens):
        raise ValueError(
            f"noise must have shape (batch, tokens) = ({batch_size}, {num_tokens}), got {tuple(noise.shape)}"
        )
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_tokens, device=noise.device)
    mask[:, :num_kept] = 0
    return ids_shuffle[:, :num_kept], torch.gather(mask, 1, ids_restore), ids_restore


def random_block_mask(batch_size: int, grid_size, block: int, mask_ratio: float, device=None) -> torch.Tensor:
    """SimMIM's masks: (B, gh * gw) booleans, True for masked tokens, masking ceil(ratio * blocks) random blocks of
    `block` x `block` tokens per image (blocks overhanging the grid are cut)."""
    grid_h, grid_w = grid_size
    blocks_h, blocks_w = -(-grid_h // block), -(-grid_w // block)
    num_masked = int(torch.tensor(blocks_h * blocks_w * mask_ratio).ceil())
    order = torch.rand(batch_size, blocks_h * blocks_w, device=device).argsort(dim=1)
    masked = torch.zeros(batch_size, blocks_h * blocks_w, dtype=torch.bool, device=device)
    masked.scatter_(1, order[:, :num_masked], True)
    masked = masked.view(batch_size, blocks_h, blocks_w).repeat_interleave(block, 1).repeat_interleave(block, 2)
    return masked[:, :grid_h, :grid_w].flatten(1)


def patchify(pixel_values: torch.Tensor, patch_size) -> torch.Tensor:
    """(B, C, H, W) -> (B, H / p * W / p, p * p * C), each patch row-major, channels last (MAE's order)."""
    batch_size, channels, height, width = pixel_values.shape
    patch_h, patch_w = to_2tuple(patch_size)
    patches = pixel_values.reshape(batch_size, channels, height // patch_h, patch_h, width // patch_w, patch_w)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch_size, -1, patch_h * patch_w * channels)


def unpatchify(patches: torch.Tensor, grid_size, patch_size, num_channels: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, gh * gw, p * p * C) -> (B, C, gh * p, gw * p)."""
    (grid_h, grid_w), (patch_h, patch_w) = grid_size, to_2tuple(patch_size)
    images = patches.reshape(patches.shape[0], grid_h, grid_w, patch_h, patch_w, num_channels)
    return images.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], num_channels, grid_h * patch_h, grid_w * patch_w)


def normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """Each patch to zero mean and unit variance (MAE's `norm_pix_loss` target)."""
    return (patches - patches.mean(dim=-1, keepdim=True)) / (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5


def mae_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool) -> torch.Tensor:
    """Mean squared error per patch, averaged over the dropped patches only; the target patches (B, N, p * p * C)
    normalised each on its own with `norm_pix_loss`."""
    if norm_pix_loss:
        target = normalise_patches(target)
    per_patch = ((logits.float() - target.float()) ** 2).mean(dim=-1)  # in fp32 under autocast too
    return (per_patch * mask).sum() / mask.sum()


def mae_reconstruction(pixel_values, logits, mask, patch_size, norm_pix_loss: bool) -> torch.Tensor:
    """(B, C, H, W): the input's patches where `mask` kept them, MAE's predictions where it dropped them; with
    `norm_pix_loss` each prediction gets its input patch's mean and variance back (as MAE's demo shows them)."""
    target = patchify(pixel_values, patch_size)
    if norm_pix_loss:
        logits = logits * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    patches = torch.where(mask[..., None].bool(), logits.to(target.dtype), target)
    (patch_h, patch_w), (height, width) = to_2tuple(patch_size), pixel_values.shape[-2:]
    return unpatchify(patches, (height // patch_h, width // patch_w), (patch_h, patch_w), pixel_values.shape[1])


def pixel_mask(mask: torch.Tensor, patch_size, image_size) -> torch.Tensor:
    """A (B, gh * gw) patch mask as a (B, 1, H, W) pixel mask, gh = ceil(H / p) (cut to the image where patches
    overhang it)."""
    (patch_h, patch_w), (height, width) = to_2tuple(patch_size), image_size
    grid_h, grid_w = -(-height // patch_h), -(-width // patch_w)
    pixels = mask.reshape(-1, grid_h, grid_w).repeat_interleave(patch_h, 1).repeat_interleave(patch_w, 2)
    return pixels[:, None, :height, :width]


def simmim_reconstruction(pixel_values, reconstruction, mask, patch_size) -> torch.Tensor:
    """(B, C, H, W): the input where `mask` (B, N) left patches visible, SimMIM's reconstruction where it masked
    them."""
    masked = pixel_mask(mask.bool(), patch_size, pixel_values.shape[-2:])
    return torch.where(masked, reconstruction[..., : pixel_values.shape[-2], : pixel_values.shape[-1]], pixel_values)


def simmim_loss(
    pixel_values: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch_size
) -> torch.Tensor:
    """SimMIM's loss: L1 between image and reconstruction (cut to the image) over the masked pixels, per channel (as
    transformers' ViT / Swin ForMaskedImageModeling)."""
    height, width = pixel_values.shape[-2:]
    masked = pixel_mask(mask, patch_size, (height, width)).to(pixel_values.dtype)
    per_pixel = F.l1_loss(pixel_values.float(), reconstruction[..., :height, :width].float(), reduction="none")
    return (per_pixel * masked).sum() / (masked.sum() + 1e-5) / pixel_values.shape[1]


def simmim_decoder(dim: int, stride: int, num_channels: int) -> nn.Sequential:
    """SimMIM's one-layer decoder: a 1x1 convolution to stride * stride * C channels and a pixel shuffle,
    (B, dim, h, w) -> (B, C, h * stride, w * stride)."""
    return nn.Sequential(nn.Conv2d(dim, stride**2 * num_channels, kernel_size=1), nn.PixelShuffle(stride))


class SimMIMMixin:
    """SimMIM's forward, as the families' heads share it. The family builds `self.decoder` (`simmim_decoder`) and
    gives `mask_unit` (the patch side in px, what a mask entry covers), `default_mask_block` (px, used when
    `config.mask_patch_size` is unset) and `encode_masked` (the encoder's output and the (B, C, h, w) map to
    decode)."""

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SimMIMOutput | tuple:
        """bool_masked_pos (B, N) over the patches (N = ceil(H / p) * ceil(W / p)), True for masked ones (default:
        random blocks of `config.mask_patch_size` px, `config.mask_ratio` of them, SimMIM's masks)."""
        config, unit = self.config, self.mask_unit
        return_dict = config.return_dict if return_dict is None else return_dict
        if bool_masked_pos is None:
            grid = tuple(-(-side // unit) for side in pixel_values.shape[-2:])
            block = (config.mask_patch_size or self.default_mask_block) // unit
            bool_masked_pos = random_block_mask(
                pixel_values.shape[0], grid, block, config.mask_ratio, pixel_values.device
            )
        features, maps = self.encode_masked(
            pixel_values, bool_masked_pos, interpolate_pos_encoding, output_attentions, output_hidden_states
        )
        reconstruction = self.decoder(maps)[..., : pixel_values.shape[-2], : pixel_values.shape[-1]]
        output = SimMIMOutput(
            loss=simmim_loss(pixel_values.to(reconstruction.dtype), reconstruction, bool_masked_pos, unit),
            reconstruction=reconstruction,
            mask=bool_masked_pos.bool(),
            hidden_states=features.hidden_states,
            attentions=features.attentions,
        )
        return output if return_dict else output.to_tuple()

    def reconstruct(self, pixel_values: torch.Tensor, output: SimMIMOutput) -> torch.Tensor:
        """(B, C, H, W): the input where the patches were visible, the reconstruction where they were masked."""
        return simmim_reconstruction(pixel_values, output.reconstruction, output.mask, self.mask_unit)


# What only a pretraining head holds: MAE's and SimMIM's decoders, SimMIM's mask token.
PRETRAINING_HEAD_KEYS = re.compile(r"(^|\.)decoder\.|(^|\.)embeddings\.mask_token$")


class PretrainingHeadLoading:
    """For an hf_vit model class: a checkpoint saved with a pretraining head (MAE, SimMIM) that this class has no
    use for loads with the head left out, said in one line instead of a list of unexpected keys."""

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        head = {key for key in loading_info.unexpected_keys if PRETRAINING_HEAD_KEYS.search(key)}
        if head:
            loading_info.unexpected_keys -= head
            logger.warning(
                "The checkpoint's masked-image-modeling head (%d tensors: decoder, mask token) is left out: %s uses "
                "the pretrained encoder only.",
                len(head),
                type(self).__name__,
            )
        super()._adjust_missing_and_unexpected_keys(loading_info)


class MaskedAutoencoderDecoder(nn.Module):
    """MAE's decoder: the encoder's tokens (prefix + visible) -> `decoder_hidden_size`, mask tokens in the dropped
    places, fixed sine-cosine positions, `decoder_num_hidden_layers` pre-norm blocks, LayerNorm, a linear prediction
    of each patch's p * p * C pixels. (B, prefix + K, C) -> (B, N, p * p * C)."""

    def __init__(self, config, num_prefix_tokens: int, grid_size):
        super().__init__()
        dim, heads = config.decoder_hidden_size, config.decoder_num_attention_heads
        patch_h, patch_w = to_2tuple(config.patch_size)
        self.num_prefix_tokens, self.grid_size = num_prefix_tokens, tuple(grid_size)
        self.embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, as MAE's: one position per token the decoder sees (the prefix tokens first).
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, num_prefix_tokens + grid_size[0] * grid_size[1], dim), requires_grad=False
        )
        self.layers = nn.ModuleList(
            [
                PreNormBlock(**vit_block_parts(config, dim, heads, config.decoder_intermediate_size))
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.norm = vit_norm(config)(dim)
        self.prediction = nn.Linear(dim, patch_h * patch_w * config.num_channels)

    def sincos_table(self) -> torch.Tensor:
        """MAE's fixed positions, (1, prefix + N, dim)."""
        return sincos_position_table(self.grid_size, self.position_embeddings.shape[-1], self.num_prefix_tokens)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid_size) -> torch.Tensor:
        hidden_states = self.embed(latent)
        prefix, visible = hidden_states[:, : self.num_prefix_tokens], hidden_states[:, self.num_prefix_tokens :]
        batch_size, num_tokens = ids_restore.shape
        mask_tokens = self.mask_token.to(visible.dtype).expand(batch_size, num_tokens - visible.shape[1], -1)
        grid = torch.cat([visible, mask_tokens], dim=1)
        grid = torch.gather(grid, 1, ids_restore[..., None].expand(-1, -1, grid.shape[-1]))
        positions = resample_position_embeddings(
            self.position_embeddings, self.num_prefix_tokens, self.grid_size, grid_size
        )
        hidden_states = torch.cat([prefix, grid], dim=1) + positions.to(grid.dtype)
        for layer in self.layers:
            hidden_states, _ = layer(hidden_states)
        return self.prediction(self.norm(hidden_states))[:, self.num_prefix_tokens :]
