"""Where the jobs that only run a model (evaluate, predict, the demo, probe) run it: on the accelerator when there is
one, in bf16 where it computes in bf16, with batches read by data-loading workers into pinned memory.

    inference_device() -> torch.device         cuda when there is a GPU, else the CPU
    inference_precision(device)                autocast to bf16 on a GPU that supports it, else nothing
    loader_settings(device) -> dict            a DataLoader's num_workers and pin_memory for that device
    batch_inputs(batch, device) -> dict        a batch's model inputs (all but its labels) on that device
"""

import contextlib
import os

import torch

MAX_WORKERS = 8


def inference_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def inference_precision(device: torch.device):
    """bf16 autocast on a GPU with bf16 (weights stay as saved; softmax, norms and the scores stay fp32 under
    autocast's rules); full precision on the CPU, where bf16 is slower than fp32 on most cores."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loader_settings(device: torch.device) -> dict:
    """Workers that decode and transform while the GPU computes (the cores but one, at most `MAX_WORKERS`), and
    pinned batches; on the CPU the model needs the cores itself, so the batches are read in the process."""
    if device.type != "cuda":
        return dict(num_workers=0, pin_memory=False)
    return dict(num_workers=min(MAX_WORKERS, max(1, (os.cpu_count() or 2) - 1)), pin_memory=True)


def batch_inputs(batch: dict, device: torch.device) -> dict:
    """A collated batch's model inputs, every tensor but the labels (pixels, and NaFlex's mask and shapes), on
    `device` (copied without blocking from pinned memory)."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items() if key != "labels"}
