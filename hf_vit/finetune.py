"""The main job: fine-tune (or train from scratch) an hf_vit classifier with the `Trainer`.

    parse_args(argv) -> (ModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments)
    finetune(model_args, data_args, training_args, recipe_args) -> eval metrics

`scripts/finetune.py` is the command-line layer; run it with `accelerate launch` for one or many processes.
"""

import ast
import inspect
import json
import math
import os
import sys
from dataclasses import dataclass, field

from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, set_seed

from . import FAMILIES
from .data import (
    DIGITS,
    DataArguments,
    collate,
    load_splits,
    make_image_processor,
    processor_size,
    set_processor_size,
    set_transforms,
)
from .training import (
    DEIT_DROP_PATH_RATE,
    DEIT_RECIPE,
    BatchMixer,
    FinetuneTrainingArguments,
    ImageClassificationTrainer,
    RecipeArguments,
    TeacherInputs,
    compute_metrics,
    deit_ema_decay,
    deit_learning_rate,
    global_batch_size,
)

# What `--model_type X` trains when no checkpoint or preset is named.
DEFAULT_PRESETS = {
    "hf_vit": "vit-cifar-patch4-32",
    "hf_deit": "deit-cifar-patch4-32",
    "hf_vit_hybrid": "vit-hybrid-resnet-tiny-32",
    "hf_swin": "swin-cifar-patch2-window4-32",
}


@dataclass
class ModelArguments:
    """Which model to train."""

    model_type: str = field(default="hf_vit", metadata={"help": f"One of {sorted(FAMILIES)}."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A checkpoint directory or Hub id to start from (else: random weights)."}
    )
    preset: str | None = field(
        default=None, metadata={"help": f"Named architecture for a fresh model (default: {DEFAULT_PRESETS})."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated config fields, e.g. 'hidden_size=64,drop_path_rate=0.1'."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2, ..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An image classifier (checkpoint dir or Hub id) to distill from; needs --model_type hf_deit."},
    )


def parse_config_overrides(text: str | None) -> dict:
    """'a=1,b=gelu,c=[2,2]' -> {'a': 1, 'b': 'gelu', 'c': [2, 2]}; values are Python literals or strings."""
    overrides = {}
    if not text:
        return overrides
    for item in _split_top_level(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: expected key=value, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, so list values survive."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in items + [current] if item.strip()]


def parse_args(argv=None):
    """Command line (or one JSON file) -> the four argument dataclasses, with `--recipe` defaults applied."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = os.path.abspath(argv[0])
        args = parser.parse_json_file(path)
        with open(path) as f:
            given = set(json.load(f))
    else:
        args = parser.parse_args_into_dataclasses(args=argv)
        given = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}
    apply_recipe(*args, given=given)
    return args


def apply_recipe(model_args, data_args, training_args, recipe_args, given: set) -> None:
    """`--recipe deit`: DeiT's value for every recipe flag the command line did not set."""
    if recipe_args.recipe is None:
        return
    if recipe_args.recipe != "deit":
        raise ValueError(f"Unknown --recipe {recipe_args.recipe!r}; the recipe hf_vit knows is 'deit'")
    for name, value in DEIT_RECIPE.items():
        if name not in given:
            target = next(args for args in (data_args, training_args, recipe_args) if hasattr(args, name))
            setattr(target, name, value)
    if "learning_rate" not in given:
        training_args.learning_rate = deit_learning_rate(global_batch_size(training_args))
    if "drop_path_rate" not in parse_config_overrides(model_args.config_overrides):
        overrides = [model_args.config_overrides] if model_args.config_overrides else []
        model_args.config_overrides = ",".join(overrides + [f"drop_path_rate={DEIT_DROP_PATH_RATE}"])


def build_model(model_args: ModelArguments, labels: list[str], image_size: int | None):
    """A classifier for `labels`: from a checkpoint (head re-initialised if the label set differs) or fresh."""
    if model_args.model_type not in FAMILIES:
        raise ValueError(f"Unknown --model_type {model_args.model_type!r}; choose one of {sorted(FAMILIES)}")
    label_kwargs = dict(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}
    )
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.model_name_or_path is not None:
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            **label_kwargs,
            **overrides,
            ignore_mismatched_sizes=True,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code,
        )
        if image_size is not None and image_size != model.config.image_size:
            model.set_image_size(image_size)
        return model
    config_class, _, classifier_class = FAMILIES[model_args.model_type]
    if image_size is not None:
        overrides["image_size"] = image_size
    preset = model_args.preset or DEFAULT_PRESETS[model_args.model_type]
    config = config_class.from_preset(preset, **label_kwargs, **overrides)
    if model_args.attn_implementation is not None:
        config._attn_implementation = model_args.attn_implementation
    return classifier_class(config)


def build_image_processor(model_args: ModelArguments, model):
    size = model.config.image_size
    if model_args.model_name_or_path is None:
        return make_image_processor(size)
    processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    set_processor_size(processor, size)
    return processor


def load_teacher(model_args: ModelArguments, model, image_processor):
    """The frozen teacher and the function that turns student batches into its inputs (its size, mean, std)."""
    if "teacher_logits" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"--teacher_name_or_path needs a model that distills (--model_type hf_deit), not {model.config.model_type}")
    teacher = AutoModelForImageClassification.from_pretrained(
        model_args.teacher_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    teacher_processor = AutoImageProcessor.from_pretrained(model_args.teacher_name_or_path)
    channels = model.config.num_channels
    teacher_inputs = TeacherInputs(
        image_processor.image_mean[:channels], image_processor.image_std[:channels], processor_size(teacher_processor),
        teacher_processor.image_mean[:channels], teacher_processor.image_std[:channels],
    )  # fmt: skip
    return teacher, teacher_inputs


def finetune(model_args: ModelArguments, data_args: DataArguments, training_args, recipe_args=None) -> dict:
    """Train, evaluate, save the model + processor + code + card, push when asked. Returns the eval metrics."""
    recipe_args = recipe_args or RecipeArguments()
    set_seed(training_args.seed)
    splits = load_splits(data_args, seed=training_args.seed)
    labels = splits["train"].features[data_args.label_column_name].names
    model = build_model(model_args, labels, data_args.image_size)
    image_processor = build_image_processor(model_args, model)
    teacher, teacher_inputs = None, None
    if model_args.teacher_name_or_path is not None:
        teacher, teacher_inputs = load_teacher(model_args, model, image_processor)
    set_transforms(splits, image_processor, model.config.num_channels, data_args)

    ema_decay = recipe_args.ema_decay
    if ema_decay is None and recipe_args.recipe == "deit":
        steps = math.ceil(len(splits["train"]) / global_batch_size(training_args))
        ema_decay = deit_ema_decay(int(steps * training_args.num_train_epochs))
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=collate,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        teacher=teacher,
        teacher_inputs=teacher_inputs,
        batch_mixer=BatchMixer(
            len(labels), recipe_args.mixup_alpha, recipe_args.cutmix_alpha, recipe_args.mixup_switch_prob,
            recipe_args.label_smoothing,
        ),  # fmt: skip
        repeated_augmentation=recipe_args.repeated_augmentation,
        ema_decay=ema_decay,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()

    dataset = data_args.dataset_name or data_args.train_dir or DIGITS
    if trainer.is_world_process_zero():
        print(
            f"eval: accuracy {metrics['eval_accuracy']:.2%}, top-5 {metrics['eval_top5_accuracy']:.2%}, "
            f"loss {metrics['eval_loss']:.4f} on {len(splits['validation'])} images of {dataset} after "
            f"{training_args.num_train_epochs:g} epochs -> {training_args.output_dir}"
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=dataset)
    else:
        trainer.create_model_card(dataset=dataset)
    return metrics


def main(argv=None) -> int:
    finetune(*parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
