"""Pretrained weights from transformers and timm checkpoints into hf_vit.

    convert_checkpoint(source, output_dir)   # a directory or Hub id in, an hf_vit checkpoint out
    from_transformers(config, state_dict) / from_timm(config, state_dict)   # in memory

Key maps are lists of (regex, replacement) rules applied in order to each source key; the first rule that matches
renames it. Query/key/value projections stored separately (transformers) are fused into one `qkv` tensor. Loading
is strict: every missing, unexpected or misshapen key is named.
"""

import json
import os
import re

import torch
from huggingface_hub import HfApi, snapshot_download
from safetensors.torch import load_file
from transformers import AutoImageProcessor, BitImageProcessor, PreTrainedConfig

from .cards import write_model_card
from .configuration_deit import HfDeiTConfig
from .configuration_swin import HfSwinConfig
from .configuration_vit import HfViTConfig
from .data import set_processor_size
from .modeling_deit import HfDeiTForImageClassification
from .modeling_swin import HfSwinForImageClassification
from .modeling_vit import HfViTForImageClassification

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



def _next_stage(match: re.Match) -> str:
    """transformers merges patches at the end of stage i, hf_swin (like timm) at the start of stage i + 1."""
    return f"swin.stages.{int(match.group(1)) + 1}.downsample."


def _resnet_block(match: re.Match) -> str:
    """timm / torchvision `layer{L}.{j}.conv{k}` / `bn{k}` / `downsample.{0,1}` -> transformers ResNet
    `stages.{L-1}.layers.{j}.layer.{k-1}` / `shortcut`."""
    stage, block, kind, index = int(match.group(1)) - 1, match.group(2), match.group(3), int(match.group(4))
    prefix = f"vit.patch_embeddings.backbone.encoder.stages.{stage}.layers.{block}."
    if kind == "downsample.":  # the projection shortcut: 0 is its convolution, 1 its norm
        return prefix + ("shortcut.convolution." if index == 0 else "shortcut.normalization.")
    return prefix + f"layer.{index - 1}." + ("convolution." if kind == "conv" else "normalization.")


# timm's hybrid VisionTransformer on a timm / torchvision ResNet (`HybridEmbed(backbone=resnet features)`): the
# ResNet becomes a transformers ResNet backbone (same architecture, v1.5 bottlenecks), the rest is timm's ViT.
_TIMM_RESNET = r"^patch_embed\.backbone\."
TIMM_VIT_HYBRID_RULES = [
    (_TIMM_RESNET + r"conv1\.", r"{base}.patch_embeddings.backbone.embedder.embedder.convolution."),
    (_TIMM_RESNET + r"bn1\.", r"{base}.patch_embeddings.backbone.embedder.embedder.normalization."),
    (_TIMM_RESNET + r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.", _resnet_block),
    *TIMM_VIT_RULES,
]

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
    (_SWIN_BLOCK + r"attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.", r"{base}.stages.\1.blocks.\2.attention.\3."),
    (_SWIN_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"{base}.stages.\1.blocks.\2.attention.proj."),
    (_SWIN_BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table$",
     r"{base}.stages.\1.blocks.\2.attention.relative_position_bias_table"),
    (_SWIN_BLOCK + r"layernorm_before\.", r"{base}.stages.\1.blocks.\2.norm1."),
    (_SWIN_BLOCK + r"layernorm_after\.", r"{base}.stages.\1.blocks.\2.norm2."),
    (_SWIN_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"{base}.stages.\1.blocks.\2.mlp.fc1."),
    (_SWIN_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"{base}.stages.\1.blocks.\2.mlp.fc2."),
    (r"^swin\.encoder\.layers\.(\d+)\.downsample\.", _next_stage),
    (r"^swin\.layernorm\.", r"{base}.layernorm."),
    (r"^classifier\.", r"{head}."),
]  # fmt: skip

# Parts of a source checkpoint that hf_vit has no place for, dropped on purpose: the pooler is unused by
# transformers' classifiers; relative-position indices and shift masks are recomputed (and cached) by hf_swin.
IGNORED_SOURCE_KEYS = [r"^(vit|deit)\.pooler\.", r"\.relative_position_index$", r"\.attn_mask$"]

_SEPARATE_QKV = re.compile(r"^(.*\.attention)\.(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")


class CheckpointMismatchError(ValueError):
    """The converted weights don't fit the model: the message lists every missing, unexpected or misshapen key."""


def rename_keys(state_dict: dict, rules, base: str = "vit", head: str = "classifier") -> dict:
    """Apply `rules` (replacement strings or functions of the match) to every key; a key no rule matches is kept under its own name (and reported on load)."""
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
            for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshapen))
            if keys
        ]
        raise CheckpointMismatchError(f"Checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Whole checkpoints: a transformers or timm directory (or Hub id) in, an ordinary hf_vit checkpoint out.

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
_TIMM_INTERPOLATION = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL resampling codes


def read_source(source: str) -> tuple[dict, dict, str]:
    """(config.json as a dict, state dict, local directory) of a local directory or a Hub repo id."""
    directory = source if os.path.isdir(source) else snapshot_download(
        source, allow_patterns=["*.json", *WEIGHT_FILES]
    )  # fmt: skip
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{source} has no config.json; is it a transformers or timm checkpoint?")
    with open(config_path) as f:
        config = json.load(f)
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            if name.endswith(".safetensors"):
                state_dict = load_file(path)
            else:  # never unpickle arbitrary objects
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
            return config, state_dict, directory
    raise FileNotFoundError(f"{source} has none of {list(WEIGHT_FILES)} (sharded checkpoints are not supported)")


def _labels(config: dict, num_labels: int) -> dict:
    id2label = config.get("id2label") or {}
    if len(id2label) != num_labels:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    id2label = {int(i): name for i, name in id2label.items()}
    return dict(num_labels=num_labels, id2label=id2label, label2id={name: i for i, name in id2label.items()})


def from_transformers(config: dict, state_dict: dict):
    """An hf_vit model holding the weights of a transformers vit / deit / swin checkpoint (classifier or base)."""
    model_type = config.get("model_type")
    families = {
        "vit": (HfViTConfig, HfViTForImageClassification, TRANSFORMERS_VIT_RULES, "vit"),
        "deit": (HfDeiTConfig, HfDeiTForImageClassification, TRANSFORMERS_VIT_RULES, "deit"),
        "swin": (HfSwinConfig, HfSwinForImageClassification, TRANSFORMERS_SWIN_RULES, "swin"),
    }
    if model_type not in families:
        raise ValueError(f"Unsupported transformers model_type {model_type!r}; hf_vit converts {sorted(families)}")
    config_class, model_class, rules, base = families[model_type]
    if not any(key.startswith(f"{base}.") for key in state_dict):  # a bare base model (ViTModel, SwinModel, ...)
        state_dict = {f"{base}.{key}": tensor for key, tensor in state_dict.items()}
    head = state_dict.get("classifier.weight", state_dict.get("cls_classifier.weight"))
    # The architecture fields both sides share (not the generic PreTrainedConfig ones such as model_type).
    names = set(config_class.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    fields = {name: config[name] for name in names if name in config and not name.startswith("_")}
    hf_config = config_class(**fields, **_labels(config, 0 if head is None else head.shape[0]))
    model = model_class(hf_config)
    load_converted_state_dict(model, rename_keys(state_dict, rules, base=base))
    return model.eval()


def _timm_vit_config(model) -> dict:
    """hf_vit config fields of a timm VisionTransformer, refusing the variants hf_vit does not implement."""
    block = model.blocks[0]
    unsupported = {
        "register tokens": getattr(model, "reg_token", None) is not None,
        "layer scale": not isinstance(block.ls1, torch.nn.Identity),
        "pre-norm before the blocks": not isinstance(model.norm_pre, torch.nn.Identity),
        "q/k normalisation": not isinstance(block.attn.q_norm, torch.nn.Identity),
        "position embeddings without the class token": getattr(model, "no_embed_class", False),
        f"global_pool={model.global_pool!r}": model.global_pool not in ("token", "avg"),
        "both norm and fc_norm": not isinstance(model.norm, torch.nn.Identity) and not isinstance(model.fc_norm, torch.nn.Identity),
    }
    if any(unsupported.values()):
        raise ValueError(f"timm model uses {[name for name, used in unsupported.items() if used]}, which hf_vit does not implement")
    norm = model.norm if isinstance(model.fc_norm, torch.nn.Identity) else model.fc_norm
    return dict(
        image_size=list(model.patch_embed.img_size), patch_size=list(model.patch_embed.patch_size),
        num_channels=model.patch_embed.proj.in_channels, hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks), num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features, qkv_bias=block.attn.qkv.bias is not None,
        layer_norm_eps=norm.eps, pooling="mean" if model.global_pool == "avg" else "cls",
        class_token=model.cls_token is not None, interpolation_antialias=True,
    )  # fmt: skip


def _timm_swin_config(model) -> dict:
    stage = model.layers[0]
    return dict(
        image_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0],
        num_channels=model.patch_embed.proj.in_channels, embed_dim=model.embed_dim,
        depths=[len(layer.blocks) for layer in model.layers], num_heads=[layer.blocks[0].attn.num_heads for layer in model.layers],
        window_size=stage.blocks[0].window_size[0], mlp_ratio=stage.blocks[0].mlp.fc1.out_features / model.embed_dim,
        qkv_bias=stage.blocks[0].attn.qkv.bias is not None, layer_norm_eps=model.norm.eps,
        use_absolute_embeddings=getattr(model, "absolute_pos_embed", None) is not None,
    )  # fmt: skip


def from_timm(config: dict, state_dict: dict):
    """An hf_vit model holding the weights of a timm vit_* / deit_* / swin_* checkpoint as timm saves them for the Hub
    (config.json with `architecture`, `model_args`, `pretrained_cfg`)."""
    try:
        import timm
        from timm.models import SwinTransformer, VisionTransformer, VisionTransformerDistilled
    except ImportError as error:
        raise ImportError("Converting timm checkpoints needs timm: pip install timm") from error
    architecture = config.get("architecture")
    num_labels = config.get("num_classes", 1000)
    kwargs = dict(config.get("model_args") or {}, num_classes=num_labels)
    if config.get("global_pool"):
        kwargs.setdefault("global_pool", config["global_pool"])
    try:
        with torch.device("meta"):  # architecture only: no memory, no initialisation
            reference = timm.create_model(architecture, pretrained=False, **kwargs)
    except RuntimeError as error:
        raise ValueError(f"Unknown timm architecture {architecture!r}") from error
    labels = _labels({"id2label": dict(enumerate(config.get("label_names") or []))}, num_labels)
    if isinstance(reference, VisionTransformerDistilled):
        model = HfDeiTForImageClassification(HfDeiTConfig(**_timm_vit_config(reference), **labels))
        rules, base = TIMM_VIT_RULES, "deit"
    elif isinstance(reference, VisionTransformer):
        model = HfViTForImageClassification(HfViTConfig(**_timm_vit_config(reference), **labels))
        rules, base = TIMM_VIT_RULES, "vit"
    elif isinstance(reference, SwinTransformer):
        model = HfSwinForImageClassification(HfSwinConfig(**_timm_swin_config(reference), **labels))
        rules, base = TIMM_SWIN_RULES, "swin"
    else:
        raise ValueError(f"timm architecture {architecture!r} ({type(reference).__name__}) is not a ViT, DeiT or Swin")
    load_converted_state_dict(model, rename_keys(state_dict, rules, base=base))
    return model.eval()


def timm_image_processor(pretrained_cfg: dict):
    """timm's evaluation transform as a transformers processor: resize the short side to size / crop_pct,
    center-crop, normalise with the source's mean and std."""
    size = pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    crop_pct = pretrained_cfg.get("crop_pct") or 0.875
    return BitImageProcessor(
        size={"shortest_edge": int(size / crop_pct)},
        resample=_TIMM_INTERPOLATION.get(pretrained_cfg.get("interpolation", "bicubic"), 3),
        crop_size={"height": size, "width": size},
        image_mean=list(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        image_std=list(pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
    )


def convert_checkpoint(source: str, output_dir: str, image_size: int | None = None, push_to_hub: bool = False,
                       hub_model_id: str | None = None, token: str | None = None):  # fmt: skip
    """Convert a transformers or timm checkpoint (directory or Hub id) into an hf_vit checkpoint in `output_dir`:
    config, safetensors weights, code, image processor and model card. Returns the model.

    `image_size` resamples the position embeddings to a new resolution for good (and sizes the processor).
    """
    if push_to_hub and hub_model_id is None:
        raise ValueError("push_to_hub needs hub_model_id")
    config, state_dict, directory = read_source(source)
    if "architecture" in config:
        model = from_timm(config, state_dict)
        processor = timm_image_processor(config.get("pretrained_cfg") or {})
    elif "model_type" in config:
        model = from_transformers(config, state_dict)
        processor = AutoImageProcessor.from_pretrained(directory)
    else:
        raise ValueError(f"{source}/config.json has neither `architecture` (timm) nor `model_type` (transformers)")
    if image_size is not None:
        model.set_image_size(image_size)
        set_processor_size(processor, image_size)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    write_model_card(output_dir, model, source=f"converted from `{source}`", load_id=hub_model_id)
    if push_to_hub:
        api = HfApi(token=token)
        api.create_repo(hub_model_id, exist_ok=True)
        api.upload_folder(folder_path=output_dir, repo_id=hub_model_id, commit_message=f"Convert {source} with hf_vit")
    return model
