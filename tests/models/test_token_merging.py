"""Token merging (ToMe) against a reference written from the paper's code, on timm models converted to hf_vit."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForImageClassification

import hf_vit
from hf_vit.checkpoints import set_token_merging
from hf_vit.guards import UsageError
from hf_vit.interop.convert import convert_checkpoint
from hf_vit.models.layers import merge_tokens

from conftest import TINY_VIT, family_classifier, save_timm


def reference_matching(metric, r, class_token, distill_token):
    """ToMe's `bipartite_soft_matching` (facebookresearch/ToMe, tome/merge.py): tokens alternate between sets A and
    B over the whole sequence, the CLS row and the distillation column are never matched, the r best edges merge."""
    protected = int(class_token) + int(distill_token)
    r = min(r, (metric.shape[1] - protected) // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[..., ::2, :] @ metric[..., 1::2, :].transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -math.inf
    if distill_token:
        scores[..., :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
        if distill_token:
            return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
        return torch.cat([unm, dst], dim=1)

    return merge


def reference_tome(timm_model, pixels, r):
    """A timm ViT run as ToMe's timm patch runs it: proportional attention (log size on the keys' logits), keys
    averaged over heads as the metric, merging between attention and MLP, size-weighted averages; then the head (an
    average pool weighted by size)."""
    class_token = timm_model.cls_token is not None
    distill_token = getattr(timm_model, "dist_token", None) is not None
    x = timm_model.norm_pre(timm_model._pos_embed(timm_model.patch_embed(pixels)))
    size = None
    for block in timm_model.blocks:
        attn = block.attn
        batch, tokens, dim = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, dim // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + block.ls1(attn.proj(attn.norm(out)))
        merge = reference_matching(k.mean(1), r, class_token, distill_token)
        size = torch.ones_like(x[..., :1]) if size is None else size
        x, size = merge(x * size) / merge(size), merge(size)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    x = timm_model.norm(x)
    if distill_token:
        return (timm_model.head(x[:, 0]) + timm_model.head_dist(x[:, 1])) / 2
    if class_token:
        return timm_model.head(x[:, 0])
    pooled = (x * size).sum(1) / size.sum(1)
    return timm_model.head(timm_model.fc_norm(pooled))


@pytest.mark.parametrize(
    "architecture, model_args",
    [
        ("vit_tiny_patch16_224", {}),
        ("vit_tiny_patch16_224", dict(global_pool="avg", class_token=False, fc_norm=True)),
        ("deit_tiny_distilled_patch16_224", {}),
    ],
    ids=["cls", "mean", "distilled"],
)
def test_token_merging_matches_the_reference_on_converted_timm_models(tmp_path, architecture, model_args):
    reference, source = save_timm(tmp_path, "timm", architecture, std=0.05, depth=4, img_size=64, **model_args)
    ours = convert_checkpoint(source, str(tmp_path / "ours")).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = ours(pixels).logits
        for r in (3, 6):  # 6: the last blocks have fewer than 2r unprotected tokens left, and merge half of them
            ours.config.token_merging = r
            expected = reference_tome(reference, pixels, r)
            assert (ours(pixels).logits - plain).abs().max() > 1e-3  # merging changes something
            torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)
            ours.config._attn_implementation = "eager"
            torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)
            ours.config._attn_implementation = "sdpa"
        ours.config.token_merging = 0
        assert torch.equal(ours(pixels).logits, plain)


def test_a_config_with_token_merging_builds_a_merging_model_through_the_auto_classes():
    config = hf_vit.HfViTConfig(**TINY_VIT, num_labels=3, num_register_tokens=2, token_merging=3)
    model = AutoModelForImageClassification.from_config(config).eval()
    with torch.no_grad():
        hidden = model.vit(torch.randn(1, 3, 32, 32), output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [3 + 16, 3 + 13, 3 + 10]  # CLS and registers kept, 3 merged per block


def test_prefix_tokens_are_never_merged_and_sizes_add_up():
    """Registers and the CLS token are kept as they are, even when a grid token is their exact copy."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3 + 10, 8, generator=generator)
    tokens[:, 3] = tokens[:, 0]  # a grid token equal to the CLS token, the best match there is
    merged, sizes = merge_tokens(tokens, None, tokens, 4, num_protected=3)
    assert merged.shape == (2, 9, 8) and torch.equal(merged[:, :3], tokens[:, :3])
    assert torch.equal(sizes[:, :3, 0], torch.ones(2, 3)) and torch.equal(sizes.sum(1)[:, 0], torch.full((2,), 13.0))
    merged, more_sizes = merge_tokens(merged, sizes, merged, 100, num_protected=3)  # at most half the rest
    assert merged.shape[1] == 6 and more_sizes.sum() == sizes.sum()


@pytest.mark.parametrize("family", ["hf_vit", "hf_deit", "hf_vit_hybrid"])
def test_every_global_attention_family_merges_in_bf16_compiled_and_at_other_sizes(family):
    model = family_classifier(family).eval()
    pixels = torch.randn(2, 3, 32, 32)
    set_token_merging(model, 2)
    with torch.no_grad():
        merged = model(pixels).logits
        hidden = model.base_model(pixels, output_hidden_states=True).hidden_states
        prefix = model.base_model.num_prefix_tokens
        assert [h.shape[1] - prefix for h in hidden] == [16 - 2 * i for i in range(len(hidden))]
        assert copy.deepcopy(model).bfloat16()(pixels.bfloat16()).logits.dtype == torch.bfloat16
        if family != "hf_vit_hybrid":  # the hybrid's CNN fixes its size
            assert model(torch.randn(1, 3, 48, 40), interpolate_pos_encoding=True).logits.shape == (1, 3)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(pixels).logits, merged, atol=1e-5, rtol=0)


def test_what_cannot_merge_is_refused_in_one_line():
    with pytest.raises(UsageError, match="hf_swin cannot merge tokens.*Swin attends within windows"):
        set_token_merging(family_classifier("hf_swin"), 4)
    with pytest.raises(UsageError, match="--token_merging 4: .*rope='dinov3'"):
        set_token_merging(family_classifier("hf_vit dinov3"), 4)
    with pytest.raises(ValueError, match="non-negative integer"):
        hf_vit.HfViTConfig(**TINY_VIT, token_merging=-2)
    backbone = hf_vit.HfViTBackbone(hf_vit.HfViTConfig(**TINY_VIT, token_merging=2))
    with pytest.raises(ValueError, match="feature maps need every patch's token"):
        backbone(torch.randn(1, 3, 32, 32))
    model = family_classifier("hf_vit")
    set_token_merging(model, 2)
    with pytest.raises(ValueError, match="NaFlex padding and masked image modeling"):
        model(torch.randn(1, 4, 48), spatial_shapes=torch.tensor([[2, 2]]))
