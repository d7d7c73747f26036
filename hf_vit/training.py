"""Trainer pieces: metrics, the model card hook, and the training-argument defaults of hf_vit's recipes."""

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import Trainer, TrainingArguments
from transformers.utils import logging
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from .cards import write_model_card
from .metrics import load_metric

logger = logging.get_logger(__name__)


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that train a small ViT from scratch well; every flag still works."""

    num_train_epochs: float = field(default=12.0, metadata={"help": "Total number of training epochs."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(
        default=0.02, metadata={"help": "Linear warmup: a step count, or a float in [0, 1) for a fraction of all steps."}
    )
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per process."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to save checkpoints: no, steps or epoch."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Keep at most this many checkpoints."})
    logging_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to log: no, steps or epoch."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the image column is consumed by the transforms."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loading worker processes."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin batches in memory (GPU only)."})
    cpu_threads_per_process: int | None = field(
        default=None,
        metadata={"help": "Torch threads per process when training on CPU (default: the cores split evenly "
                  "between processes; `accelerate launch` alone would pin 1)."},
    )  # fmt: skip

    def __post_init__(self):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if not has_accelerator():
            # `accelerate launch --multi_gpu --num_processes N` without an accelerator would otherwise start N
            # unrelated single-process runs; CPU mode makes them one data-parallel run over gloo.
            if not self.use_cpu and world_size > 1:
                logger.warning("No GPU found: running the %d processes data-parallel on CPU (gloo).", world_size)
                self.use_cpu = True
            threads = self.cpu_threads_per_process or max(1, (os.cpu_count() or 1) // world_size)
            if threads != torch.get_num_threads():
                logger.info("Training on CPU with %d torch threads per process.", threads)
                torch.set_num_threads(threads)
        super().__post_init__()


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def compute_metrics(eval_prediction) -> dict:
    """Top-1 and top-5 accuracy through hf_vit's local `evaluate` modules."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    accuracy = load_metric("accuracy").compute(predictions=np.argmax(logits, axis=-1), references=labels)
    top5 = load_metric("top5_accuracy").compute(predictions=logits, references=labels)
    return {**accuracy, **top5}


class ImageClassificationTrainer(Trainer):
    """`Trainer` whose model card (also the one `push_to_hub` uploads) is rendered from hf_vit's templates."""

    def create_model_card(self, dataset: str | None = None, **kwargs) -> None:
        if self.is_world_process_zero():
            write_model_card(self.args.output_dir, self.model, dataset=dataset, training_args=self.args,
                             log_history=self.state.log_history)  # fmt: skip
