"""Pretrained weights from transformers and timm checkpoints into hf_vit.

    convert_checkpoint(source, output_dir)   # a directory or Hub id in, an hf_vit checkpoint out
    from_transformers(config, state_dict) / from_timm(config, state_dict)   # in memory

Which family a source becomes, and through which key map, is the family registry's word (`families.py`); the
key maps themselves are in `key_maps.py`.
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass, field

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file
from transformers import PreTrainedConfig
from transformers.utils import logging

from ..cards import public_name, write_model_card
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..guards import OVERWRITE_HELP, check_local_path, check_output_dir, usage_errors
from ..processors import checkpoint_image_processor, is_naflex, set_processor_size, timm_image_processor
from ..registry import FAMILIES, converter_for
from .key_maps import load_converted_state_dict

logger = logging.get_logger(__name__)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference


def read_source(source: str) -> tuple[dict, dict, str]:
    """(config.json as a dict, state dict, local directory) of a local directory or a Hub repo id."""
    check_local_path(source, "source")
    if os.path.isdir(source):
        directory = source
    else:
        try:
            directory = snapshot_download(source, allow_patterns=["*.json", *WEIGHT_FILES])
        except (HfHubHTTPError, OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0]
            raise FileNotFoundError(
                f"source {source!r} is not a local directory, and the Hub did not give it: {reason}"
            ) from error
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{source} has no config.json; is it a transformers or timm checkpoint?")
    with open(config_path, encoding="utf-8") as f:
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


def sources(library: str) -> list[str]:
    """The source architectures of `library` ("transformers" or "timm") that some family converts from."""
    return sorted(
        name.split(":", 1)[1]
        for family in FAMILIES.values()
        for name in family.converters
        if name.startswith(f"{library}:")
    )


# Image-text models whose vision tower converts: model_type -> the tower's own model_type (its config is the
# checkpoint's `vision_config`, its weights those under `vision_model.`; the text tower and projections are left out)
VISION_TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "siglip2": "siglip2_vision_model"}


def vision_tower(config: dict, state_dict: dict) -> tuple[dict, dict]:
    """(config, state dict) of the vision tower of an image-text checkpoint (`VISION_TOWERS`); others as they are."""
    tower = VISION_TOWERS.get(config.get("model_type"))
    if tower is None:
        return config, state_dict
    logger.warning("%s checkpoint: converting its vision tower (vision_model.*), without the text tower", tower[:-13])
    weights = {key: tensor for key, tensor in state_dict.items() if key.startswith("vision_model.")}
    return dict(config.get("vision_config") or {}, model_type=tower, architectures=None), weights


def from_transformers(config: dict, state_dict: dict):
    """An hf_vit model holding the weights of a transformers checkpoint of a model type the registry converts (vit,
    vit_mae, deit, swin, dinov2, dinov2_with_registers): a classifier or base model becomes the family's classifier,
    an MAE (`...ForPreTraining`) or SimMIM (`...ForMaskedImageModeling`) checkpoint its pretraining model."""
    config, state_dict = vision_tower(config, state_dict)
    model_type = config.get("model_type")
    found = converter_for(f"transformers:{model_type}")
    if found is None:
        raise ValueError(
            f"Unsupported transformers model_type {model_type!r}; hf_vit converts {sources('transformers')}"
        )
    family, key_map = found
    base = family.classifier_class.base_model_prefix
    source_base = key_map.source_prefix or base  # vit, deit, swin: the same prefix as hf_vit's
    if not any(key.startswith(f"{source_base}.") for key in state_dict):  # a bare base model (ViTModel, SwinModel, ...)
        state_dict = {f"{source_base}.{key}": tensor for key, tensor in state_dict.items()}
    head = state_dict.get("classifier.weight", state_dict.get("cls_classifier.weight"))
    # The architecture fields both sides share (not the generic PreTrainedConfig ones such as model_type), then the
    # key map's translations of the others.
    config_class = family.config_class
    names = set(config_class.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    fields = {name: config[name] for name in names if name in config and not name.startswith("_")}
    fields.update(key_map.config_fields(config) if key_map.config_fields else {})
    model_class = family.model_class_for((config.get("architectures") or [None])[0])
    model = model_class(config_class(**fields, **_labels(config, 0 if head is None else head.shape[0])))
    load_converted_state_dict(model, key_map.rename(state_dict, config, base))
    return model.eval()


def from_timm(config: dict, state_dict: dict):
    """An hf_vit model holding the weights of a timm vit_* / deit_* / swin_* checkpoint as timm saves them for the Hub
    (config.json with `architecture`, `model_args`, `pretrained_cfg`)."""
    try:
        import timm
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
    # The most specific class the registry knows: a distilled DeiT is also a VisionTransformer.
    found = next(filter(None, (converter_for(f"timm:{cls.__name__}") for cls in type(reference).__mro__)), None)
    if found is None:
        raise ValueError(
            f"timm architecture {architecture!r} ({type(reference).__name__}) is not a model hf_vit converts "
            f"({sources('timm')})"
        )
    family, key_map = found
    labels = _labels({"id2label": dict(enumerate(config.get("label_names") or []))}, num_labels)
    model = family.classifier_class(family.config_class(**key_map.config_fields(reference), **labels))
    load_converted_state_dict(model, key_map.rename(state_dict, reference, family.classifier_class.base_model_prefix))
    return model.eval()


def convert_checkpoint(
    source: str,
    output_dir: str,
    image_size: int | None = None,
    push_to_hub: bool = False,
    hub_model_id: str | None = None,
    hub_token: str | None = None,
    window_size: int | None = None,
    overwrite_output_dir: bool = False,
):
    """Convert a transformers or timm checkpoint (directory or Hub id) into an hf_vit checkpoint in `output_dir`:
    config, safetensors weights, code, image processor and model card. Returns the model.

    `image_size` resamples the position embeddings to a new resolution for good (and sizes the processor);
    `window_size` (Swin) resamples the relative position bias tables to a new window. The source and the arguments
    are checked before anything is written (a `UsageError` names the problem); an `output_dir` that holds files is
    refused unless `overwrite_output_dir`.
    """
    with usage_errors():
        if push_to_hub and hub_model_id is None:
            raise ValueError("push_to_hub needs hub_model_id")
        check_output_dir(output_dir, overwrite_output_dir)
        config, state_dict, directory = read_source(source)
        if "architecture" in config:
            model = from_timm(config, state_dict)
            processor = timm_image_processor(config.get("pretrained_cfg") or {}, model.config)
        elif "model_type" in config:
            model = from_transformers(config, state_dict)
            processor = checkpoint_image_processor(directory, model.config)
        else:
            raise ValueError(f"{source}/config.json has neither `architecture` (timm) nor `model_type` (transformers)")
        if window_size is not None:
            if not hasattr(model, "set_window_size"):
                raise ValueError(
                    f"window_size applies to hf_swin models; {source} converts to {model.config.model_type}"
                )
            model.set_window_size(window_size)
        if image_size is not None:
            if is_naflex(processor):
                raise ValueError(
                    f"image_size does not apply to {source}: its processor takes each picture at its own aspect "
                    f"ratio within {model.config.max_num_patches} patches (NaFlex); give max_num_patches to it instead"
                )
            model.set_image_size(image_size)
            set_processor_size(processor, image_size)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    template = FAMILIES[model.config.model_type].card_template
    write_model_card(output_dir, model, template, source=f"converted from {public_name(source)}", load_id=hub_model_id)
    if push_to_hub:
        api = HfApi(token=hub_token)
        api.create_repo(hub_model_id, exist_ok=True)
        api.upload_folder(folder_path=output_dir, repo_id=hub_model_id, commit_message=f"Convert {source} with hf_vit")
    return model


def command_line_description() -> str:
    """The convert command's --help text, its lists of sources read from the family registry."""
    towers = [
        f"{name} (its vision tower)" for name, tower in VISION_TOWERS.items() if converter_for(f"transformers:{tower}")
    ]
    transformers_sources = ", ".join([*sources("transformers"), *towers])
    return (
        f"Convert a transformers ({transformers_sources}) or timm (models of the classes {', '.join(sources('timm'))}) "
        f"checkpoint into an hf_vit checkpoint.\n\n{EXAMPLES}"
    )


EXAMPLES = """    python scripts/convert_checkpoint.py --source google/vit-base-patch16-224 --output_dir vit-base
    python scripts/convert_checkpoint.py --source timm/swin_tiny_patch4_window7_224.ms_in1k --output_dir swin-t \
        --push_to_hub --hub_model_id me/swin-t-hf-vit
    python scripts/convert_checkpoint.py --source microsoft/swin-tiny-patch4-window7-224 --output_dir swin-t-384 \
        --image_size 384 --window_size 12"""


@dataclass
class ConvertArguments:
    """The checkpoint to convert, where it goes, and what changes on the way."""

    _argument_group_name = "conversion"

    source: str = field(metadata={"help": "A local directory or a Hub repo id."})
    output_dir: str = field(metadata={"help": "Where the hf_vit checkpoint goes."})
    image_size: int | None = field(default=None, metadata={"help": "Resample the position embeddings to this size."})
    window_size: int | None = field(
        default=None, metadata={"help": "Swin: attention windows of this side (relative position bias resampled)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the checkpoint to --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The Hub repo to push to."})
    hub_token: str | None = field(default=None, metadata={"help": "Default: HF_TOKEN or the cached login."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


START_HERE = ("--source", "--output_dir")


def parse_args(argv=None):
    parser = grouped_parser((ConvertArguments,), START_HERE, command_line_description())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the examples keep their lines
    return tuple(parse_into_dataclasses(parser, argv))


def convert(args: ConvertArguments):
    """`convert_checkpoint` with the command line's arguments, and its line."""
    model = convert_checkpoint(**asdict(args))
    print(
        f"{args.source} -> {args.output_dir}: {model.config.model_type}, {model.num_parameters():,} parameters, "
        f"{model.config.num_labels} labels" + (f", pushed to {args.hub_model_id}" if args.push_to_hub else "")
    )
    return model


main = command(parse_args, convert)


__all__ = ["convert_checkpoint", "from_timm", "from_transformers", "main", "read_source"]
