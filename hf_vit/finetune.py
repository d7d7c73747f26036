"""The main job: fine-tune (or train from scratch) an hf_vit classifier with the `Trainer`.

    parse_args(argv) -> (ModelArguments, DataArguments, FinetuneTrainingArguments)
    finetune(model_args, data_args, training_args) -> eval metrics

`scripts/finetune.py` is the command-line layer; run it with `accelerate launch` for one or many processes.
"""

import ast
import os
import sys
from dataclasses import dataclass, field

from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, set_seed

from . import FAMILIES
from .data import DIGITS, DataArguments, collate, load_splits, make_image_processor, set_transforms
from .training import FinetuneTrainingArguments, ImageClassificationTrainer, compute_metrics

# What `--model_type X` trains when no checkpoint or preset is named.
DEFAULT_PRESETS = {"hf_vit": "vit-cifar-patch4-32"}


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
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneTrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(sys.argv[1]))
    return parser.parse_args_into_dataclasses(args=argv)


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
    processor.size = {"height": size, "width": size}
    return processor


def finetune(model_args: ModelArguments, data_args: DataArguments, training_args) -> dict:
    """Train, evaluate, save the model + processor + code + card, push when asked. Returns the eval metrics."""
    set_seed(training_args.seed)
    splits = load_splits(data_args, seed=training_args.seed)
    labels = splits["train"].features[data_args.label_column_name].names
    model = build_model(model_args, labels, data_args.image_size)
    image_processor = build_image_processor(model_args, model)
    set_transforms(splits, image_processor, model.config.num_channels, data_args)

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=collate,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
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
    model_args, data_args, training_args = parse_args(argv)
    finetune(model_args, data_args, training_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
