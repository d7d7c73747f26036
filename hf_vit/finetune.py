"""The main job: fine-tune (or train from scratch) an hf_vit classifier with the `Trainer`.

    parse_args(argv) -> (ModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments)
    finetune(model_args, data_args, training_args, recipe_args) -> eval metrics

Arguments (every one checked before any data is read; bad input is a one-line `UsageError`) -> data -> recipe
(every ingredient decided, printed with its reason) -> config and model -> Trainer -> save / card / curves / push.
`scripts/finetune.py` is the command-line layer; run it with `accelerate launch` for one or many processes.
"""

import ast
import difflib
import inspect
import os
import sys
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, set_seed

from .cli import TRACEBACK_FLAG, TRACEBACK_HELP, check_local_path, run_command, usage_errors
from .data import (
    DataArguments, collate, describe_dataset, load_splits, make_image_processor, processor_size, set_processor_size,
    set_transforms,
)  # fmt: skip
from .families import FAMILIES, Family, family_of
from .metrics import compute_metrics
from .recipes import RecipeArguments, RunFacts, apply_to_training, check_layer_decay, check_recipe_name, resolve_recipe
from .trainer import (
    BatchMixer, FinetuneTrainingArguments, ImageClassificationTrainer, TeacherInputAdapter, check_backbone_learning_rate,
    global_batch_size,
)  # fmt: skip


@dataclass
class ModelArguments:
    """Which model to train."""

    _argument_group_name = "model"

    model_type: str = field(default="hf_vit", metadata={"help": f"One of {sorted(FAMILIES)}."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A checkpoint directory or Hub id to start from (else: random weights)."}
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "Named architecture for a fresh model (default: "
                  f"{ {name: family.default_preset for name, family in FAMILIES.items()} })."},
    )  # fmt: skip
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


# The flags a newcomer needs, shown first in --help (the others follow in their groups: model, data, recipe, Trainer).
START_HERE = ("--output_dir", "--train_dir", "--model_name_or_path", "--model_type", "--num_train_epochs")


def build_parser() -> HfArgumentParser:
    """The command line: `START_HERE` first, then hf_vit's model, data and recipe flags, then the Trainer's."""
    usage = "%(prog)s " + " ".join(f"[{flag} {flag[2:].split('_')[-1].upper()}]" for flag in START_HERE) + " [...]"
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeArguments, FinetuneTrainingArguments),
                              usage=usage, description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument_group("command line").add_argument(TRACEBACK_FLAG, action="store_true", help=TRACEBACK_HELP)
    start = parser.add_argument_group("start here")
    for flag in START_HERE:
        action = parser._option_string_actions[flag]
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        start._group_actions.append(action)
    parser._action_groups.remove(start)
    parser._action_groups.insert(2, start)  # after argparse's own two groups (positionals, -h)
    return parser


def parse_args(argv=None):
    """Command line (or one JSON file) -> (ModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, recipe_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        *arguments, _command_line, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if unknown:
            flag = next((item for item in unknown if item.startswith("--")), unknown[0])
            close = difflib.get_close_matches(flag.split("=")[0], parser._option_string_actions, n=1)
            raise ValueError(f"unrecognized arguments: {' '.join(unknown)}" + (f"; did you mean {close[0]}?" if close else ""))
        model_args, data_args, recipe_args, training_args = arguments
    return model_args, data_args, training_args, recipe_args


def check_config_overrides(config, overrides: dict) -> None:
    """Every override must name a field of `config`: a typo would otherwise be written into config.json and do
    nothing."""
    settable = set(config.to_dict()) - {"_name_or_path", "model_type", "transformers_version", "architectures",
                                        "id2label", "label2id"}  # fmt: skip
    for name in overrides:
        if name not in settable:
            close = difflib.get_close_matches(name, settable, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"its fields are {sorted(settable)}"
            raise ValueError(f"--config_overrides: {type(config).__name__} has no field {name!r}; {hint}")


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args, recipe_args: RecipeArguments):
    """Everything that can be checked before data is touched: model type, preset, recipe, config overrides (names
    and values), checkpoint and teacher paths, flags the family does not support.

    Returns (the family to train: the checkpoint's when there is one, the config overrides as a dict).
    """
    family = family_of(model_args.model_type)
    if model_args.preset is not None and model_args.preset not in family.config_class.presets:
        raise ValueError(f"Unknown --preset {model_args.preset!r} for {family.model_type}; choose one of "
                         f"{sorted(family.config_class.presets)}")  # fmt: skip
    check_recipe_name(recipe_args.recipe)
    check_layer_decay(recipe_args.layer_decay)
    overrides = parse_config_overrides(model_args.config_overrides)
    # (--train_dir and --validation_dir: load_splits checks them before it reads anything)
    for path, flag in ((model_args.model_name_or_path, "--model_name_or_path"),
                       (model_args.teacher_name_or_path, "--teacher_name_or_path")):  # fmt: skip
        if path is not None:
            check_local_path(path, flag)
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
        family = family_of(config.model_type)
    else:
        config = family.config(model_args.preset)
    check_config_overrides(config, overrides)
    size = {} if data_args.image_size is None else {"image_size": data_args.image_size}
    type(config)(**{**config.to_dict(), **overrides, **size})  # the config's own validation of the values
    if model_args.teacher_name_or_path is not None:
        if "teacher_logits" not in inspect.signature(family.classifier_class.forward).parameters:
            raise ValueError(f"--teacher_name_or_path needs a model that distills (--model_type hf_deit), not {family.model_type}")
        AutoConfig.from_pretrained(model_args.teacher_name_or_path, trust_remote_code=model_args.trust_remote_code)
    check_backbone_learning_rate(training_args, config)
    return family, overrides


def label_fields(labels: list[str]) -> dict:
    return dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})


def build_config(model_args: ModelArguments, family: Family, labels: list[str], image_size: int | None, overrides: dict):
    """The classifier's config for `labels`: a checkpoint's (at its own image size, resized after loading) or the
    preset's."""
    if model_args.model_name_or_path is not None:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path, **label_fields(labels), **overrides, trust_remote_code=model_args.trust_remote_code
        )
    if image_size is not None:
        overrides = {**overrides, "image_size": image_size}
    config = family.config(model_args.preset, **label_fields(labels), **overrides)
    if model_args.attn_implementation is not None:
        config._attn_implementation = model_args.attn_implementation
    return config


def build_model(model_args: ModelArguments, family: Family, config, image_size: int | None):
    """A classifier from `config`: a checkpoint's weights (head re-initialised if the label set differs, position
    embeddings resampled to `image_size`) or fresh ones."""
    if model_args.model_name_or_path is None:
        return family.classifier_class(config)
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=True,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
    )
    if image_size is not None and image_size != model.config.image_size:
        model.set_image_size(image_size)
    return model


def build_image_processor(model_args: ModelArguments, model):
    size = model.config.image_size
    if model_args.model_name_or_path is None:
        return make_image_processor(size, model.config.num_channels)
    processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    set_processor_size(processor, size)
    return processor


def load_teacher(model_args: ModelArguments, model, image_processor):
    """The frozen teacher and the adapter that turns student batches into its inputs (its size, mean, std)."""
    teacher = AutoModelForImageClassification.from_pretrained(
        model_args.teacher_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    teacher_processor = AutoImageProcessor.from_pretrained(model_args.teacher_name_or_path)
    channels = model.config.num_channels
    teacher_inputs = TeacherInputAdapter(
        image_processor.image_mean[:channels], image_processor.image_std[:channels], processor_size(teacher_processor),
        teacher_processor.image_mean[:channels], teacher_processor.image_std[:channels],
    )  # fmt: skip
    return teacher, teacher_inputs


def finetune(model_args: ModelArguments, data_args: DataArguments, training_args, recipe_args=None, callbacks=()) -> dict:
    """Train, evaluate, save the model + processor + code + card + training curves, push when asked. Returns the
    eval metrics. Bad input raises a `UsageError` before any data is read (arguments) or anything is written.
    `callbacks`: `TrainerCallback`s of your own, added to the Trainer's."""
    recipe_args = recipe_args or RecipeArguments()
    with usage_errors():
        family, overrides = check_arguments(model_args, data_args, training_args, recipe_args)
        set_seed(training_args.seed)
        splits = load_splits(data_args, seed=training_args.seed)
        labels = splits["train"].features[data_args.label_column_name].names
        config = build_config(model_args, family, labels, data_args.image_size, overrides)
        facts = RunFacts(
            num_train_images=len(splits["train"]), num_labels=len(labels), image_size=data_args.image_size or config.image_size,
            model_type=family.model_type, from_checkpoint=model_args.model_name_or_path is not None,
            has_teacher=model_args.teacher_name_or_path is not None, num_train_epochs=training_args.num_train_epochs,
            global_batch_size=global_batch_size(training_args), flips_keep_labels=not data_args.uses_embedded_digits,
        )  # fmt: skip
        ingredients = resolve_recipe(recipe_args, training_args, overrides, facts)
        apply_to_training(ingredients, training_args)
        if ingredients.drop_path_rate is not None:
            config.drop_path_rate = ingredients.drop_path_rate
        recipe_summary = [f"recipe {recipe_args.recipe!r} for {facts.describe()}:", *ingredients.describe()]
        if training_args.should_log:
            print("\n  ".join(recipe_summary))

        model = build_model(model_args, family, config, data_args.image_size)
        image_processor = build_image_processor(model_args, model)
        teacher, teacher_inputs = None, None
        if model_args.teacher_name_or_path is not None:
            teacher, teacher_inputs = load_teacher(model_args, model, image_processor)
        set_transforms(splits, image_processor, model.config.num_channels, data_args, **ingredients.augmentation)
        dataset_name, dataset_id = describe_dataset(data_args)

        trainer = ImageClassificationTrainer(
            model=model,
            args=training_args,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"],
            data_collator=collate,
            processing_class=image_processor,
            compute_metrics=compute_metrics,
            callbacks=list(callbacks),
            teacher=teacher,
            teacher_inputs=teacher_inputs,
            batch_mixer=BatchMixer(
                len(labels), ingredients.mixup_alpha, ingredients.cutmix_alpha, recipe_args.mixup_switch_prob,
                ingredients.label_smoothing,
            ),  # fmt: skip
            repeated_augmentation=ingredients.repeated_augmentation,
            ema_decay=ingredients.ema_decay,
            layer_decay=ingredients.layer_decay,
            card_template=family.card_template,
            recipe_summary=recipe_summary,
        )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()

    if trainer.is_world_process_zero():
        top5 = f", top-5 {metrics['eval_top5_accuracy']:.2%}" if "eval_top5_accuracy" in metrics else ""
        print(
            f"eval: accuracy {metrics['eval_accuracy']:.2%}{top5}, loss {metrics['eval_loss']:.4f} on "
            f"{len(splits['validation'])} images of {dataset_name} after {training_args.num_train_epochs:g} epochs "
            f"-> {training_args.output_dir}"
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=dataset_name, dataset_id=dataset_id)
    else:
        trainer.create_model_card(dataset=dataset_name, dataset_id=dataset_id)
    return metrics


def main(argv=None) -> int:
    """The command line: bad input -> one line and exit code 2 (`--traceback` for the whole story)."""

    def body():
        with usage_errors():
            arguments = parse_args(argv)
        finetune(*arguments)

    return run_command(body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
