"""The Trainer subclasses: what hf_vit adds to transformers' `Trainer`, and what runs each step.

HfViTTrainer                   Trainer + the model's weight-decay groups, layer-wise and backbone learning rates,
                               FSDP on CPU, hf_vit's model cards
ImageClassificationTrainer     HfViTTrainer + the recipe's ingredients: batch mixing, repeated augmentation, EMA,
                               and teacher distillation
PretrainingTrainer             HfViTTrainer for masked-image-modeling models (the loss is the metric)
"""

import inspect
import json
import os
import shutil
from functools import partial

import torch
from accelerate.utils import TorchDynamoPlugin
from datasets import IterableDataset
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, seed_worker, sort_checkpoints
from transformers.utils import logging

from ..cards import CURVES_FILE, plot_training_curves, write_model_card
from .distributed import check_fsdp_version, has_accelerator, hf_vit_model, shard_on_cpu, unused_parameters, whole_model
from .feature_distillation import backbone_features
from .logit_cache import LogitCache
from .recipes import TRAINING_INGREDIENTS, Ingredients
from .regularisation import (
    BatchMixer,
    Distillation,
    EMACallback,
    ModelEMA,
    RepeatedAugmentationSampler,
    teacher_label_order,
    weighted_loss,
)

logger = logging.get_logger(__name__)


TRAINER_STATE = "trainer_state.json"  # the last file the Trainer writes into a checkpoint: there, the save was whole


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint of `output_dir` with the most steps whose save finished (a run killed while saving leaves one
    without `TRAINER_STATE`), or None."""
    whole = [path for path in sort_checkpoints(output_dir) if os.path.isfile(os.path.join(path, TRAINER_STATE))]
    return whole[-1] if whole else None


def resolve_resume(training_args, labels: list[str] | None = None) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names, checked before any work: `True` is the output directory's
    last whole checkpoint (`last_complete_checkpoint`); a path must be a whole checkpoint; with `labels`, its classes
    must be the data's. None when the run starts afresh."""
    resume = training_args.resume_from_checkpoint
    if resume is None or resume is False or str(resume).lower() == "false":
        return None
    if str(resume).lower() == "true":
        path = last_complete_checkpoint(training_args.output_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint True: {training_args.output_dir!r} holds no whole checkpoint to resume"
            )
    else:
        path = resume
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--resume_from_checkpoint {path!r}: no such checkpoint directory")
        if not os.path.isfile(os.path.join(path, TRAINER_STATE)):
            raise ValueError(
                f"--resume_from_checkpoint {path!r} is not a whole checkpoint (no {TRAINER_STATE}: was its save cut "
                "short?); resume from an earlier one"
            )
    config = os.path.join(path, "config.json")  # an FSDP checkpoint holds shards without it: nothing to compare
    if labels is not None and os.path.isfile(config):
        with open(config, encoding="utf-8") as file:
            id2label = json.load(file).get("id2label", {})
        saved = [id2label[key] for key in sorted(id2label, key=int)]
        if saved != list(labels):
            raise ValueError(
                f"--resume_from_checkpoint {path!r} was trained on the classes {saved[:10]}, the data has "
                f"{list(labels)[:10]}: resume with the data of that run"
            )
    return path


def layer_decay_scales(model: torch.nn.Module, decay: float) -> dict[str, float]:
    """{parameter name: learning-rate scale}: decay^(layers - 1 - layer) by the layers the model declares
    (`layer_ids()`), so the head learns at the full rate."""
    hf_model = hf_vit_model(model)
    if not hasattr(hf_model, "layer_ids"):
        raise ValueError(f"layer_decay needs a model made of transformer blocks; {type(hf_model).__name__} has none")
    ids, num_layers = hf_model.layer_ids()
    scale = {id(param): decay ** (num_layers - 1 - ids[name]) for name, param in hf_model.named_parameters()}
    return {name: scale[id(param)] for name, param in model.named_parameters()}


class HfViTTrainer(Trainer):
    """`Trainer` for hf_vit models.

    - weight decay skips biases, norms, position embeddings and prefix tokens;
    - data-parallel runs search for unused parameters only when the model has some (`unused_parameters`);
    - every process reads its own share of a streamed (`datasets.IterableDataset`) training set;
    - `accelerate launch --use_fsdp --fsdp_version 2` shards parameters, gradients and optimizer state on CPU
      processes too (`shard_on_cpu`); checkpoints are FSDP's sharded ones, the final model one whole file;
    - `layer_decay` < 1 lowers each layer's learning rate with its distance from the head (`layer_ids`);
    - `args.backbone_learning_rate` (where the arguments have it) gives a hybrid's backbone its own learning rate;
    - `--torch_compile` compiles the model's repeated blocks in place (regional compilation, one graph they share),
      unless `torch_compile_whole_model` (accelerate then compiles the whole model);
    - the model card (also the one `push_to_hub` uploads) comes from hf_vit's `card_template`, with the
      recipe's choices (`recipe_summary`: one line each) and `card_fields` for the template.
    """

    def __init__(
        self,
        model=None,
        args=None,
        *positional,
        layer_decay=1.0,
        card_template=None,
        recipe_summary=None,
        card_fields=None,
        **kwargs,
    ):
        if args is not None and model is not None and args.world_size > 1 and args.ddp_find_unused_parameters is None:
            # DDP's search for unused parameters costs a pass over the graph every step: ask the model instead
            args.ddp_find_unused_parameters = bool(unused_parameters(model))
        if args is not None and isinstance(kwargs.get("train_dataset"), IterableDataset):
            # each process reads its own share of a stream, rather than the first one reading for all
            args.accelerator_config.dispatch_batches = False
        if args is not None and not has_accelerator() and hasattr(args, "cpu_threads"):
            # the cores split between the processes (`accelerate launch` alone would leave each with one)
            torch.set_num_threads(args.cpu_threads)
        # regional compilation (--torch_compile without --torch_compile_whole_model): the model's repeated blocks
        whole = getattr(args, "torch_compile_whole_model", False)
        self.compiled_blocks = (
            args is not None
            and args.torch_compile
            and not whole
            and hasattr(hf_vit_model(model), "compile_repeated_blocks")
        )
        super().__init__(model, args, *positional, **kwargs)
        if self.compiled_blocks:
            options = dict(backend=self.args.torch_compile_backend or "inductor", mode=self.args.torch_compile_mode)
            hf_vit_model(self.model).compile_repeated_blocks(**options)
        self.layer_decay = layer_decay
        self.card_template, self.recipe_summary, self.card_fields = card_template, recipe_summary, card_fields

    def _build_accelerator_args(self, **kwargs) -> dict:
        """The Trainer's; accelerate compiles nothing where the model's own blocks are compiled (`__init__`)."""
        accelerator_args = super()._build_accelerator_args(**kwargs)
        if self.compiled_blocks:
            accelerator_args["dynamo_plugin"] = TorchDynamoPlugin(backend="no")
        return accelerator_args

    def create_accelerator_and_postprocess(self):
        check_fsdp_version()
        super().create_accelerator_and_postprocess()
        if shard_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True

    def save_model(self, output_dir=None, _internal_call=False):
        """The Trainer's; the final model of a sharded run (FSDP) is gathered into one whole checkpoint."""
        final = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if not (self.is_fsdp_enabled and final):
            return super().save_model(output_dir, _internal_call)
        # every process takes part in the gather; the first one receives the whole tensors
        state_dict = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.args.should_save:
            sharded, self.model = self.model, whole_model(self.accelerator.unwrap_model(self.model), state_dict)
            try:  # the Trainer's own save (weights, config, code, processor, arguments) of an unsharded copy
                self._save(self.args.output_dir)
            finally:
                self.model = sharded

    def get_decay_parameter_names(self, model) -> list[str]:
        """The Trainer's (no biases, no norms), without 1-D parameters and what the model declares
        (`no_weight_decay()`: tokens, position embeddings, Swin's relative position bias tables)."""
        hf_model = hf_vit_model(model)
        declared = hf_model.no_weight_decay() if hasattr(hf_model, "no_weight_decay") else ()  # a CNN teacher has none
        no_decay = {id(hf_model.get_parameter(name)) for name in declared}
        parameters = dict(model.named_parameters())
        return [
            name
            for name in super().get_decay_parameter_names(model)
            if parameters[name].ndim > 1 and id(parameters[name]) not in no_decay
        ]

    def learning_rates(self, model) -> dict[int, float]:
        """{id(parameter): peak learning rate} for the parameters that do not learn at `args.learning_rate`: a
        hybrid's backbone at `args.backbone_learning_rate`, every layer at its `layer_decay` scale."""
        rates = {}
        if self.layer_decay != 1.0:
            scales = layer_decay_scales(model, self.layer_decay)
            rates = {id(param): self.args.learning_rate * scales[name] for name, param in model.named_parameters()}
        if getattr(self.args, "backbone_learning_rate", None) is not None:
            backbone = hf_vit_model(model).backbone_parameters()
            if not backbone:
                raise ValueError(
                    f"--backbone_learning_rate needs a model with a CNN backbone (hf_vit_hybrid), not "
                    f"{model.config.model_type}"
                )
            rates.update(dict.fromkeys(map(id, backbone), self.args.backbone_learning_rate))
        return rates

    def create_optimizer(self, model=None):
        """The Trainer's optimizer (its weight-decay groups), each group split by the parameters' own learning
        rates (`learning_rates`); the scheduler scales every group alike."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        optimizer = super().create_optimizer(model)
        rates = self.learning_rates(model)
        if rates:
            groups = []
            for group in optimizer.param_groups:
                by_rate = {}
                for param in group["params"]:
                    by_rate.setdefault(rates.get(id(param), group["lr"]), []).append(param)
                groups += [{**group, "params": params, "lr": lr} for lr, params in by_rate.items()]
            optimizer.param_groups.clear()
            for group in groups:
                optimizer.add_param_group(group)
        return optimizer

    def saved_model(self) -> torch.nn.Module:
        """The model the run saves (and its card describes)."""
        return self.model

    def create_model_card(self, dataset: str | None = None, dataset_id: str | None = None, **kwargs) -> None:
        """README.md (hf_vit's card: `dataset` names the data, `dataset_id` is its Hub id if it has one) and the
        training curves it shows, in the output directory."""
        if self.card_template is None:
            raise ValueError("No card_template was given to the trainer: it writes hf_vit model cards only")
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            plot_training_curves(self.state.log_history, os.path.join(self.args.output_dir, CURVES_FILE))
            load_id = (self.args.hub_model_id if self.args.push_to_hub else None) or self.args.output_dir
            write_model_card(
                self.args.output_dir,
                self.saved_model(),
                self.card_template,
                dataset=dataset,
                dataset_id=dataset_id,
                training_args=self.args,
                log_history=self.state.log_history,
                load_id=load_id,
                recipe=self.recipe_summary,
                curves=CURVES_FILE,
                extra_fields=self.card_fields,
            )

    def remove_previous_checkpoints(self) -> None:
        """Remove the checkpoints an earlier run left in the output directory (`--overwrite_output_dir`), so that they
        can neither be resumed nor counted against `save_total_limit` with this run's."""
        if not self.is_world_process_zero() or not os.path.isdir(self.args.output_dir):
            return
        for name in sorted(os.listdir(self.args.output_dir)):
            path = os.path.join(self.args.output_dir, name)
            if name.startswith(PREFIX_CHECKPOINT_DIR) and os.path.isdir(path):
                logger.warning("--overwrite_output_dir: removing the earlier run's %s", path)
                shutil.rmtree(path)

    def train_and_evaluate(self, resume_from_checkpoint=None, skipped=None) -> dict:
        """Train, save the model, evaluate; log and save the train and eval metrics and the trainer state. Returns the
        eval metrics. `skipped`: the count of unreadable images a stream skipped (a `multiprocessing.Value` per
        process), summed over the processes into the metrics as `train_skipped_unreadable_images`."""
        if self.args.overwrite_output_dir and not resume_from_checkpoint:
            self.remove_previous_checkpoints()
        train_result = self.train(resume_from_checkpoint=resume_from_checkpoint)
        self.save_model()
        if skipped is not None:
            total = self.accelerator.reduce(torch.tensor(skipped.value, device=self.args.device), reduction="sum")
            train_result.metrics["train_skipped_unreadable_images"] = int(total)
        self.log_metrics("train", train_result.metrics)
        self.save_metrics("train", train_result.metrics)
        metrics = self.evaluate()
        self.log_metrics("eval", metrics)
        self.save_metrics("eval", metrics)
        self.save_state()
        if skipped is not None:
            metrics["train_skipped_unreadable_images"] = train_result.metrics["train_skipped_unreadable_images"]
        return metrics

    def publish(self, dataset: str, dataset_id: str | None) -> None:
        """Push the output directory with its card to the Hub when `args.push_to_hub`, else write the card there."""
        if self.args.push_to_hub:
            self.push_to_hub(dataset=dataset, dataset_id=dataset_id)
        else:
            self.create_model_card(dataset=dataset, dataset_id=dataset_id)


class PretrainingTrainer(HfViTTrainer):
    """`HfViTTrainer` for masked-image-modeling models: there are no labels, and evaluation reports the
    reconstruction loss (`eval_loss`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.can_return_loss = True  # the Trainer computes an eval loss without labels only when told so
        # Evaluation keeps the loss only: the reconstructions (and MAE's masks) of a whole evaluation set would not fit
        # in memory (ImageNet-val: ~30 GB).
        self.args.prediction_loss_only = True


class FeatureDistillationTrainer(PretrainingTrainer):
    """`PretrainingTrainer` for feature distillation (`feature_distillation.FeatureDistiller`): the frozen `teacher`
    computes its features of every batch after `teacher_inputs` re-expresses it for it, the student learns to
    predict them; only the student is saved (its projection heads are not part of it, so there are no intermediate
    checkpoints to resume from)."""

    def __init__(self, model=None, args=None, *positional, teacher=None, teacher_inputs=None, **kwargs):
        if args is not None and args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = False  # every weight of the student and its heads learns
        super().__init__(model, args, *positional, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.teacher_inputs = teacher_inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        with torch.no_grad(), self.accelerator.autocast():
            pooled, features = backbone_features(self.teacher, self.teacher_inputs(pixel_values))
        outputs = model(pixel_values, pooled, features)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def saved_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model).student

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        self.saved_model().save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))


class LogitCacheCallback(TrainerCallback):
    """Writes this process's new rows of the teacher-logit cache when an epoch ends and when training stops."""

    def __init__(self, cache: LogitCache, rank: int):
        self.cache, self.rank = cache, rank

    def on_epoch_end(self, args, state, control, **kwargs):
        self.cache.flush(self.rank)

    def on_train_end(self, args, state, control, **kwargs):
        self.cache.flush(self.rank)


class ImageClassificationTrainer(HfViTTrainer):
    """`HfViTTrainer` for hf_vit classifiers, with the recipe's `ingredients` (`recipes.Ingredients`; default: none)
    whole:

    - Mixup / CutMix / label smoothing on training batches (`BatchMixer`);
    - repeated augmentation > 1: `RepeatedAugmentationSampler`;
    - an `ema_decay` above 0: evaluation and the saved model use the averaged weights (`ModelEMA`);
    - a `layer_decay` below 1: each layer's learning rate lowered with its distance from the head;
    - a frozen `teacher` (any image classifier, its classes matched to the student's by name) computes logits on
      the same (augmented, mixed) images after `teacher_inputs` re-expresses them for it: DeiT's distillation head
      learns from them (its config's settings), any other student through `distillation` (`Distillation`);
    - `class_weights` (num_labels,): the loss weighs each class (`regularisation.weighted_loss`);
    - a `train_batch_sampler` (`data.batching`: NaFlex batches filled by patches, or the (index, epoch) batches of
      replayable views) draws the training batches;
    - a `logit_cache` (`LogitCache`) serves the teacher's logits of replayable views it holds, and keeps those the
      teacher computes.

    The optimisation ingredients (learning rate, weight decay, warmup) are the arguments' (`recipes.apply_to_training`
    writes them there).
    """

    def __init__(
        self,
        *args,
        ingredients: Ingredients | None = None,
        teacher=None,
        teacher_inputs=None,
        distillation: Distillation | None = None,
        logit_cache: LogitCache | None = None,
        class_weights: torch.Tensor | None = None,
        train_batch_sampler=None,
        **kwargs,
    ):
        ingredients = ingredients or Ingredients.off()
        self.train_batch_sampler = train_batch_sampler
        super().__init__(*args, layer_decay=ingredients.layer_decay, **kwargs)
        if class_weights is not None and teacher is not None:
            raise ValueError("class weights and a teacher's distillation loss do not combine: choose one")
        self.class_weights = class_weights
        self.teacher, self.teacher_order = None, None
        # DeiT learns from the teacher with its own head (its config's settings); any other student through `loss`
        self.distillation = distillation or Distillation()
        self.own_distillation_head = "teacher_logits" in inspect.signature(hf_vit_model(self.model).forward).parameters
        if teacher is not None:
            config = self.model.config
            order = teacher_label_order(teacher.config, [config.id2label[i] for i in range(config.num_labels)])
            self.teacher_order = torch.tensor(order, device=self.args.device)
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.teacher_inputs = teacher_inputs or (lambda pixel_values: pixel_values)
        self.logit_cache = logit_cache
        if logit_cache is not None:  # each epoch's new rows written when it ends (and when training stops)
            self.add_callback(LogitCacheCallback(logit_cache, self.args.process_index))
        unset = [name for name in TRAINING_INGREDIENTS if getattr(self.args, name) is None]
        if unset:
            raise ValueError(
                f"{unset} unset: give them, or let hf_vit.training.recipes.resolve_recipe choose them first"
            )
        mixer = BatchMixer(
            self.model.config.num_labels,
            ingredients.mixup_alpha,
            ingredients.cutmix_alpha,
            ingredients.mixup_switch_prob,
            ingredients.label_smoothing,
            ingredients.mixup_prob,
        )
        self.batch_mixer = mixer if mixer.active else None
        self.repeated_augmentation = ingredients.repeated_augmentation
        self.ema = None
        if ingredients.ema_decay:
            self.ema = ModelEMA(self.model, ingredients.ema_decay)
            self.add_callback(EMACallback(self.ema))

    def get_train_dataloader(self):
        if self.train_batch_sampler is None:
            return super().get_train_dataloader()
        args = self.args
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_sampler=self.train_batch_sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        return self.accelerator.prepare(loader)  # shards the batches (whole, each its size) across the processes

    def _get_train_sampler(self, train_dataset=None):
        if self.repeated_augmentation > 1:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return RepeatedAugmentationSampler(
                len(dataset), self._train_batch_size, self.repeated_augmentation, self.args.seed
            )
        return super()._get_train_sampler(train_dataset)

    def teacher_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's (B, num_labels) logits on the student's (augmented, mixed) batch, its classes in the
        student's order, in the student's precision (accelerate's autocast wraps only the model it prepared)."""
        with torch.no_grad(), self.accelerator.autocast():
            return self.teacher(self.teacher_inputs(pixel_values)).logits[:, self.teacher_order]

    def teaching(self, pixel_values: torch.Tensor, keys) -> torch.Tensor:
        """The teacher's logits for a training batch: from the cache where it holds every row of the batch's (epoch,
        index) `keys`, else from the teacher (and then kept in the cache)."""
        cached = None if self.logit_cache is None else self.logit_cache.lookup(*keys)
        if cached is not None:
            return cached.to(pixel_values.device)
        if self.teacher is None:
            raise RuntimeError("The teacher-logit cache lacks rows of this batch, and the run has no teacher")
        logits = self.teacher_logits(pixel_values)
        if self.logit_cache is not None:
            self.logit_cache.store(*keys, logits)
        return logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_logits = None
        inputs = dict(inputs)
        keys = inputs.pop("epoch", None), inputs.pop("example_index", None)  # replayable views' (`SeededViews`)
        if model.training:
            if self.batch_mixer is not None:
                inputs["pixel_values"], inputs["labels"] = self.batch_mixer(inputs["pixel_values"], inputs["labels"])
            if self.teacher is not None or self.logit_cache is not None:
                teacher_logits = self.teaching(inputs["pixel_values"], keys)
            if self.own_distillation_head and teacher_logits is not None:  # DeiT: its loss takes them
                inputs["teacher_logits"], teacher_logits = teacher_logits, None
        if self.class_weights is None and teacher_logits is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        if teacher_logits is not None:
            loss = self.distillation.loss(outputs.logits, labels, teacher_logits, self.model.config)
        else:
            multi_label = self.model.config.problem_type == "multi_label_classification"
            loss = weighted_loss(outputs.logits, labels, self.class_weights, multi_label)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.applied_to(self.model):
            return super().evaluate(*args, **kwargs)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """The Trainer's, restoring the EMA saved in the checkpoint it resumes from."""
        if resume_from_checkpoint is True or resume_from_checkpoint == "True":
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No whole checkpoint found in the output directory ({self.args.output_dir})")
        if self.ema is not None and resume_from_checkpoint:
            self.ema.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        final = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if self.ema is None:
            return super().save_model(output_dir, _internal_call)
        if not final:  # a checkpoint: the trained weights and, beside them, the average, for resuming
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                self.ema.save(output_dir)
            return
        with self.ema.applied_to(self.model):
            return super().save_model(output_dir, _internal_call)
