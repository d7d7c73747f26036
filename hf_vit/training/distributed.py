"""Where and on how many processes a run trains: accelerators, data-loading workers, data parallelism and FSDP.

has_accelerator() / default_workers(processes) / global_batch_size(args)
fsdp_launched() / fsdp_requested(args) / check_fsdp_version() / shard_on_cpu(accelerator) / whole_model(...)
unused_parameters(model)      what DDP must be told: the parameters a training step leaves without a gradient
"""

import inspect
import os

import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule


def default_workers(processes_on_machine: int) -> int:
    """Data-loading workers per training process: none when the model trains on the CPU (the input pipeline, well
    under the training step's cost, would take cores from it: the benchmark's `data` suite), else every core the
    process has but its own, at most 8."""
    if not has_accelerator():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // max(processes_on_machine, 1) - 1))


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def global_batch_size(training_args) -> int:
    """Images per optimizer step over all processes."""
    return (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )


def fsdp_launched() -> bool:
    """Whether `accelerate launch --use_fsdp` (or its config file) started this process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_requested(training_args) -> bool:
    """Whether the run is to be sharded with FSDP: `accelerate launch --use_fsdp`, or the Trainer's own `--fsdp`."""
    return fsdp_launched() or bool(training_args.fsdp)


def check_fsdp_version() -> None:
    """FSDP1 shards on accelerators only: asked for on a machine without one, it is refused by name."""
    if fsdp_launched() and not has_accelerator() and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError(
            "FSDP on CPU needs FSDP2 (accelerate launch --use_fsdp --fsdp_version 2): FSDP1 shards on accelerators only"
        )


def shard_on_cpu(accelerator) -> bool:
    """accelerate hands `--use_fsdp` to GPUs (and other accelerators) only: on CPU processes it would train
    data-parallel without a word. FSDP2 shards over CPU processes too (gloo), so switch accelerate to it there, with
    the FSDP settings the launcher exported. Returns whether it switched."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_launched():
        return False
    state.fsdp_plugin, state.distributed_type = FullyShardedDataParallelPlugin(), DistributedType.FSDP
    return True


def whole_model(sharded: torch.nn.Module, state_dict: dict) -> torch.nn.Module:
    """An unsharded model of `sharded`'s own class (FSDP2 subclasses it on the fly) holding `state_dict`: what
    `save_pretrained` should write, code files included."""
    model_class = next(cls for cls in type(sharded).__mro__ if FSDPModule not in cls.__mro__)
    model = model_class(sharded.config)
    model.load_state_dict(state_dict)
    return model


def hf_vit_model(model: torch.nn.Module) -> torch.nn.Module:
    """The hf_vit model itself, under a PEFT wrapper (LoRA) if there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unused_parameters(model: torch.nn.Module) -> list[str]:
    """The trainable parameters one training step of `model` leaves without a gradient (an attention-pooling head
    under a pretraining objective, say), found by a step on two random images of the config's size; the random state,
    the model's gradients and its buffers (BatchNorm statistics, which the step in training mode moves) are left as
    they were."""
    config = model.config
    height, width = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
    inputs = {"pixel_values": torch.randn(2, config.num_channels, height, width, device=model.device)}
    if "labels" in inspect.signature(hf_vit_model(model).forward).parameters:  # PEFT's forward takes **kwargs
        multi_label = getattr(config, "problem_type", None) == "multi_label_classification"  # BCE: (B, C) targets
        shape, dtype = ((2, config.num_labels), torch.float32) if multi_label else ((2,), torch.long)
        inputs["labels"] = torch.zeros(shape, dtype=dtype, device=model.device)
    was_training, saved = model.training, {name: p.grad for name, p in model.named_parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        model.train()
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        p.grad = saved[name]
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    model.train(was_training)
    return unused
