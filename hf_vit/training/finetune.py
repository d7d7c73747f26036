"""The main job: fine-tune (or train from scratch) an hf_vit classifier with the `Trainer`.

    parse_args(argv) -> (FinetuneModelArguments, DataArguments, FinetuneTrainingArguments, RecipeArguments,
                         LoraArguments)
    finetune(model_args, data_args, training_args, recipe_args, lora_args) -> eval metrics

Arguments (every one checked before any data is read; bad input is a one-line `UsageError`) -> data -> recipe
(every ingredient decided, printed with its reason) -> model -> Trainer -> save / card / curves / push.
`scripts/finetune.py` and `hf-vit finetune` are its command line; run them with `accelerate launch` for one or many
processes.
"""

import math
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, HfArgumentParser, set_seed

from ..cli import command, grouped_parser, parse_into_dataclasses
from ..data import (
    DataArguments,
    TrainingData,
    attach_transforms,
    check_streaming,
    describe_dataset,
    is_multi_label,
    label_names,
    load_training_data,
)
from ..data.metrics import compute_metrics
from ..data.transforms import NaFlexPatches
from ..guards import check_local_path, check_output_dir, claim_output_dir, looks_like_local_path, usage_errors
from ..processors import processor_size
from .arguments import (
    FinetuneTrainingArguments,
    ModelArguments,
    ModelSource,
    check_backbone_learning_rate,
    check_model_source,
)
from .building import build_classifier, build_image_processor, label_fields, load_teacher
from .distributed import fsdp_requested, global_batch_size
from .logit_cache import LogitCache, teacher_fingerprint
from .lora import LoraArguments, add_lora, check_lora_arguments, lora_targets, merged_model, trainable_fraction
from .recipes import (
    START_INGREDIENTS,
    RecipeArguments,
    RunFacts,
    apply_to_config,
    apply_to_training,
    check_layer_decay,
    check_recipe_name,
    config_ingredients_given,
    fit_to_training,
    resolve_recipe,
)
from .regularisation import Distillation, balanced_class_weights, teacher_label_order
from .trainer import ImageClassificationTrainer, resolve_resume


@dataclass
class FinetuneModelArguments(ModelArguments):
    """Which model to train, and the teacher it may learn from."""

    teacher_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An image classifier to distill from, any that AutoModelForImageClassification loads (an hf_vit, "
            "transformers or timm checkpoint dir, or a Hub id), its classes the data's (matched by name)."
        },
    )
    distillation_type: str | None = field(
        default=None,
        metadata={"help": "With a teacher: hard (its top class, DeiT's default) or soft (its distribution)."},
    )
    distillation_alpha: float | None = field(
        default=None, metadata={"help": "With a teacher: the weight of its term against the labels' (default 0.5)."}
    )
    distillation_tau: float | None = field(
        default=None, metadata={"help": "With a teacher: the temperature of soft distillation (default 1)."}
    )
    teacher_logits_cache: str | None = field(
        default=None,
        metadata={
            "help": "With a teacher: a directory that keeps its top-k logits of every training view, which a later "
            "run with the same teacher, data and augmentation reads instead of running the teacher."
        },
    )
    teacher_logits_top_k: int = field(
        default=10, metadata={"help": "--teacher_logits_cache: the classes kept per picture and epoch."}
    )

    def teacher_on_disk(self) -> bool:
        """Whether the teacher can be read; with a cache its folder may have gone (the cache may not need it)."""
        path = self.teacher_name_or_path
        return self.teacher_logits_cache is None or not looks_like_local_path(path) or os.path.exists(path)

    def distillation(self, config) -> Distillation:
        """The distillation settings: the flags given, else a DeiT config's own, else DeiT's defaults."""
        fields = {"type": "distillation_type", "alpha": "distillation_alpha", "tau": "distillation_tau"}
        chosen = {
            name: getattr(self, flag) if getattr(self, flag) is not None else getattr(config, flag, None)
            for name, flag in fields.items()
        }
        if chosen["type"] == "none":  # a DeiT config's "no teacher": a teacher given now teaches the DeiT way
            chosen["type"] = None
        return Distillation(**{name: value for name, value in chosen.items() if value is not None})


DISTILLATION_FLAGS = ("distillation_type", "distillation_alpha", "distillation_tau")

# The flags a newcomer needs, shown first in --help (the others follow in their groups: model, data, recipe, Trainer).
START_HERE = ("--output_dir", "--train_dir", "--model_name_or_path", "--model_type", "--num_train_epochs")


def build_parser() -> HfArgumentParser:
    """The command line: `START_HERE` first, then hf_vit's model, data, recipe and LoRA flags, then the Trainer's."""
    return grouped_parser(
        (FinetuneModelArguments, DataArguments, RecipeArguments, LoraArguments, FinetuneTrainingArguments),
        START_HERE,
        __doc__.split("\n\n")[0],
    )


def parse_args(argv=None):
    """Command line (or one JSON file) -> (FinetuneModelArguments, DataArguments, FinetuneTrainingArguments,
    RecipeArguments, LoraArguments)."""
    model_args, data_args, recipe_args, lora_args, training_args = parse_into_dataclasses(build_parser(), argv)
    return model_args, data_args, training_args, recipe_args, lora_args


def check_arguments(
    model_args: FinetuneModelArguments,
    data_args: DataArguments,
    training_args,
    recipe_args: RecipeArguments,
    lora_args: LoraArguments,
) -> ModelSource:
    """Everything that can be checked before data is touched: the output directory, the model (`check_model_source`),
    the recipe and the ingredients given as config fields, the teacher, the flags the family does not support, LoRA's
    targets. Returns the model source."""
    check_output_dir(
        training_args.output_dir, training_args.overwrite_output_dir, training_args.resume_from_checkpoint is not None
    )
    check_recipe_name(recipe_args.recipe)
    check_layer_decay(recipe_args.layer_decay)
    check_lora_arguments(lora_args)
    flags = config_ingredients_given(recipe_args)
    naflex = {} if data_args.max_num_patches is None else {"max_num_patches": data_args.max_num_patches}
    source = check_model_source(model_args, data_args.image_size, **flags, **naflex)
    for name in START_INGREDIENTS:
        start = flags.get(name, source.overrides.get(name))
        if start is not None and source.from_checkpoint:  # it would be saved, and do nothing
            raise ValueError(
                f"{name}={start!r} sets how a model trained from scratch starts; --model_name_or_path "
                "loads the checkpoint's weights"
            )
    if model_args.teacher_name_or_path is not None:
        if model_args.teacher_on_disk():
            check_local_path(model_args.teacher_name_or_path, "--teacher_name_or_path")
        if model_args.teacher_logits_top_k < 1:
            raise ValueError(f"--teacher_logits_top_k must be at least 1, got {model_args.teacher_logits_top_k}")
        if model_args.teacher_logits_cache is not None and data_args.streaming:
            raise ValueError("--teacher_logits_cache keeps logits per picture, which a stream (--streaming) has not")
        if data_args.max_num_patches is not None:
            raise ValueError("--teacher_name_or_path takes fixed-size pictures; --max_num_patches gives NaFlex patches")
        if training_args.class_weights is not None:
            raise ValueError("--class_weights and --teacher_name_or_path do not combine: choose one")
        model_args.distillation(source.config)  # the settings, checked
    else:
        flags = (*DISTILLATION_FLAGS, "teacher_logits_cache")
        given = [flag for flag in flags if getattr(model_args, flag) is not None]
        if given:
            raise ValueError(f"--{given[0]} sets how a student learns from a teacher: give --teacher_name_or_path")
    check_backbone_learning_rate(training_args, source.config)
    check_streaming(data_args, training_args)
    if lora_args.lora_rank is not None:
        with torch.device("meta"):  # the architecture only, to find the target layers in
            lora_targets(source.family.classifier_class(source.with_fields()), lora_args.lora_target)
    return source


def class_weights_for(training_args, data: TrainingData, column: str, num_labels: int):
    """`--class_weights balanced`: the weights of the training split's classes (`balanced_class_weights`); None
    without the flag."""
    if training_args.class_weights is None:
        return None
    if data.streaming:
        raise ValueError("--class_weights balanced counts the training images per class, which a stream cannot")
    return balanced_class_weights(data.train[column], num_labels)


def summary_line(metrics: dict) -> str:
    """The final evaluation in words: accuracy (and top-5), or for multi-label data mAP and F1."""
    if "eval_mAP" in metrics:
        return (
            f"mAP {metrics['eval_mAP']:.2%}, micro F1 {metrics['eval_micro_f1']:.2%}, macro F1 "
            f"{metrics['eval_macro_f1']:.2%}"
        )
    top5 = f", top-5 {metrics['eval_top5_accuracy']:.2%}" if "eval_top5_accuracy" in metrics else ""
    return f"accuracy {metrics['eval_accuracy']:.2%}{top5}"


def run_facts(
    source: ModelSource, config, data: TrainingData, data_args: DataArguments, training_args, has_teacher: bool
) -> RunFacts:
    """What the recipe may look at: the data, the model, the length of the run (a stream: the images its --max_steps
    feed, once)."""
    batch = global_batch_size(training_args)
    return RunFacts(
        num_train_images=training_args.max_steps * batch if data.streaming else len(data.train),
        num_labels=config.num_labels,
        image_size=data_args.image_size or config.image_size,
        model_type=source.family.model_type,
        from_checkpoint=source.from_checkpoint,
        has_teacher=has_teacher,
        num_train_epochs=1 if data.streaming else training_args.num_train_epochs,
        global_batch_size=batch,
        flips_keep_labels=not data_args.uses_embedded_digits,
        position_embeddings=hasattr(config, "position_embedding_init"),
        patch_projection=getattr(config, "patch_embedding_type", None) == "patch",
        max_steps=max(training_args.max_steps, 0),
        max_num_patches=data_args.max_num_patches,
    )


def save_merged(trainer, directory: str) -> None:
    """The LoRA adapters (their average, with an EMA) merged into the weights, written to `directory` as a plain
    hf_vit checkpoint with its processor."""
    if trainer.ema is not None:
        trainer.ema.copy_to(trainer.model)
    merged_model(trainer.model).save_pretrained(directory)
    trainer.processing_class.save_pretrained(directory)


def cached_epochs(training_args, data: TrainingData) -> int:
    """The epochs a run reads training views of (whole or begun): its epochs, or those its --max_steps reach."""
    if training_args.max_steps > 0:
        return math.ceil(training_args.max_steps * global_batch_size(training_args) / len(data.train))
    return math.ceil(training_args.num_train_epochs)


def open_logit_cache(model_args, data: TrainingData, labels, ingredients, image_processor, training_args):
    """The run's teacher-logit cache, keyed by what its logits depend on (the teacher, the training split, the
    labels, the augmentation, the pictures' size and normalisation, the seed), and a line on what it holds. A cache
    that lacks rows needs the teacher: one whose folder has gone is refused by name."""
    key = dict(
        teacher=model_args.teacher_name_or_path,
        teacher_fingerprint=teacher_fingerprint(model_args.teacher_name_or_path),
        data=[getattr(data.train, "_fingerprint", None), len(data.train)],
        labels=[str(label) for label in labels],
        augmentation=dict(sorted(ingredients.augmentation.items())),
        pictures=[list(processor_size(image_processor)), image_processor.image_mean, image_processor.image_std],
        seed=training_args.seed,
    )
    cache = LogitCache(
        model_args.teacher_logits_cache, key, len(data.train), len(labels), model_args.teacher_logits_top_k
    )
    epochs = cached_epochs(training_args, data)
    missing, rows = cache.missing(epochs), epochs * len(data.train)
    if missing and not model_args.teacher_on_disk():
        raise ValueError(
            f"--teacher_logits_cache {model_args.teacher_logits_cache} lacks {missing} of {rows} rows, and the "
            f"teacher {model_args.teacher_name_or_path!r} that would fill them is not there"
        )
    state = f"the teacher fills {missing} of {rows} rows" if missing else "the teacher is not loaded"
    line = (
        f"teacher logits: {model_args.teacher_logits_cache}, top {cache.top_k} of {len(labels)} classes, "
        f"{cache.bytes_per_picture()} bytes a picture and epoch, {epochs} epochs x {len(data.train)} pictures; {state}"
    )
    return cache, missing, line


def finetune(
    model_args: FinetuneModelArguments,
    data_args: DataArguments,
    training_args,
    recipe_args=None,
    lora_args=None,
    callbacks=(),
) -> dict:
    """Train, evaluate, save the model + processor + code + card + training curves, push when asked. Returns the
    eval metrics. Bad input raises a `UsageError` before any data is read (arguments) or anything is written.
    With `lora_args.lora_rank`, LoRA adapters and the head are trained and saved (PEFT's adapter files).
    `callbacks`: `TrainerCallback`s of your own, added to the Trainer's."""
    recipe_args, lora_args = recipe_args or RecipeArguments(), lora_args or LoraArguments()
    with usage_errors():  # the user's input, checked: arguments, then data, then the recipe for them
        source = check_arguments(model_args, data_args, training_args, recipe_args, lora_args)
        set_seed(training_args.seed)
        data = load_training_data(data_args, training_args.seed, training_args=training_args)
        label_feature = data.train.features[data_args.label_column_name]
        labels, multi_label = label_names(label_feature), is_multi_label(label_feature)
        has_teacher = model_args.teacher_name_or_path is not None
        if has_teacher and multi_label:
            raise ValueError("--teacher_name_or_path distills single-label classifiers; the data is multi-label")
        if has_teacher and model_args.teacher_on_disk():
            teacher_config = AutoConfig.from_pretrained(
                model_args.teacher_name_or_path, trust_remote_code=model_args.trust_remote_code
            )
            teacher_label_order(teacher_config, labels)
        # a checkpoint's image size stays its own here: its position embeddings are resampled after loading
        size = {} if source.from_checkpoint or data_args.image_size is None else {"image_size": data_args.image_size}
        if data_args.max_num_patches is not None:
            size["max_num_patches"] = data_args.max_num_patches
        config = source.with_fields(**label_fields(labels, multi_label), **size)
        training_args.resume_from_checkpoint = resolve_resume(training_args, labels)
        class_weights = class_weights_for(training_args, data, data_args.label_column_name, len(labels))
        facts = run_facts(source, config, data, data_args, training_args, has_teacher)
        ingredients = resolve_recipe(recipe_args, training_args, source.overrides, facts)
        ingredients = fit_to_training(
            ingredients,
            lora=lora_args.lora_rank is not None,
            sharded=fsdp_requested(training_args),
            streaming=data.streaming,
            multi_label=multi_label,
            naflex=data_args.max_num_patches is not None,
            batches_by_patches=data_args.train_patch_budgets is not None,
            replayed_views=model_args.teacher_logits_cache is not None,
        )
        apply_to_training(ingredients, training_args)
        apply_to_config(ingredients, config)
        recipe_summary = [f"recipe {recipe_args.recipe!r} for {facts.describe()}:", *ingredients.describe()]
        distillation = model_args.distillation(config) if has_teacher else None
        if distillation is not None:
            if hasattr(config, "distillation_type"):  # DeiT's own head learns from the teacher with these
                config.distillation_type, config.distillation_alpha = distillation.type, distillation.alpha
                config.distillation_tau = distillation.tau
            recipe_summary.append(
                f"distillation from {model_args.teacher_name_or_path}: {distillation.type}, alpha "
                f"{distillation.alpha:g}"
                + (f", tau {distillation.tau:g}" if distillation.type == "soft" else "")
                + " (the flags, else DeiT's defaults: hard, alpha 0.5)"
            )
        # every input checked: the run takes its output directory (made here, locked against a second run)
        lock = claim_output_dir(training_args.output_dir) if training_args.process_index == 0 else None
    if training_args.should_log:
        print("\n  ".join(recipe_summary))

    model = build_classifier(model_args, source, config, data_args.image_size)
    image_processor = build_image_processor(model_args, model)
    logit_cache, needs_teacher = None, has_teacher
    if model_args.teacher_logits_cache is not None:
        with usage_errors():
            logit_cache, needs_teacher, line = open_logit_cache(
                model_args, data, labels, ingredients, image_processor, training_args
            )
        recipe_summary.append(line)
        if training_args.should_log:
            print(line)
    if lora_args.lora_rank is not None:
        model = add_lora(model, lora_args)
        trainable, total = trainable_fraction(model)
        recipe_summary.append(
            f"LoRA rank {lora_args.lora_rank} on {lora_args.lora_target} (+ the head): {trainable:,} of "
            f"{total:,} parameters trained ({trainable / total:.2%})"
        )
        if training_args.should_log:
            print(recipe_summary[-1])
    teacher, teacher_inputs = None, None
    if needs_teacher:
        teacher_path = model_args.teacher_name_or_path
        teacher, teacher_inputs = load_teacher(teacher_path, model_args.trust_remote_code, model, image_processor)
    attach_transforms(data, image_processor, model.config.num_channels, data_args, **ingredients.augmentation)
    if logit_cache is not None:
        batch_size, drop_last = training_args.per_device_train_batch_size, training_args.dataloader_drop_last
        data.replay_views(batch_size, training_args.seed, drop_last)
    if data_args.train_patch_budgets:
        patches_per_batch = training_args.per_device_train_batch_size * data_args.max_num_patches
        cut = NaFlexPatches(image_processor).cut
        data.batch_by_patches(cut, data_args.train_patch_budgets, patches_per_batch, training_args.seed)
    dataset_name, dataset_id = describe_dataset(data_args)

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        **data.trainer_inputs(),
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
        teacher=teacher,
        teacher_inputs=teacher_inputs,
        distillation=distillation,
        logit_cache=logit_cache,
        class_weights=class_weights,
        ingredients=ingredients,
        card_template=source.family.card_template,
        recipe_summary=recipe_summary,
    )
    metrics = trainer.train_and_evaluate(training_args.resume_from_checkpoint, data.skipped)

    if trainer.is_world_process_zero():
        print(
            f"eval: {summary_line(metrics)}, loss {metrics['eval_loss']:.4f} on "
            f"{len(data.validation)} images of {dataset_name} after {data.length(training_args)}"
            + (f" ({metrics['train_skipped_unreadable_images']} unreadable images skipped)" if data.streaming else "")
            + f" -> {training_args.output_dir}"
        )
    trainer.publish(dataset_name, dataset_id)
    if lora_args.lora_rank is not None and lora_args.lora_merge and trainer.is_world_process_zero():
        save_merged(trainer, os.path.join(training_args.output_dir, "merged"))
    if lock is not None:
        lock.close()
    return metrics


main = command(parse_args, finetune)


if __name__ == "__main__":
    raise SystemExit(main())
