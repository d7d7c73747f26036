"""How transformers' and timm's checkpoints map onto hf_vit's: one `KeyMap` per source architecture.

A key map is a list of (regex, replacement) rules applied in order to each source key (the first rule that matches
renames it) and, for timm, the function that reads hf_vit config fields off timm's model. Query/key/value
projections stored separately (transformers) are fused into one `qkv` tensor. Loading is strict: every missing,
unexpected or misshapen key is named. The family registry (`families.py`) says which key map serves which source.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..guards import CheckpointMismatchError


@dataclass(frozen=True)
class KeyMap:
    """How one source architecture's state dict (and, for timm, its model) becomes an hf_vit family's."""

    rules: list
    # timm: its model -> hf_vit config fields; transformers: its config.json dict -> the fields that do not share
    # a name and meaning with hf_vit's (the shared ones are copied).
    config_fields: Callable | None = None
    source_prefix: str | None = None  # transformers: the source's base-model prefix, when it is not hf_vit's


# timm's VisionTransformer / deit_* / deit3_* / *_dinov2 / *_siglip_* models, as `timm.create_model(...).state_dict()`
# names them.
TIMM_VIT_RULES = [
    (r"^cls_token$", r"{base}.embeddings.cls_token"),
    (r"^dist_token$", r"{base}.embeddings.distillation_token"),
    (r"^reg_token$", r"{base}.embeddings.register_tokens"),
    (r"^pos_embed$", r"{base}.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", r"{base}.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.attn\.", r"{base}.encoder.layers.\1.attention."),
    (r"^blocks\.(\d+)\.ls([12])\.", r"{base}.encoder.layers.\1.layer_scale\2."),
    (r"^blocks\.(\d+)\.", r"{base}.encoder.layers.\1."),
    (r"^attn_pool\.latent$", r"{base}.pooler.probe"),
    (r"^attn_pool\.", r"{base}.pooler."),
    (r"^(norm|fc_norm)\.", r"{base}.layernorm."),
    (r"^head_dist\.", r"distillation_classifier."),
    (r"^head\.", r"{head}."),
]

# transformers' ViT / DeiT. Both the v5 names (q_proj, layers.N) and the names the checkpoints on the Hub were
# saved with (encoder.layer.N.attention.attention.query, ...) are accepted.
TRANSFORMERS_VIT_RULES = [
    (r"^(vit|deit)\.embeddings\.patch_embeddings\.", r"{base}.patch_embeddings."),
    (r"^(vit|deit)\.embeddings\.", r"{base}.embeddings."),
    (
        r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.",
        r"{base}.encoder.layers.\2.attention.\3.",
    ),
    (
        r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.",
        r"{base}.encoder.layers.\2.attention.proj.",
    ),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"{base}.encoder.layers.\2.norm1."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"{base}.encoder.layers.\2.norm2."),
    (
        r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.",
        r"{base}.encoder.layers.\2.mlp.fc1.",
    ),
    (
        r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.",
        r"{base}.encoder.layers.\2.mlp.fc2.",
    ),
    (r"^(vit|deit)\.layernorm\.", r"{base}.layernorm."),
    (r"^(classifier|cls_classifier)\.", r"{head}."),
    (r"^distillation_classifier\.", r"distillation_classifier."),
]

# transformers' ViTMAE: the ViT encoder's names (above), and the decoder's: v5 names, the Hub checkpoints'
# (decoder_layers.N.attention.attention.query, ...) and those transformers 5 saves (decoder_encoder.layer.N...).
_MAE_DECODER_BLOCK = r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\."
TRANSFORMERS_VIT_MAE_RULES = TRANSFORMERS_VIT_RULES + [
    (r"^decoder\.decoder_embed\.", r"decoder.embed."),
    (r"^decoder\.decoder_pos_embed$", r"decoder.position_embeddings"),
    (
        _MAE_DECODER_BLOCK + r"attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.",
        r"decoder.layers.\1.attention.\2.",
    ),
    (_MAE_DECODER_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"decoder.layers.\1.attention.proj."),
    (_MAE_DECODER_BLOCK + r"layernorm_before\.", r"decoder.layers.\1.norm1."),
    (_MAE_DECODER_BLOCK + r"layernorm_after\.", r"decoder.layers.\1.norm2."),
    (_MAE_DECODER_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"decoder.layers.\1.mlp.fc1."),
    (_MAE_DECODER_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"decoder.layers.\1.mlp.fc2."),
    (r"^decoder\.decoder_norm\.", r"decoder.norm."),
    (r"^decoder\.decoder_pred\.", r"decoder.prediction."),
]


# transformers' Dinov2 and Dinov2WithRegisters (`dinov2.` / `dinov2_with_registers.` prefix; a bare base model
# has none), v5 names (q_proj, o_proj) and the Hub checkpoints' (attention.attention.query, attention.output.dense).
_DINOV2_BLOCK = r"^(?:dinov2|dinov2_with_registers)\.encoder\.layer\.(\d+)\."
TRANSFORMERS_DINOV2_RULES = [
    (r"^(?:dinov2|dinov2_with_registers)\.embeddings\.patch_embeddings\.", r"{base}.patch_embeddings."),
    (r"^(?:dinov2|dinov2_with_registers)\.embeddings\.", r"{base}.embeddings."),
    (
        _DINOV2_BLOCK + r"attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.",
        r"{base}.encoder.layers.\1.attention.\2.",
    ),
    (_DINOV2_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"{base}.encoder.layers.\1.attention.proj."),
    (_DINOV2_BLOCK + r"layer_scale([12])\.lambda1$", r"{base}.encoder.layers.\1.layer_scale\2.gamma"),
    (_DINOV2_BLOCK + r"(norm[12]|mlp\.fc[12])\.", r"{base}.encoder.layers.\1.\2."),
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
        _SWIN_BLOCK + r"attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.",
        r"{base}.stages.\1.blocks.\2.attention.\3.",
    ),
    (_SWIN_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"{base}.stages.\1.blocks.\2.attention.proj."),
    (
        _SWIN_BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table$",
        r"{base}.stages.\1.blocks.\2.attention.relative_position_bias_table",
    ),
    (_SWIN_BLOCK + r"layernorm_before\.", r"{base}.stages.\1.blocks.\2.norm1."),
    (_SWIN_BLOCK + r"layernorm_after\.", r"{base}.stages.\1.blocks.\2.norm2."),
    (_SWIN_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"{base}.stages.\1.blocks.\2.mlp.fc1."),
    (_SWIN_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"{base}.stages.\1.blocks.\2.mlp.fc2."),
    (r"^swin\.encoder\.layers\.(\d+)\.downsample\.", _next_stage),
    (r"^swin\.layernorm\.", r"{base}.layernorm."),
    (r"^classifier\.", r"{head}."),
]

# Parts of a source checkpoint that hf_vit has no place for, dropped on purpose: the pooler is unused by
# transformers' classifiers; relative-position indices and shift masks are recomputed (and cached) by hf_swin.
# DINOv2's mask token only serves its masked-image pretraining.
IGNORED_SOURCE_KEYS = [
    r"^(vit|deit)\.pooler\.",
    r"\.relative_position_index$",
    r"\.attn_mask$",
    r"^(dinov2|dinov2_with_registers)\.embeddings\.mask_token$",
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


def timm_vit_config(model) -> dict:
    """hf_vit config fields of a timm VisionTransformer, refusing the variants hf_vit does not implement."""
    block = model.blocks[0]
    attn_pool = getattr(model, "attn_pool", None)
    unsupported_options(
        {
            "norm_pre (pre_norm=True)": not isinstance(model.norm_pre, torch.nn.Identity),
            "position embeddings on register tokens (reg_tokens without no_embed_class=True)": model.num_reg_tokens > 0
            and not model.no_embed_class,
            f"global_pool={model.global_pool!r}": model.global_pool not in ("token", "avg", "map"),
            "both norm and fc_norm": not isinstance(model.norm, torch.nn.Identity)
            and not isinstance(model.fc_norm, torch.nn.Identity),
            f"mlp_layer={type(block.mlp).__name__}": type(block.mlp).__name__ != "Mlp",
            "attention pooling other than one latent with a q projection (AttentionPoolLatent)": attn_pool is not None
            and (
                attn_pool.latent_len != 1
                or isinstance(attn_pool.q, torch.nn.Identity)
                or attn_pool.pos_embed is not None
                or not isinstance(attn_pool.q_norm, torch.nn.Identity)
            ),
        },
        f"timm model {type(model).__name__}",
    )
    norm = model.norm if isinstance(model.fc_norm, torch.nn.Identity) else model.fc_norm
    layer_scale = getattr(block.ls1, "init_values", None)
    return dict(
        image_size=list(model.patch_embed.img_size),
        patch_size=list(model.patch_embed.patch_size),
        num_channels=model.patch_embed.proj.in_channels,
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        qkv_bias=block.attn.qkv.bias is not None,
        layer_norm_eps=norm.eps,
        pooling={"avg": "mean", "map": "map"}.get(model.global_pool, "cls"),
        class_token=model.cls_token is not None,
        interpolation_antialias=True,
        num_register_tokens=model.num_reg_tokens,
        prefix_position_embeddings=not model.no_embed_class,
        layer_scale_init_value=layer_scale,
        qk_norm=not isinstance(block.attn.q_norm, torch.nn.Identity),
    )


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
