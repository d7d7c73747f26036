"""The main job: fine-tune (or train from scratch) an hf_vit classifier with the `Trainer`.

    parse_args(argv) -> (ModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments, LoraArguments)
    finetune(model_args, data_args, training_args, recipe_args, lora_args) -> eval metrics

Arguments (every one checked before any data is read; bad input is a one-line `UsageError`) -> data -> recipe
(every ingredient decided, printed with its reason) -> config and model -> Trainer -> save / card / curves / push.
`scripts/finetune.py` is the command-line layer; run it with `accelerate launch` for one or many processes.
"""

import copy
import dataclasses
import inspect
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, set_seed

from .cli import (
    check_config_overrides, check_local_path, check_output_dir, command, grouped_parser, parse_config_overrides, parse_into_dataclasses,
    usage_errors,
)  # fmt: skip
from .data import (
    DataArguments, check_streaming, checkpoint_image_processor, describe_dataset, load_training_data,
    make_image_processor, processor_size, set_processor_size,
)  # fmt: skip
from .families import FAMILIES, Family, family_of
from .lora import LoraArguments, add_lora, check_lora_arguments, lora_targets, merged_model, trainable_fraction
from .metrics import compute_metrics
from .recipes import (
    START_INGREDIENTS, RecipeArguments, RunFacts, apply_to_config, apply_to_training, check_layer_decay,
    check_recipe_name, config_ingredients_given, resolve_recipe,
)  # fmt: skip
from .trainer import (
    BatchMixer, FinetuneTrainingArguments, ImageClassificationTrainer, TeacherInputAdapter, check_backbone_learning_rate,
    check_teacher_labels, fsdp_requested, global_batch_size,
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


# The flags a newcomer needs, shown first in --help (the others follow in their groups: model, data, recipe, Trainer).
START_HERE = ("--output_dir", "--train_dir", "--model_name_or_path", "--model_type", "--num_train_epochs")


def build_parser() -> HfArgumentParser:
    """The command line: `START_HERE` first, then hf_vit's model, data, recipe and LoRA flags, then the Trainer's."""
    return grouped_parser((ModelArguments, DataArguments, RecipeArguments, LoraArguments, FinetuneTrainingArguments),
                          START_HERE, __doc__.split("\n\n")[0])  # fmt: skip


def parse_args(argv=None):
    """Command line (or one JSON file) -> (ModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments,
    LoraArguments)."""
    model_args, data_args, recipe_args, lora_args, training_args = parse_into_dataclasses(build_parser(), argv)
    return model_args, data_args, training_args, recipe_args, lora_args


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args, recipe_args: RecipeArguments,
                    lora_args: LoraArguments | None = None):  # fmt: skip
    """Everything that can be checked before data is touched: the output directory, model type, preset, recipe,
    config overrides (names and values; none that would re-initialise a checkpoint's weights), checkpoint and
    teacher paths, flags the family does not support, LoRA targets.

    Returns (the family to train: the checkpoint's when there is one, the config overrides as a dict, the
    checkpoint's config or None).
    """
    check_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                     training_args.resume_from_checkpoint is not None)  # fmt: skip
    family = family_of(model_args.model_type)
    if model_args.preset is not None and model_args.preset not in family.config_class.presets:
        raise ValueError(f"Unknown --preset {model_args.preset!r} for {family.model_type}; choose one of "
                         f"{sorted(family.config_class.presets)}")  # fmt: skip
    check_recipe_name(recipe_args.recipe)
    check_layer_decay(recipe_args.layer_decay)
    overrides = parse_config_overrides(model_args.config_overrides)
    # (--train_dir and --validation_dir: load_training_data checks them before it reads anything)
    for path, flag in ((model_args.model_name_or_path, "--model_name_or_path"),
                       (model_args.teacher_name_or_path, "--teacher_name_or_path")):  # fmt: skip
        if path is not None:
            check_local_path(path, flag)
    checkpoint_config = None
    if model_args.model_name_or_path is not None:
        config = checkpoint_config = AutoConfig.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
        family = family_of(config.model_type)
    else:
        config = family.config(model_args.preset)
    check_config_overrides(config, overrides)
    if model_args.model_name_or_path is not None:
        check_overrides_keep_weights(family, config, overrides)
    flags = config_ingredients_given(recipe_args)
    for name in flags:
        if name not in config.to_dict():
            raise ValueError(f"--{name} does not apply to {family.model_type}: its config has no {name!r} field")
    for name in START_INGREDIENTS:
        start = flags.get(name, overrides.get(name))
        if start is not None and model_args.model_name_or_path is not None:  # it would be saved, and do nothing
            raise ValueError(f"{name}={start!r} sets how a model trained from scratch starts; --model_name_or_path "
                             "loads the checkpoint's weights")  # fmt: skip
    size = {} if data_args.image_size is None else {"image_size": data_args.image_size}
    type(config)(**{**config.to_dict(), **overrides, **flags, **size})  # the config's own validation of the values
    if model_args.teacher_name_or_path is not None:
        if "teacher_logits" not in inspect.signature(family.classifier_class.forward).parameters:
            raise ValueError(f"--teacher_name_or_path needs a model that distills (--model_type hf_deit), not {family.model_type}")
        AutoConfig.from_pretrained(model_args.teacher_name_or_path, trust_remote_code=model_args.trust_remote_code)
    check_backbone_learning_rate(training_args, config)
    check_streaming(data_args, training_args)
    if lora_args is not None and lora_args.lora_rank is not None:
        with torch.device("meta"):  # the architecture only, to find the target layers in
            lora_targets(family.classifier_class(type(config)(**{**config.to_dict(), **overrides})), lora_args.lora_target)
    return family, overrides, checkpoint_config


def weight_shapes(family: Family, config) -> dict[str, tuple]:
    """{name: shape} of the base model's weights under `config`, built on the meta device (nothing computed)."""
    with torch.device("meta"):
        return {name: tuple(tensor.shape) for name, tensor in family.base_model_class(config).state_dict().items()}


def check_overrides_keep_weights(family: Family, config, overrides: dict) -> None:
    """Config overrides of a checkpoint may not change the shape of its weights: `from_pretrained` would start those
    at random, with only a warning (`image_size=64` on a 32 px checkpoint re-initialises the position embeddings;
    `--image_size` resamples them). Raises naming the overrides and the weights."""
    shapes = weight_shapes(family, config)
    culprits = {}
    for name, value in overrides.items():
        changed = weight_shapes(family, type(config)(**{**config.to_dict(), name: value}))
        differ = sorted(key for key in shapes.keys() | changed.keys() if shapes.get(key) != changed.get(key))
        if differ:
            culprits[name] = differ
    if culprits:
        details = "; ".join(f"{name}={overrides[name]!r} changes {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                            for name, keys in culprits.items())  # fmt: skip
        resize = " (to train at another resolution use --image_size, which resamples the position embeddings)" \
            if "image_size" in culprits else ""  # fmt: skip
        raise ValueError(f"--config_overrides would start weights of the checkpoint {model_source_name(config)} at random: "
                         f"{details}{resize}")  # fmt: skip


def model_source_name(config) -> str:
    return repr(getattr(config, "_name_or_path", "") or config.model_type)


def streamed_images(training_args) -> int:
    """Images a streamed run trains on: --max_steps global batches."""
    return training_args.max_steps * global_batch_size(training_args)


def label_fields(labels: list[str]) -> dict:
    return dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})


def build_config(model_args: ModelArguments, family: Family, labels: list[str], image_size: int | None, overrides: dict,
                 checkpoint_config=None):  # fmt: skip
    """The classifier's config for `labels`: the checkpoint's `checkpoint_config` (at its own image size, resized
    after loading) or the preset's, with the `overrides`."""
    if checkpoint_config is not None:
        config = copy.deepcopy(checkpoint_config)
        for name, value in {**label_fields(labels), **overrides}.items():
            setattr(config, name, value)
        return config
    if image_size is not None:
        overrides = {**overrides, "image_size": image_size}
    config = family.config(model_args.preset, **label_fields(labels), **overrides)
    if model_args.attn_implementation is not None:
        config._attn_implementation = model_args.attn_implementation
    return config


def build_model(model_args: ModelArguments, family: Family, config, image_size: int | None, checkpoint_labels=None):
    """A classifier from `config`: a checkpoint's weights (the head started afresh, said in one line, when the
    checkpoint's labels `checkpoint_labels` are not the data's; position embeddings resampled to `image_size`) or
    fresh ones."""
    if model_args.model_name_or_path is None:
        return family.classifier_class(config)
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=True,  # another number of classes: the head's shape changes (the rest cannot)
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
    )
    labels = list(config.id2label.values())
    if checkpoint_labels is not None and list(checkpoint_labels) != labels:
        restart_head(model)
        print(f"The checkpoint's head classifies {short_list(checkpoint_labels)}, the data has {short_list(labels)}: "
              "the head starts afresh.")  # fmt: skip
    if image_size is not None and image_size != model.config.image_size:
        model.set_image_size(image_size)
    return model


def short_list(names, shown: int = 5) -> str:
    names = list(names)
    return str(names) if len(names) <= shown else f"[{', '.join(map(repr, names[:shown]))}, ... ({len(names)} classes)]"


def restart_head(model) -> None:
    """Initialise the classifier's heads (the modules outside its base model) afresh, as a new model's."""
    for name, module in model.named_children():
        if module is model.base_model:
            continue
        for part in module.modules():
            part._is_hf_initialized = False
            for tensor in (*part.parameters(recurse=False), *part.buffers(recurse=False)):
                tensor._is_hf_initialized = False
    model.initialize_weights()  # only what is not marked initialised


def build_image_processor(model_args: ModelArguments, model):
    size = model.config.image_size
    if model_args.model_name_or_path is None:
        return make_image_processor(size, model.config.num_channels)
    processor = checkpoint_image_processor(model_args.model_name_or_path, model.config, model_args.trust_remote_code)
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


def turn_off(ingredients, name: str, off, reason: str, flag: str):
    """`ingredients` with `name` turned `off` for `reason` when the recipe chose it; a value given by hand that does
    not apply is an error naming `flag` (the setting it clashes with)."""
    if getattr(ingredients, name) == off:
        return ingredients
    if ingredients.reasons[name] == "given":
        raise ValueError(f"--{name} {getattr(ingredients, name)} does not apply with {flag} ({reason}); leave it out or "
                         f"pass --{name} {off:g}")  # fmt: skip
    return dataclasses.replace(ingredients, **{name: off}, reasons={**ingredients.reasons, name: f"{flag}: {reason}"})


def fit_to_training(ingredients, lora_args: LoraArguments, training_args, streaming: bool = False):
    """The recipe's ingredients that the way of training rules out, turned off: layer decay with LoRA (only the
    adapters and the head learn), the EMA under FSDP (it would hold a whole copy of the weights), repeated
    augmentation for a stream (it needs a sampler of indices)."""
    if lora_args.lora_rank is not None:
        ingredients = turn_off(ingredients, "layer_decay", 1.0, "only the adapters and the head learn", "--lora_rank")
    if fsdp_requested(training_args):
        ingredients = turn_off(ingredients, "ema_decay", 0.0, "an EMA would hold a whole copy of the sharded weights",
                               "FSDP")  # fmt: skip
    if streaming:
        ingredients = turn_off(ingredients, "repeated_augmentation", 1, "a stream is read in order, not sampled",
                               "--streaming")  # fmt: skip
    return ingredients


def save_merged(trainer, directory: str) -> None:
    """The LoRA adapters (their average, with an EMA) merged into the weights, written to `directory` as a plain
    hf_vit checkpoint with its processor."""
    if trainer.ema is not None:
        trainer.ema.copy_to(trainer.model)
    merged_model(trainer.model).save_pretrained(directory)
    trainer.processing_class.save_pretrained(directory)


def finetune(model_args: ModelArguments, data_args: DataArguments, training_args, recipe_args=None, lora_args=None,
             callbacks=()) -> dict:  # fmt: skip
    """Train, evaluate, save the model + processor + code + card + training curves, push when asked. Returns the
    eval metrics. Bad input raises a `UsageError` before any data is read (arguments) or anything is written.
    With `lora_args.lora_rank`, LoRA adapters and the head are trained and saved (PEFT's adapter files).
    `callbacks`: `TrainerCallback`s of your own, added to the Trainer's."""
    recipe_args, lora_args = recipe_args or RecipeArguments(), lora_args or LoraArguments()
    with usage_errors():  # the user's input, checked: arguments, then data, then the recipe for them
        check_lora_arguments(lora_args)
        family, overrides, checkpoint_config = check_arguments(model_args, data_args, training_args, recipe_args, lora_args)
        set_seed(training_args.seed)
        data = load_training_data(data_args, seed=training_args.seed)
        labels = data.train.features[data_args.label_column_name].names
        if model_args.teacher_name_or_path is not None:
            check_teacher_labels(AutoConfig.from_pretrained(model_args.teacher_name_or_path,
                                                            trust_remote_code=model_args.trust_remote_code),
                                 labels)  # fmt: skip
        config = build_config(model_args, family, labels, data_args.image_size, overrides, checkpoint_config)
        facts = RunFacts(  # a stream: the images its --max_steps feed, once
            num_train_images=streamed_images(training_args) if data.streaming else len(data.train), num_labels=len(labels),
            image_size=data_args.image_size or config.image_size, model_type=family.model_type,
            from_checkpoint=model_args.model_name_or_path is not None, has_teacher=model_args.teacher_name_or_path is not None,
            num_train_epochs=1 if data.streaming else training_args.num_train_epochs,
            global_batch_size=global_batch_size(training_args), flips_keep_labels=not data_args.uses_embedded_digits,
            position_embeddings=hasattr(config, "position_embedding_init"),
            patch_projection=getattr(config, "patch_embedding_type", None) == "patch",
            max_steps=max(training_args.max_steps, 0),
        )  # fmt: skip
        ingredients = resolve_recipe(recipe_args, training_args, overrides, facts)
        ingredients = fit_to_training(ingredients, lora_args, training_args, data.streaming)
        apply_to_training(ingredients, training_args)
        apply_to_config(ingredients, config)
        recipe_summary = [f"recipe {recipe_args.recipe!r} for {facts.describe()}:", *ingredients.describe()]
    if training_args.should_log:
        print("\n  ".join(recipe_summary))

    checkpoint_labels = None if checkpoint_config is None else list(checkpoint_config.id2label.values())
    model = build_model(model_args, family, config, data_args.image_size, checkpoint_labels)
    image_processor = build_image_processor(model_args, model)
    if lora_args.lora_rank is not None:
        model = add_lora(model, lora_args)
        trainable, total = trainable_fraction(model)
        recipe_summary.append(f"LoRA rank {lora_args.lora_rank} on {lora_args.lora_target} (+ the head): {trainable:,} of "
                              f"{total:,} parameters trained ({trainable / total:.2%})")  # fmt: skip
        if training_args.should_log:
            print(recipe_summary[-1])
    teacher, teacher_inputs = None, None
    if model_args.teacher_name_or_path is not None:
        teacher, teacher_inputs = load_teacher(model_args, model, image_processor)
    data.set_transforms(image_processor, model.config.num_channels, data_args, **ingredients.augmentation)
    dataset_name, dataset_id = describe_dataset(data_args)

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=data.collator,
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
    metrics = trainer.train_and_evaluate(training_args.resume_from_checkpoint, data.skipped)

    if trainer.is_world_process_zero():
        top5 = f", top-5 {metrics['eval_top5_accuracy']:.2%}" if "eval_top5_accuracy" in metrics else ""
        print(
            f"eval: accuracy {metrics['eval_accuracy']:.2%}{top5}, loss {metrics['eval_loss']:.4f} on "
            f"{len(data.validation)} images of {dataset_name} after {data.length(training_args)}"
            + (f" ({metrics['train_skipped_unreadable_images']} unreadable images skipped)" if data.streaming else "")
            + f" -> {training_args.output_dir}"
        )
    trainer.publish(dataset_name, dataset_id)
    if lora_args.lora_rank is not None and lora_args.lora_merge and trainer.is_world_process_zero():
        save_merged(trainer, os.path.join(training_args.output_dir, "merged"))
    return metrics


main = command(parse_args, finetune)


if __name__ == "__main__":
    raise SystemExit(main())
