"""Key maps from transformers and timm checkpoints to hf_vit, and strict loading that names every bad key.

A map is a list of (regex, replacement) rules applied in order to each source key; the first rule that matches
renames it. Query/key/value projections stored separately (transformers) are fused into one `qkv` tensor.
"""

import re

import torch

# timm's VisionTransformer / deit_* models, as `timm.create_model(...).state_dict()` names them.
TIMM_VIT_RULES = [
    (r"^cls_token$", r"{base}.embeddings.cls_token"),
    (r"^dist_token$", r"{base}.embeddings.distillation_token"),
    (r"^pos_embed$", r"{base}.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", r"{base}.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.attn\.", r"{base}.encoder.layers.\1.attention."),
    (r"^blocks\.(\d+)\.", r"{base}.encoder.layers.\1."),
    (r"^(norm|fc_norm)\.", r"{base}.layernorm."),
    (r"^head_dist\.", r"distillation_classifier."),
    (r"^head\.", r"{head}."),
]

# transformers' ViT / DeiT. Both the v5 names (q_proj, layers.N) and the names the checkpoints on the Hub were
# saved with (encoder.layer.N.attention.attention.query, ...) are accepted.
TRANSFORMERS_VIT_RULES = [
    (r"^(vit|deit)\.embeddings\.patch_embeddings\.", r"{base}.patch_embeddings."),
    (r"^(vit|deit)\.embeddings\.", r"{base}.embeddings."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.",
     r"{base}.encoder.layers.\2.attention.\3."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.",
     r"{base}.encoder.layers.\2.attention.proj."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"{base}.encoder.layers.\2.norm1."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"{base}.encoder.layers.\2.norm2."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.", r"{base}.encoder.layers.\2.mlp.fc1."),
    (r"^(vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.", r"{base}.encoder.layers.\2.mlp.fc2."),
    (r"^(vit|deit)\.layernorm\.", r"{base}.layernorm."),
    (r"^(classifier|cls_classifier)\.", r"{head}."),
    (r"^distillation_classifier\.", r"distillation_classifier."),
]  # fmt: skip

# Parts of a source checkpoint that hf_vit has no place for, dropped on purpose (the pooler is unused by
# transformers' classifiers; timm's `norm` is an Identity when it uses `fc_norm`).
IGNORED_SOURCE_KEYS = [r"^(vit|deit)\.pooler\."]

_SEPARATE_QKV = re.compile(r"^(.*\.attention)\.(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")


class CheckpointMismatchError(ValueError):
    """The converted weights don't fit the model: the message lists every missing, unexpected or misshapen key."""


def rename_keys(state_dict: dict, rules, base: str = "vit", head: str = "classifier") -> dict:
    """Apply `rules` to every key; a key no rule matches is kept under its own name (and reported on load)."""
    compiled = [(re.compile(pattern), replacement.format(base=base, head=head)) for pattern, replacement in rules]
    ignored = [re.compile(pattern) for pattern in IGNORED_SOURCE_KEYS]
    renamed = {}
    for key, tensor in state_dict.items():
        if any(pattern.match(key) for pattern in ignored):
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
            for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshapen))
            if keys
        ]
        raise CheckpointMismatchError(f"Checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
