"""How transformers' and timm's checkpoints map onto hf_vit's: one `KeyMap` per source architecture.

A key map is a list of (regex, replacement) rules applied in order to each source key (the first rule that matches
renames it; a list that depends on the source, a function of it), the function that reads hf_vit config fields off
the source (timm's model, transformers' config.json), and the reshapes a source needs before renaming (`prepare`).
Query/key/value projections stored separately are fused into one `qkv` tensor. Loading is strict: every missing,
unexpected or misshapen key is named. The families (`families.py`) say which key map serves which source.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.configuration_utils import CheckpointMismatchError


@dataclass(frozen=True)
class KeyMap:
    """How one source architecture's state dict (and, for timm, its model) becomes an hf_vit family's."""

    rules: list | Callable  # or a function of the source (its timm model / config.json dict) -> the rules
    # timm: its model -> hf_vit config fields; transformers: its config.json dict -> the fields that do not share
    # a name and meaning with hf_vit's (the shared ones are copied).
    config_fields: Callable | None = None
    source_prefix: str | None = None  # transformers: the source's base-model prefix, when it is not hf_vit's
    prepare: Callable | None = None  # (state dict, source) -> state dict: reshapes and fills before renaming

    def rename(self, state_dict: dict, source, base: str) -> dict:
        """The source's state dict under hf_vit's names (`base`: the model's base-model prefix)."""
        if self.prepare is not None:
            state_dict = self.prepare(dict(state_dict), source)
        rules = self.rules(source) if callable(self.rules) else self.rules
        return rename_keys(state_dict, rules, base=base)


# timm's VisionTransformer / deit_* / deit3_* / *_dinov2 / *_siglip_* models, as `timm.create_model(...).state_dict()`
# names them.
TIMM_VIT_RULES = [
    (r"^cls_token$", r"{base}.embeddings.cls_token"),
    (r"^dist_token$", r"{base}.embeddings.distillation_token"),
    (r"^reg_token$", r"{base}.embeddings.register_tokens"),
    (r"^pos_embed$", r"{base}.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", r"{base}.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", r"{base}.embeddings.patch_norm."),
    (r"^norm_pre\.", r"{base}.pre_norm."),
    (r"^blocks\.(\d+)\.gamma_([12])$", r"{base}.encoder.layers.\1.layer_scale\2.gamma"),
    (r"^blocks\.(\d+)\.attn\.", r"{base}.encoder.layers.\1.attention."),
    (r"^blocks\.(\d+)\.ls([12])\.", r"{base}.encoder.layers.\1.layer_scale\2."),
    (r"^blocks\.(\d+)\.", r"{base}.encoder.layers.\1."),
    (r"^attn_pool\.latent$", r"{base}.pooler.probe"),
    (r"^attn_pool\.", r"{base}.pooler."),
    (r"^(norm|fc_norm)\.", r"{base}.layernorm."),
    (r"^head_dist\.", r"distillation_classifier."),
    (r"^head\.", r"{head}."),
]


def transformers_layer_rules(block: str, target: str, attention: str = r"attention\.(?:attention\.)?") -> list:
    """The rules of one transformers ViT-style layer (ViTLayer, SwinLayer, the MAE decoder's): both the v5 names
    (q_proj, o_proj, mlp.fc1) and those the Hub's checkpoints were saved with (attention.attention.query,
    intermediate.dense, ...). `block` matches the layer's prefix, `target` is hf_vit's, with the same groups;
    `attention` is what stands before the q/k/v projections."""
    projection = r"(?P<projection>query|key|value|q_proj|k_proj|v_proj)\."
    return [
        (block + attention + projection, target + r"attention.\g<projection>."),
        (block + r"attention\.(?:output\.dense|o_proj)\.", target + "attention.proj."),
        (block + r"layernorm_before\.", target + "norm1."),
        (block + r"layernorm_after\.", target + "norm2."),
        (block + r"(?:intermediate\.dense|mlp\.fc1)\.", target + "mlp.fc1."),
        (block + r"(?:output\.dense|mlp\.fc2)\.", target + "mlp.fc2."),
    ]


# transformers' ViT / DeiT, under either prefix, with `encoder.layer.N` (the Hub's) or `layers.N` (v5) blocks.
TRANSFORMERS_VIT_RULES = [
    (r"^(vit|deit)\.embeddings\.patch_embeddings\.", r"{base}.patch_embeddings."),
    (r"^(vit|deit)\.embeddings\.", r"{base}.embeddings."),
    *transformers_layer_rules(r"^(?:vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.", r"{base}.encoder.layers.\1."),
    (r"^(vit|deit)\.layernorm\.", r"{base}.layernorm."),
    (r"^(classifier|cls_classifier)\.", r"{head}."),
    (r"^distillation_classifier\.", r"distillation_classifier."),
]

# transformers' ViTMAE: the ViT encoder's names (above), and the decoder's, in the names of v5, of the Hub
# checkpoints and of those transformers 5 saves (decoder_encoder.layer.N...).
TRANSFORMERS_VIT_MAE_RULES = TRANSFORMERS_VIT_RULES + [
    (r"^decoder\.decoder_embed\.", r"decoder.embed."),
    (r"^decoder\.decoder_pos_embed$", r"decoder.position_embeddings"),
    *transformers_layer_rules(r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.", r"decoder.layers.\1."),
    (r"^decoder\.decoder_norm\.", r"decoder.norm."),
    (r"^decoder\.decoder_pred\.", r"decoder.prediction."),
]


# transformers' Dinov2 and Dinov2WithRegisters (`dinov2.` / `dinov2_with_registers.` prefix; a bare base model
# has none), v5 names (q_proj, o_proj) and the Hub checkpoints' (attention.attention.query, attention.output.dense).
_DINOV2_BLOCK = r"^(?:dinov2|dinov2_with_registers)\.encoder\.layer\.(\d+)\."
TRANSFORMERS_DINOV2_RULES = [
    (r"^(?:dinov2|dinov2_with_registers)\.embeddings\.patch_embeddings\.", r"{base}.patch_embeddings."),
    (r"^(?:dinov2|dinov2_with_registers)\.embeddings\.", r"{base}.embeddings."),
    *transformers_layer_rules(_DINOV2_BLOCK, r"{base}.encoder.layers.\1."),
    (_DINOV2_BLOCK + r"layer_scale([12])\.lambda1$", r"{base}.encoder.layers.\1.layer_scale\2.gamma"),
    (_DINOV2_BLOCK + r"(norm[12])\.", r"{base}.encoder.layers.\1.\2."),
    (r"^(?:dinov2|dinov2_with_registers)\.layernorm\.", r"{base}.layernorm."),
    (r"^classifier\.", r"{head}."),
]


def _next_stage(match: re.Match) -> str:
    """transformers merges patches at the end of stage i, hf_swin (like timm) at the start of stage i + 1."""
    return f"swin.stages.{int(match.group(1)) + 1}.downsample."


# timm's SwinTransformer (swin_* models).
TIMM_SWIN_RULES = [
    (r"^patch_embed\.proj\.", r"{base}.embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", r"{base}.embeddings.norm."),
    (r"^absolute_pos_embed$", r"{base}.embeddings.position_embeddings"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.", r"{base}.stages.\1.blocks.\2.attention."),
    (r"^layers\.(\d+)\.", r"{base}.stages.\1."),
    (r"^norm\.", r"{base}.layernorm."),
    (r"^head\.fc\.", r"{head}."),
]

# transformers' Swin, v5 names and the names the Hub checkpoints were saved with (attention.self.query, ...).
_SWIN_BLOCK = r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
TRANSFORMERS_SWIN_RULES = [
    (r"^swin\.embeddings\.", r"{base}.embeddings."),
    (
        _SWIN_BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table$",
        r"{base}.stages.\1.blocks.\2.attention.relative_position_bias_table",
    ),
    *transformers_layer_rules(_SWIN_BLOCK, r"{base}.stages.\1.blocks.\2.", attention=r"attention\.(?:self\.)?"),
    (r"^swin\.encoder\.layers\.(\d+)\.downsample\.", _next_stage),
    (r"^swin\.layernorm\.", r"{base}.layernorm."),
    (r"^classifier\.", r"{head}."),
]


def transformers_dinov3_rules(config: dict) -> list:
    """transformers' DINOv3ViTModel / DINOv3ViTBackbone (under the `dinov3` prefix the converter gives a bare
    model); blocks are `layer.N` on disk and `model.layer.N` in memory; the up projection is a gated MLP's `fc1_x` or
    a plain one's `fc1`."""
    block, up = r"^dinov3\.(?:model\.)?layer\.(\d+)\.", "fc1_x" if config.get("use_gated_mlp") else "fc1"
    return [
        (r"^dinov3\.embeddings\.patch_embeddings\.", r"{base}.patch_embeddings.projection."),
        (r"^dinov3\.embeddings\.", r"{base}.embeddings."),
        (block + r"attention\.o_proj\.", r"{base}.encoder.layers.\1.attention.proj."),
        (block + r"attention\.", r"{base}.encoder.layers.\1.attention."),
        (block + r"layer_scale([12])\.lambda1$", r"{base}.encoder.layers.\1.layer_scale\2.gamma"),
        (block + r"mlp\.gate_proj\.", r"{base}.encoder.layers.\1.mlp.fc1_g."),
        (block + r"mlp\.up_proj\.", r"{base}.encoder.layers.\1.mlp." + up + "."),
        (block + r"mlp\.down_proj\.", r"{base}.encoder.layers.\1.mlp.fc2."),
        (block + r"(norm[12])\.", r"{base}.encoder.layers.\1.\2."),
        (r"^dinov3\.norm\.", r"{base}.layernorm."),
    ]


# transformers' Aimv2VisionModel (under the `aimv2` prefix the converter gives it): RMSNorms, a SwiGLU MLP, learned
# positions for the grid, and an attention-pooling head whose query is a learned token (`prepare` fuses its k / v).
_AIMV2_BLOCK = r"^aimv2\.encoder\.layers\.(\d+)\."
TRANSFORMERS_AIMV2_RULES = [
    (r"^aimv2\.embeddings\.patch_embed\.", r"{base}.patch_embeddings.projection."),
    (r"^aimv2\.embeddings\.rms_norm\.", r"{base}.embeddings.patch_norm."),
    (r"^aimv2\.embeddings\.position_embedding\.weight$", r"{base}.embeddings.position_embeddings"),
    (_AIMV2_BLOCK + r"attention\.out_proj\.", r"{base}.encoder.layers.\1.attention.proj."),
    (_AIMV2_BLOCK + r"attention\.", r"{base}.encoder.layers.\1.attention."),
    (_AIMV2_BLOCK + r"ffn\.gate_proj\.", r"{base}.encoder.layers.\1.mlp.fc1_g."),
    (_AIMV2_BLOCK + r"ffn\.up_proj\.", r"{base}.encoder.layers.\1.mlp.fc1_x."),
    (_AIMV2_BLOCK + r"ffn\.down_proj\.", r"{base}.encoder.layers.\1.mlp.fc2."),
    (_AIMV2_BLOCK + r"rms_norm([12])\.", r"{base}.encoder.layers.\1.norm\2."),
    (r"^aimv2\.rms_norm\.", r"{base}.layernorm."),
    (r"^aimv2\.head\.cls_token$", r"{base}.pooler.probe"),
    (r"^aimv2\.head\.output_proj\.", r"{base}.pooler.proj."),
    (r"^aimv2\.head\.", r"{base}.pooler."),
]

_CLIP_BLOCK = r"^vision_model\.encoder\.layers\.(\d+)\."
# the blocks and the final norm, named alike in transformers' CLIP and SigLIP vision towers
_CLIP_ENCODER_RULES = [
    (_CLIP_BLOCK + r"self_attn\.out_proj\.", r"{base}.encoder.layers.\1.attention.proj."),
    (_CLIP_BLOCK + r"self_attn\.", r"{base}.encoder.layers.\1.attention."),
    (_CLIP_BLOCK + r"layer_norm([12])\.", r"{base}.encoder.layers.\1.norm\2."),
    (_CLIP_BLOCK + r"mlp\.", r"{base}.encoder.layers.\1.mlp."),
    (r"^vision_model\.post_layernorm\.", r"{base}.layernorm."),
]
# transformers' CLIPVisionModel: a pre-norm (CLIP's `pre_layrnorm`), the final norm on the pooled token only.
TRANSFORMERS_CLIP_RULES = [
    (r"^vision_model\.embeddings\.class_embedding$", r"{base}.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.patch_embedding\.", r"{base}.patch_embeddings.projection."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", r"{base}.embeddings.position_embeddings"),
    (r"^vision_model\.pre_layrnorm\.", r"{base}.pre_norm."),
    *_CLIP_ENCODER_RULES,
]

# transformers' SiglipVisionModel: no class token, the final norm on every token, then the attention-pooling head
# (its nn.MultiheadAttention's packed in-projection split into the q and kv of hf_vit's `AttentionPooling`).
TRANSFORMERS_SIGLIP_RULES = [
    (r"^vision_model\.embeddings\.patch_embedding\.", r"{base}.patch_embeddings.projection."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", r"{base}.embeddings.position_embeddings"),
    *_CLIP_ENCODER_RULES,
    (r"^vision_model\.head\.probe$", r"{base}.pooler.probe"),
    (r"^vision_model\.head\.attention\.out_proj\.", r"{base}.pooler.proj."),
    (r"^vision_model\.head\.(q|kv)\.", r"{base}.pooler.\1."),
    (r"^vision_model\.head\.layernorm\.", r"{base}.pooler.norm."),
    (r"^vision_model\.head\.mlp\.", r"{base}.pooler.mlp."),
]

# Parts of a source checkpoint that hf_vit has no place for, dropped on purpose: the pooler is unused by
# transformers' classifiers; relative-position indices and shift masks are recomputed (and cached) by hf_swin.
# DINOv2's and DINOv3's mask tokens only serve their masked-image pretraining; position ids are recomputed.
IGNORED_SOURCE_KEYS = [
    r"^(vit|deit)\.pooler\.",
    r"\.relative_position_index$",
    r"\.attn_mask$",
    r"^(dinov2|dinov2_with_registers|dinov3)\.embeddings\.mask_token$",
    r"\.position_ids$",
]

_SEPARATE_QKV = re.compile(r"^(.*\.attention)\.(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")


def rename_keys(state_dict: dict, rules, base: str = "vit", head: str = "classifier") -> dict:
    """Apply `rules` (replacement strings or functions of the match) to every key; a key no rule matches is kept
    under its own name (and reported on load)."""
    compiled = [
        (re.compile(pattern), replacement if callable(replacement) else replacement.format(base=base, head=head))
        for pattern, replacement in rules
    ]
    ignored = [re.compile(pattern) for pattern in IGNORED_SOURCE_KEYS]
    renamed = {}
    for key, tensor in state_dict.items():
        if any(pattern.search(key) for pattern in ignored):
            continue
        for pattern, replacement in compiled:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        renamed[key] = tensor
    return fuse_qkv(renamed)


def fuse_qkv(state_dict: dict) -> dict:
    """Concatenate separate query/key/value projections into the fused `attention.qkv` tensor (q, k, v order)."""
    fused, parts = {}, {}
    for key, tensor in state_dict.items():
        match = _SEPARATE_QKV.match(key)
        if match is None:
            fused[key] = tensor
            continue
        prefix, projection, kind = match.groups()
        parts.setdefault((prefix, kind), {})[projection[0]] = tensor  # "q", "k" or "v"
    for (prefix, kind), qkv in parts.items():
        if sorted(qkv) != ["k", "q", "v"]:
            raise CheckpointMismatchError(f"{prefix}: found only the {sorted(qkv)} projections' {kind}")
        fused[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return fused


def load_converted_state_dict(model: torch.nn.Module, state_dict: dict) -> None:
    """Load every tensor or raise `CheckpointMismatchError` naming the missing, unexpected and misshapen keys.

    Buffers the model recomputes itself (non-persistent) are not expected in `state_dict`.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshapen = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshapen:
        problems = [
            f"{title} ({len(keys)}): {', '.join(keys)}"
            for title, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", misshapen),
            )
            if keys
        ]
        raise CheckpointMismatchError(f"Checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def unsupported_options(used: dict[str, bool], source: str) -> None:
    """Raise a ValueError naming every option of `source` that hf_vit does not implement ({option: used})."""
    if any(used.values()):
        raise ValueError(f"{source} uses {[name for name, on in used.items() if on]}, which hf_vit does not implement")


def timm_activation(module, source: str) -> str:
    """The transformers name (`ACT2FN`) of a timm activation module."""
    name = type(module).__name__
    if name == "GELU":
        return "gelu_pytorch_tanh" if getattr(module, "approximate", "none") == "tanh" else "gelu"
    names = {"QuickGELU": "quick_gelu", "SiLU": "silu", "ReLU": "relu", "GELUTanh": "gelu_pytorch_tanh"}
    unsupported_options({f"act_layer={name}": name not in names}, source)
    return names[name]


def timm_head_fields(model, num_prefix_tokens: int, source: str) -> dict:
    """hf_vit config fields of what a timm ViT (VisionTransformer, Eva, NaFlexVit) does after its blocks: the final
    norm, the pooling."""
    identity, attn_pool = torch.nn.Identity, getattr(model, "attn_pool", None)
    fc_norm = not isinstance(model.fc_norm, identity)
    pooling = {"token": "cls", "map": "map", "avg": "mean" if fc_norm else "normalized_mean"}.get(model.global_pool)
    # whether the pooling reads the prefix tokens too (Eva has no such option: its attention pool reads them all)
    include_prefix = getattr(model, "pool_include_prefix", attn_pool is not None) and num_prefix_tokens > 0
    heads = model.blocks[0].attn.num_heads
    unsupported_options(
        {
            f"global_pool={model.global_pool!r}": pooling is None,
            "both norm and fc_norm": fc_norm and not isinstance(model.norm, identity),
            "no final norm (final_norm=False)": not fc_norm and isinstance(model.norm, identity),
            "average pooling over the prefix tokens too (pool_include_prefix=True)": include_prefix
            and pooling != "map",
            "attention pooling other than one latent with a q projection (AttentionPoolLatent)": attn_pool is not None
            and (
                attn_pool.latent_len != 1
                or isinstance(attn_pool.q, identity)
                or attn_pool.pos_embed is not None
                or not isinstance(attn_pool.q_norm, identity)
            ),
        },
        source,
    )
    return dict(
        layer_norm_eps=(model.fc_norm if fc_norm else model.norm).eps,
        pooling=pooling,
        pooling_num_heads=attn_pool.num_heads if attn_pool is not None and attn_pool.num_heads != heads else None,
        pooling_prefix_tokens=pooling != "map" or include_prefix or num_prefix_tokens == 0,
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=heads,
        pre_norm=not isinstance(model.norm_pre, identity),
    )


def timm_token_fields(model, source: str) -> dict:
    """hf_vit config fields of what a timm ViT (VisionTransformer, Eva) does around its blocks: the patch embedding,
    the prefix tokens and positions, the norms before and after the blocks, the pooling."""
    identity = torch.nn.Identity
    registers = 0 if model.reg_token is None else model.reg_token.shape[1]
    unsupported_options(
        {
            "position embeddings on register tokens (reg_tokens without no_embed_class=True)": registers > 0
            and model.pos_embed is not None
            and not model.no_embed_class,
        },
        source,
    )
    return dict(
        **timm_head_fields(model, registers + (model.cls_token is not None), source),
        image_size=list(model.patch_embed.img_size),
        patch_size=list(model.patch_embed.patch_size),
        num_channels=model.patch_embed.proj.in_channels,
        class_token=model.cls_token is not None,
        num_register_tokens=registers,
        absolute_position_embeddings=model.pos_embed is not None,
        # with position embeddings, where they start; timm resamples them with antialiasing
        prefix_position_embeddings=model.pos_embed is None or not model.no_embed_class,
        interpolation_antialias=model.pos_embed is not None,
        patch_embedding_bias=model.patch_embed.proj.bias is not None,
        patch_embedding_norm=not isinstance(model.patch_embed.norm, identity),
    )


def timm_block_fields(model, source: str) -> dict:
    """hf_vit config fields of a timm ViT's blocks: the norms, the MLP, the attention's projection and norms."""
    identity, block = torch.nn.Identity, model.blocks[0]
    attention, mlp = block.attn, block.mlp
    mlp_type = {"Mlp": "mlp", "SwiGLU": "swiglu", "GluMlp": "swiglu_fused"}.get(type(mlp).__name__)
    norm_type = {"LayerNorm": "layer_norm", "RmsNorm": "rms_norm"}.get(type(block.norm1).__name__)
    unsupported_options(
        {
            f"mlp_layer={type(mlp).__name__}": mlp_type is None,
            "a GLU MLP gated by its second half (gate_last=True)": mlp_type == "swiglu_fused" and mlp.gate_last,
            f"norm_layer={type(block.norm1).__name__}": norm_type is None,
        },
        source,
    )
    return dict(
        intermediate_size=mlp.fc2.in_features,
        hidden_act=timm_activation(mlp.act, source),
        mlp_type=mlp_type,
        mlp_norm=not isinstance(mlp.norm, identity),
        mlp_bias=mlp.fc2.bias is not None,
        norm_type=norm_type,
        proj_bias=attention.proj.bias is not None,
        qk_norm=not isinstance(attention.q_norm, identity),
        attention_output_norm=not isinstance(getattr(attention, "norm", None) or identity(), identity),
    )


def timm_vit_config(model) -> dict:
    """hf_vit config fields of a timm VisionTransformer (ViT, DeiT, DeiT III, DINOv2, SigLIP, CLIP, AIMv2),
    refusing the variants hf_vit does not implement."""
    source = f"timm model {type(model).__name__}"
    block = model.blocks[0]
    unsupported_options({"no position embeddings (pos_embed='none')": model.pos_embed is None}, source)
    return dict(
        **timm_token_fields(model, source),
        **timm_block_fields(model, source),
        qkv_bias=block.attn.qkv.bias is not None,
        layer_scale_init_value=getattr(block.ls1, "init_values", None),
    )


def timm_naflexvit_config(model) -> dict:
    """hf_vit config fields of a timm NaFlexVit (naflexvit_*: NaFlex inputs, learned or factorized positions
    resized to each picture's grid), refusing the variants hf_vit does not implement."""
    source = f"timm model {type(model).__name__}"
    embeds, block = model.embeds, model.blocks[0]
    factorized = embeds.pos_embed_type == "factorized"
    unsupported_options(
        {
            "rotary position embeddings (rope_type)": model.rope is not None,
            "no position embeddings (pos_embed='none')": embeds.pos_embed_type == "none",
            "position resampling by grid_sample (pos_embed_use_grid_sample=True)": embeds.pos_embed_use_grid_sample,
            "position resampling with align_corners=True": embeds.pos_embed_align_corners,
            f"pos_embed_interp_mode={embeds.pos_embed_interp_mode!r}": not factorized
            and embeds.pos_embed_interp_mode not in ("bicubic", "bilinear"),
            "a norm on the flattened patches (input_norm_layer)": embeds.norm_input is not None,
            "patch-size interpolation (enable_patch_interpolator=True)": embeds.patch_interpolator is not None,
            "padding images to the patch size (dynamic_img_pad=True)": embeds.dynamic_img_pad,
            "patches flattened channels first (patchify_channels_last=False)": not embeds.channels_last,
            "non-square patches": embeds.patch_size[0] != embeds.patch_size[1],
        },
        source,
    )
    registers = embeds.num_reg_tokens
    grid = embeds.pos_embed_grid_size
    patch = embeds.patch_size[0]
    return dict(
        **timm_head_fields(model, embeds.num_prefix_tokens, source),
        **timm_block_fields(model, source),
        image_size=[grid[0] * patch, grid[1] * patch],
        patch_size=patch,
        num_channels=model.in_chans,
        max_num_patches=grid[0] * grid[1],
        class_token=embeds.cls_token is not None,
        num_register_tokens=registers,
        prefix_position_embeddings=False,  # NaFlexVit positions the grid tokens only
        # factorized tables are resampled linearly, without antialiasing; the 2D table as configured
        position_interpolation="bilinear" if factorized else embeds.pos_embed_interp_mode,
        interpolation_antialias=not factorized and embeds.pos_embed_antialias,
        position_aspect_preserving=embeds.pos_embed_ar_preserving,
        factorized_positions=factorized,
        patch_embedding_bias=embeds.proj.bias is not None,
        patch_embedding_norm=not isinstance(embeds.norm, torch.nn.Identity),
        qkv_bias=block.attn.qkv.bias is not None,
        layer_scale_init_value=getattr(block.ls1, "init_values", None),
    )


def timm_naflexvit_prepare(state_dict: dict, model) -> dict:
    """NaFlexVit's learned grid (1, gh, gw, C) as hf_vit's (1, gh * gw, C); its Linear patch projection over patches
    flattened channels last, (C_out, p * p * C), as the Conv2d hf_vit holds (C_out, C, p, p)."""
    if "embeds.pos_embed" in state_dict:
        state_dict["embeds.pos_embed"] = state_dict["embeds.pos_embed"].flatten(1, 2)
    weight = state_dict["embeds.proj.weight"]
    if weight.ndim == 2:
        patch = model.embeds.patch_size[0]
        state_dict["embeds.proj.weight"] = weight.reshape(-1, patch, patch, model.in_chans).permute(0, 3, 1, 2)
    return state_dict


# timm's NaFlexVit: its embedding module's names, then a VisionTransformer's
TIMM_NAFLEXVIT_RULES = [
    (r"^embeds\.cls_token$", r"{base}.embeddings.cls_token"),
    (r"^embeds\.reg_token$", r"{base}.embeddings.register_tokens"),
    (r"^embeds\.pos_embed$", r"{base}.embeddings.position_embeddings"),
    (r"^embeds\.pos_embed_y$", r"{base}.embeddings.row_position_embeddings"),
    (r"^embeds\.pos_embed_x$", r"{base}.embeddings.column_position_embeddings"),
    (r"^embeds\.proj\.", r"{base}.patch_embeddings.projection."),
    (r"^embeds\.norm\.", r"{base}.embeddings.patch_norm."),
] + TIMM_VIT_RULES


def timm_eva_config(model) -> dict:
    """hf_vit config fields of a timm Eva (DINOv3, EVA02, Perception Encoder, timm's RoPE ViTs), refusing the variants
    hf_vit does not implement."""
    source = f"timm model {type(model).__name__}"
    block, rope = model.blocks[0], model.rope
    attention = block.attn
    kind = {"RotaryEmbeddingDinoV3": "dinov3", "RotaryEmbeddingCat": "eva"}.get(type(rope).__name__)
    projection = attention.qkv if attention.qkv is not None else attention.q_proj
    unsupported_options(
        {
            "post-norm blocks (use_post_norm=True)": type(block).__name__ != "EvaBlock",
            f"{type(rope).__name__} rotary embeddings": rope is not None and kind is None,
            "pixel-band rotary embeddings (in_pixels=True)": kind == "eva" and rope.in_pixels,
            "rotary periods from min_period / max_period": kind == "dinov3" and rope.temperature is None,
            "rotary coordinates normalised by the shorter or longer side": kind == "dinov3"
            and rope.normalize_coords != "separate",
            "grouped-query attention (num_kv_heads)": getattr(attention, "num_kv_groups", 1) > 1,
            "gated attention (gated_attn=True)": getattr(attention, "gate", None) is not None,
            "a head width other than embed_dim / num_heads": attention.head_dim * attention.num_heads
            != model.embed_dim,
        },
        source,
    )
    if type(attention).__name__ == "EvaAttention":  # a query and a value bias, never a key bias
        qkv_bias = (attention.q_bias if attention.qkv is not None else projection.bias) is not None
        key_bias = False
    else:  # AttentionRope: the projections' own biases
        qkv_bias, key_bias = projection.bias is not None, True
    fields = dict(
        **timm_token_fields(model, source),
        **timm_block_fields(model, source),
        qkv_bias=qkv_bias,
        key_bias=key_bias,
        layer_scale_init_value=block.init_values if block.gamma_1 is not None else None,
    )
    if kind is not None:
        fields.update(
            rope=kind,
            rope_theta=rope.temperature,
            rope_layout="half" if rope.rotate_half else "interleaved",
            rope_offset=rope.grid_offset,
            rope_axes="yx" if rope.grid_indexing == "ij" else "xy",
            rope_reference_grid=list(rope.ref_feat_shape) if kind == "eva" and rope.ref_feat_shape else None,
            rope_shift=rope.shift_coords,
            rope_jitter=rope.jitter_coords,
            rope_rescale=rope.rescale_coords,
        )
    return fields


def fill_key_biases(state_dict: dict, source=None) -> dict:
    """Separate projections with a query and a value bias but none for the key (DINOv3, EVA02-B+): a zero key bias,
    so that the three fuse into one QKV bias whose key third stays at zero (`key_bias=False`)."""
    for key in [key for key in state_dict if key.endswith("q_proj.bias")]:
        key_bias = key.replace("q_proj.bias", "k_proj.bias")
        if key_bias not in state_dict and key.replace("q_proj", "v_proj") in state_dict:
            state_dict[key_bias] = torch.zeros_like(state_dict[key])
    return state_dict


def timm_eva_prepare(state_dict: dict, model=None) -> dict:
    """EVA's fused attention keeps its query and value biases apart (q_bias, v_bias): one QKV bias with a zero key
    third; separate projections get a zero key bias (`fill_key_biases`)."""
    for key in [key for key in state_dict if key.endswith(".attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        query_bias, value_bias = state_dict.pop(key), state_dict.pop(prefix + "v_bias")
        state_dict[prefix + "qkv.bias"] = torch.cat([query_bias, torch.zeros_like(query_bias), value_bias])
    return fill_key_biases(state_dict)


def transformers_dinov3_config(config: dict) -> dict:
    """hf_vit config fields of a transformers DINOv3ViT config (a dict of config.json)."""
    query_bias = config.get("query_bias", True)
    unsupported_options(
        {"query_bias != value_bias": query_bias != config.get("value_bias", True)}, "transformers dinov3_vit"
    )
    return dict(
        rope="dinov3",
        absolute_position_embeddings=False,
        qkv_bias=query_bias,
        layer_scale_init_value=config.get("layerscale_value", 1.0),
        mlp_type="swiglu" if config.get("use_gated_mlp") else "mlp",
        rope_shift=config.get("pos_embed_shift"),
        rope_jitter=config.get("pos_embed_jitter"),
        rope_rescale=config.get("pos_embed_rescale", 2.0),
        pooling="cls",
    )


def transformers_aimv2_config(config: dict) -> dict:
    """hf_vit config fields of a transformers Aimv2VisionConfig (a dict of config.json)."""
    unsupported_options(
        {"is_native=True (sine-cosine positions made for every size)": config.get("is_native", False)},
        "transformers aimv2_vision_model",
    )
    head = config.get("use_head", True)
    return dict(
        class_token=False,
        norm_type="rms_norm",
        layer_norm_eps=config.get("rms_norm_eps", 1e-5),
        patch_embedding_norm=True,
        mlp_type="swiglu",
        proj_bias=config.get("qkv_bias", False),
        pooling="map" if head else "normalized_mean",
        pooling_query_projection=False,
        pooling_mlp=False,
    )


def transformers_aimv2_prepare(state_dict: dict, config=None) -> dict:
    """AIMv2's learned grid positions as (1, N, C); its head's separate key and value projections fused (k, v)."""
    positions = "aimv2.embeddings.position_embedding.weight"
    state_dict[positions] = state_dict[positions][None]
    for kind in ("weight", "bias"):
        if f"aimv2.head.k_proj.{kind}" in state_dict:
            parts = [state_dict.pop(f"aimv2.head.{name}_proj.{kind}") for name in ("k", "v")]
            state_dict[f"aimv2.head.kv.{kind}"] = torch.cat(parts)
    return state_dict


def transformers_clip_config(config: dict) -> dict:
    """hf_vit config fields of a transformers CLIPVisionConfig (a dict of config.json)."""
    return dict(patch_embedding_bias=False, pre_norm=True, pooled_norm_only=True, qkv_bias=True)


def transformers_clip_prepare(state_dict: dict, config=None) -> dict:
    """CLIP's class embedding as a (1, 1, C) token, its positions (CLS first) as (1, 1 + N, C)."""
    state_dict["vision_model.embeddings.class_embedding"] = state_dict["vision_model.embeddings.class_embedding"][
        None, None
    ]
    positions = "vision_model.embeddings.position_embedding.weight"
    state_dict[positions] = state_dict[positions][None]
    return state_dict


def transformers_siglip_config(config: dict) -> dict:
    """hf_vit config fields of a transformers SiglipVisionConfig (a dict of config.json)."""
    return dict(
        class_token=False,
        qkv_bias=True,
        pooling="map" if config.get("vision_use_head", True) else "normalized_mean",
        interpolation_antialias=False,
    )


def transformers_siglip_prepare(state_dict: dict, config=None) -> dict:
    """SigLIP's positions as (1, N, C); its head's packed in-projection (q, k, v) split into q and kv."""
    positions = "vision_model.embeddings.position_embedding.weight"
    state_dict[positions] = state_dict[positions][None]
    for kind in ("weight", "bias"):
        packed = state_dict.pop(f"vision_model.head.attention.in_proj_{kind}", None)
        if packed is not None:
            query, key_value = packed.split([packed.shape[0] // 3, 2 * packed.shape[0] // 3])
            state_dict[f"vision_model.head.q.{kind}"], state_dict[f"vision_model.head.kv.{kind}"] = query, key_value
    return state_dict


def transformers_siglip2_config(config: dict) -> dict:
    """hf_vit config fields of a transformers Siglip2VisionConfig: SigLIP's, with the learned position grid of
    `num_patches` positions (a square, sqrt(num_patches) a side) as the training size."""
    side = math.isqrt(config.get("num_patches", 256))
    if side * side != config.get("num_patches", 256):
        raise ValueError(f"SigLIP 2's num_patches must be a square number, got {config['num_patches']}")
    patch = config.get("patch_size", 16)
    return dict(
        transformers_siglip_config(config),
        image_size=side * patch,
        max_num_patches=side * side,
        position_interpolation="bilinear",  # SigLIP 2 resizes its grid to each picture's, bilinear, antialiased
        interpolation_antialias=True,
    )


def transformers_siglip2_prepare(state_dict: dict, config: dict) -> dict:
    """SigLIP's reshapes, and SigLIP 2's patch embedding, a Linear over patches flattened channels last
    (hidden, p * p * C), as the Conv2d hf_vit holds (hidden, C, p, p)."""
    state_dict = transformers_siglip_prepare(state_dict, config)
    weight = "vision_model.embeddings.patch_embedding.weight"
    patch, channels = config.get("patch_size", 16), config.get("num_channels", 3)
    state_dict[weight] = state_dict[weight].reshape(-1, patch, patch, channels).permute(0, 3, 1, 2)
    return state_dict


def transformers_dinov2_config(config: dict) -> dict:
    """hf_vit config fields of a transformers Dinov2 / Dinov2WithRegisters config (a dict of config.json)."""
    unsupported_options(
        {"use_swiglu_ffn=True": config.get("use_swiglu_ffn", False)}, f"transformers {config.get('model_type')}"
    )
    hidden_size = config.get("hidden_size", 768)
    return dict(
        intermediate_size=int(hidden_size * config.get("mlp_ratio", 4)),
        layer_scale_init_value=config.get("layerscale_value", 1.0),
        pooling="cls_mean",
        interpolation_antialias=config.get("model_type") == "dinov2_with_registers",
    )


def timm_swin_config(model) -> dict:
    stage = model.layers[0]
    return dict(
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        num_channels=model.patch_embed.proj.in_channels,
        embed_dim=model.embed_dim,
        depths=[len(layer.blocks) for layer in model.layers],
        num_heads=[layer.blocks[0].attn.num_heads for layer in model.layers],
        window_size=stage.blocks[0].window_size[0],
        mlp_ratio=stage.blocks[0].mlp.fc1.out_features / model.embed_dim,
        qkv_bias=stage.blocks[0].attn.qkv.bias is not None,
        layer_norm_eps=model.norm.eps,
        use_absolute_embeddings=getattr(model, "absolute_pos_embed", None) is not None,
    )


TIMM_VIT = KeyMap(TIMM_VIT_RULES, timm_vit_config)
TIMM_SWIN = KeyMap(TIMM_SWIN_RULES, timm_swin_config)
TRANSFORMERS_VIT = KeyMap(TRANSFORMERS_VIT_RULES)
TRANSFORMERS_VIT_MAE = KeyMap(TRANSFORMERS_VIT_MAE_RULES)
TRANSFORMERS_SWIN = KeyMap(TRANSFORMERS_SWIN_RULES)
TRANSFORMERS_DINOV2 = KeyMap(TRANSFORMERS_DINOV2_RULES, transformers_dinov2_config, source_prefix="dinov2")
TRANSFORMERS_DINOV2_WITH_REGISTERS = KeyMap(
    TRANSFORMERS_DINOV2_RULES, transformers_dinov2_config, source_prefix="dinov2_with_registers"
)
TIMM_EVA = KeyMap(TIMM_VIT_RULES, timm_eva_config, prepare=timm_eva_prepare)
TIMM_NAFLEXVIT = KeyMap(TIMM_NAFLEXVIT_RULES, timm_naflexvit_config, prepare=timm_naflexvit_prepare)
TRANSFORMERS_DINOV3 = KeyMap(
    transformers_dinov3_rules, transformers_dinov3_config, source_prefix="dinov3", prepare=fill_key_biases
)
TRANSFORMERS_AIMV2 = KeyMap(
    TRANSFORMERS_AIMV2_RULES, transformers_aimv2_config, source_prefix="aimv2", prepare=transformers_aimv2_prepare
)
TRANSFORMERS_CLIP = KeyMap(
    TRANSFORMERS_CLIP_RULES, transformers_clip_config, source_prefix="vision_model", prepare=transformers_clip_prepare
)
TRANSFORMERS_SIGLIP = KeyMap(
    TRANSFORMERS_SIGLIP_RULES,
    transformers_siglip_config,
    source_prefix="vision_model",
    prepare=transformers_siglip_prepare,
)
# SigLIP 2's NaFlex tower: SigLIP's names, a Linear patch embedding, positions resized to each picture's grid
TRANSFORMERS_SIGLIP2 = KeyMap(
    TRANSFORMERS_SIGLIP_RULES,
    transformers_siglip2_config,
    source_prefix="vision_model",
    prepare=transformers_siglip2_prepare,
)
