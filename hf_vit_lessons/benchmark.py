"""Speed and memory of hf_vit against timm and transformers, measured in one process (scripts/benchmark.py).

Every comparison builds the same architecture three ways with random weights, warms each up, then times them in
interleaved rounds (A, B, C, then B, C, A, ...) so that a machine slowing down mid-run hurts all alike and none
always runs right after the same peer (their allocations shape the heap the next one finds), and reports
medians and ratios. Peak memory of a training step is measured in a fresh subprocess per model, above what the
model and optimizer hold (on CPU the resident set's high-water mark, reset just before the step; on CUDA
`max_memory_allocated`). Beside the models: the ONNX export in onnxruntime, the training input pipeline, and the
time `finetune.py` takes to its first steps on small and large imagefolders.
"""

import contextlib
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import compile_regions
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForImageClassification, DeiTForImageClassificationWithTeacher

from hf_vit.checkpoints import set_token_merging
from hf_vit.data import DataArguments, evaluation_loader, load_splits
from hf_vit.figures import new_figure, save_plot
from hf_vit.inference.classifier import load_classifier
from hf_vit.inference.evaluation import EvaluateArguments, evaluate_checkpoint
from hf_vit.interop.convert import from_timm
from hf_vit.interop.export import ONNX_FILE, export_model
from hf_vit.interop.quantization import quantize_export
from hf_vit.models.configuration_deit import DEIT_PRESETS
from hf_vit.models.configuration_vit import VIT_PRESETS
from hf_vit.processors import checkpoint_image_processor, naflex_image_processor
from hf_vit.registry import FAMILIES

from .loop import logits_of

try:
    import timm
    from timm.models.vision_transformer_hybrid import HybridEmbed
except ImportError as error:
    raise ImportError(
        "The benchmark compares hf_vit with timm, which is not installed: pip install 'hf_vit[bench]'"
    ) from error


class EveryToken(torch.nn.Module):
    """An hf_vit classifier made to compute every token of its last block, as timm and transformers do (by default
    it computes only the CLS row there, all its head reads): the like-for-like row of the table."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values: torch.Tensor):
        return self.classifier(pixel_values, output_hidden_states=True)


def ours(model_type: str, preset: str | None = None, **overrides) -> torch.nn.Module:
    """An hf_vit classifier of the registry's family `model_type`, from `preset` (default: the family's)."""
    family = FAMILIES[model_type]
    return family.classifier_class(family.config(preset, **overrides))


def reference(model_type: str, attn_implementation: str = "sdpa", **config) -> torch.nn.Module:
    """transformers' own image classifier of `model_type` (vit, swin, ...) with random weights."""
    config = AutoConfig.for_model(model_type, attn_implementation=attn_implementation, **config)
    return AutoModelForImageClassification.from_config(config)


def vit_implementations(preset: str, timm_model, num_labels: int = 1000) -> dict:
    """Builders of the ViT `preset` in hf_vit (computing the last block for the CLS row only, and for every token),
    timm (`timm_model`) and transformers (SDPA)."""
    return {
        "hf_vit": lambda: ours("hf_vit", preset, num_labels=num_labels),
        "hf_vit_every_token": lambda: EveryToken(ours("hf_vit", preset, num_labels=num_labels)),
        "timm": timm_model,
        "transformers": lambda: reference("vit", **VIT_PRESETS[preset], num_labels=num_labels),
    }


def converted_pair(timm_name: str) -> dict:
    """Builders of timm's `timm_name` and of hf_vit's conversion of it: the same architecture, option for option."""
    return {
        "hf_vit": lambda: from_timm(
            dict(architecture=timm_name, num_classes=1000), timm.create_model(timm_name, num_classes=1000).state_dict()
        ),
        "timm": lambda: timm.create_model(timm_name, num_classes=1000),
    }


# name: (image size, {implementation: builder}); every builder returns a module whose output has the logits.
MODELS = {
    "vit_s16": (
        224,
        {
            **vit_implementations("vit-small-patch16-224", lambda: timm.create_model("vit_small_patch16_224")),
            "transformers_eager": lambda: reference(
                "vit", "eager", **VIT_PRESETS["vit-small-patch16-224"], num_labels=1000
            ),
        },
    ),
    "vit_b16": (224, vit_implementations("vit-base-patch16-224", lambda: timm.create_model("vit_base_patch16_224"))),
    "vit_cifar": (
        32,
        vit_implementations(
            "vit-cifar-patch4-32",
            num_labels=10,
            timm_model=lambda: timm.models.vision_transformer.VisionTransformer(
                img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4, num_classes=10
            ),
        ),
    ),
    "deit_s_distilled": (
        224,
        {
            "hf_deit": lambda: ours("hf_deit", "deit-small-patch16-224", num_labels=1000),
            "timm": lambda: timm.create_model("deit_small_distilled_patch16_224"),
            "transformers": lambda: DeiTForImageClassificationWithTeacher(  # the two-head DeiT, not the Auto class's
                AutoConfig.for_model(
                    "deit", **DEIT_PRESETS["deit-small-patch16-224"], num_labels=1000, attn_implementation="sdpa"
                )
            ),
        },
    ),
    # The article's hybrid: ResNet-50 to its last stage (7x7 tokens + CLS), 6 blocks of width 768. transformers 5
    # has no hybrid ViT any more; timm builds the same one from its resnet50 and HybridEmbed.
    "hybrid_r50": (
        224,
        {
            "hf_vit_hybrid": lambda: ours("hf_vit_hybrid", "vit-hybrid-resnet50-224", num_labels=1000),
            "timm": lambda: timm.models.vision_transformer.VisionTransformer(
                img_size=224,
                patch_size=1,
                embed_dim=768,
                depth=6,
                num_heads=12,
                num_classes=1000,
                embed_layer=partial(
                    HybridEmbed, backbone=timm.create_model("resnet50", features_only=True, out_indices=(4,))
                ),
            ),
        },
    ),
    "dinov3_s16": (224, converted_pair("vit_small_patch16_dinov3")),  # rotary positions, 4 registers
    "eva02_s14": (224, converted_pair("eva02_small_patch14_224")),  # EVA rotary + absolute positions, fused SwiGLU
    "swin_t": (
        224,
        {
            "hf_swin": lambda: ours("hf_swin", "swin-tiny-patch4-window7-224", num_labels=1000),
            "timm": lambda: timm.create_model("swin_tiny_patch4_window7_224"),
            "transformers": lambda: reference("swin", num_labels=1000),
        },
    ),
}


def build(family: str, implementation: str, device="cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[family][1][implementation]().to(device)


def autocast(device: str, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_on(model, call: Callable, batch_size: int, mode: str, device="cpu", amp=None) -> Callable[[], None]:
    """One `call(model)` on a batch (inference), or one AdamW step on its cross-entropy (training: forward,
    backward, update)."""
    if mode == "inference":
        model.eval()

        def step():
            with torch.inference_mode(), autocast(device, amp):
                logits_of(call(model))
            synchronize(device)

        return step
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")  # fused: one kernel per step
    with torch.no_grad():
        num_labels = logits_of(call(model.eval())).shape[-1]
    model.train()
    labels = torch.randint(0, num_labels, (batch_size,), device=device)

    def step():
        with autocast(device, amp):
            loss = F.cross_entropy(logits_of(call(model)).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    return step


def inference_step(model, batch_size: int, image_size: int, device="cpu", amp=None) -> Callable[[], None]:
    pixels = torch.randn(batch_size, 3, image_size, image_size, device=device)
    return step_on(model, lambda model: model(pixels), batch_size, "inference", device, amp)


def training_step(model, batch_size: int, image_size: int, device="cpu", amp=None) -> Callable[[], None]:
    """One AdamW step on cross-entropy: forward, backward, update."""
    pixels = torch.randn(batch_size, 3, image_size, image_size, device=device)
    return step_on(model, lambda model: model(pixels), batch_size, "train", device, amp)


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 1, desc: str = "") -> dict:
    """Median seconds per call of each step, timed in interleaved rounds (each starting one step further along)
    after `warmup` calls each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    times = {name: [] for name in names}
    for round_index in tqdm(range(repeats), desc=desc, leave=False):
        first = round_index % len(names)
        for name in names[first:] + names[:first]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def compare_speed(
    family, implementations, mode, batch_size, repeats, device="cpu", amp=None, compile_ours=False
) -> list[dict]:
    """Images/s of each implementation of `family` (inference or training); rows with ratios to every peer."""
    image_size = MODELS[family][0]
    make_step = inference_step if mode == "inference" else training_step
    steps = {}
    for name in implementations:
        model = build(family, name, device)
        steps[name] = make_step(model, batch_size, image_size, device, amp)
        if compile_ours and name.startswith("hf_"):
            steps[f"{name}+compile"] = make_step(torch.compile(model), batch_size, image_size, device, amp)
    seconds = interleaved_medians(steps, repeats, desc=f"{family} {mode} b{batch_size}")
    return speed_rows(seconds, family, mode, batch_size, device, amp)


def speed_rows(seconds: dict, family, mode, batch_size, device, amp) -> list[dict]:
    """A row per implementation from its median seconds per step: images/s, and `hf_vit_ratio` (> 1: hf_vit is
    faster than this implementation)."""
    ours = next(value for name, value in seconds.items() if name.startswith("hf_"))
    return [
        dict(
            family=family,
            mode=mode,
            batch_size=batch_size,
            device=device,
            amp=amp or "fp32",
            implementation=name,
            images_per_s=batch_size / value,
            hf_vit_ratio=value / ours,
        )
        for name, value in seconds.items()
    ]


# timm's NaFlexViT with global average pooling at ViT-S/16's width, on a 14 x 14 position grid (224 px)
NAFLEX_S16 = dict(architecture="naflexvit_base_patch16_gap", embed_dim=384, num_heads=6, pos_embed_grid_size=(14, 14))
# the pictures' aspect ratios (height / width) of a NaFlex batch, in turn: documents, screens, strips, squares
ASPECT_RATIOS = (1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 2.0, 1 / 2, 3.0, 1 / 3)


def naflex_batch(batch_size: int, budget: int, patch_size: int = 16, device="cpu") -> dict:
    """A NaFlex batch as SigLIP 2's processor cuts it: random pictures of ASPECT_RATIOS in turn, each within
    `budget` patches, padded to it; with timm's `patch_coord` / `patch_valid` for the same patches."""
    processor = naflex_image_processor(patch_size, budget)
    pictures = []
    for index in range(batch_size):
        ratio = ASPECT_RATIOS[index % len(ASPECT_RATIOS)]
        height, width = round(224 * ratio**0.5), round(224 / ratio**0.5)
        pictures.append(Image.fromarray(np.random.default_rng(index).integers(0, 255, (height, width, 3), np.uint8)))
    inputs = {key: value.to(device) for key, value in processor(pictures, return_tensors="pt").items()}
    index = torch.arange(budget, device=device)[None]
    columns = inputs["spatial_shapes"][:, 1:]
    valid = inputs["pixel_attention_mask"].bool()
    coordinates = torch.stack([index // columns, index % columns], -1) * valid[..., None]
    return dict(ours=inputs, timm=dict(x=inputs["pixel_values"], patch_coord=coordinates, patch_valid=valid))


def naflex_speed(
    mode: str, batch_size: int, repeats: int, device="cpu", amp=None, budget: int | None = None, model=NAFLEX_S16
) -> list[dict]:
    """NaFlex against fixed-size images at the same patches per picture: timm's NaFlexViT (`model`: ViT-S/16 on a
    14 x 14 grid) and hf_vit's conversion of it, on images of the position grid's size (224 px: 196 patches) and on
    pictures of ASPECT_RATIOS cut within `budget` patches (default: as many as the grid) and padded to it. Rows:
    images/s, the mean patches a picture really has, and `fixed_size_ratio`: the NaFlex batch's images/s over the
    same implementation's on fixed-size images."""
    torch.manual_seed(0)
    architecture, model_args = model["architecture"], {k: v for k, v in model.items() if k != "architecture"}
    reference = timm.create_model(architecture, **model_args)
    models = dict(hf_vit=from_timm(dict(architecture=architecture, model_args=model_args), reference.state_dict()))
    models["timm"] = reference
    rows, columns = model["pos_embed_grid_size"]
    side, budget = rows * 16, budget or rows * columns
    batch = naflex_batch(batch_size, budget, device=device)
    pixels = torch.randn(batch_size, 3, side, columns * 16, device=device)
    steps = {}
    for name, network in models.items():
        network.to(device)
        steps[f"{name} fixed"] = step_on(network, lambda network: network(pixels), batch_size, mode, device, amp)
        naflex = batch[name if name == "timm" else "ours"]
        steps[f"{name} NaFlex"] = step_on(
            network, lambda network, naflex=naflex: network(**naflex), batch_size, mode, device, amp
        )
    seconds = interleaved_medians(steps, repeats, desc=f"naflex {mode} b{batch_size}")
    mean_patches = float(batch["ours"]["pixel_attention_mask"].sum(1).float().mean())
    return [
        dict(
            family=f"{architecture} {model_args}",
            mode=mode,
            batch_size=batch_size,
            device=device,
            amp=amp or "fp32",
            implementation=name.split(" ")[0],
            input=f"NaFlex <= {budget} patches" if name.endswith("NaFlex") else f"{side} x {columns * 16} images",
            mean_patches=round(mean_patches, 1) if name.endswith("NaFlex") else rows * columns,
            images_per_s=batch_size / value,
            fixed_size_ratio=seconds[name.replace("NaFlex", "fixed")] / value,
        )
        for name, value in seconds.items()
    ]


def forward_cost(model, pixels) -> int:
    """FLOPs of one forward pass of `model` on `pixels` (attention in plain matmuls, so that it is counted)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits_of(model.eval()(pixels))
    return counter.get_total_flops()


def logit_cache_speed(directory: str, repeats: int = 3, epochs: float = 2, images: int = 768) -> list[dict]:
    """The teacher-logit cache's worth: finetune's training time for the article's ViT on the digits, taught by a
    random hf_vit twice as wide (about 4x the student's forward cost, measured), computing the teacher's logits
    (filling a fresh cache) against reading them from a complete cache without loading the teacher; the two
    alternate, medians of `repeats`. Rows: run, median train seconds, eval accuracy, the speed-up, the cost ratio."""
    from hf_vit import HfViTConfig, HfViTForImageClassification
    from hf_vit.processors import make_image_processor
    from hf_vit.training.finetune import finetune
    from hf_vit.training.finetune import parse_args as finetune_args

    labels = {index: str(index) for index in range(10)}
    student = ours("hf_vit", "vit-cifar-patch4-32", num_labels=10)
    teacher_config = HfViTConfig.from_preset(
        "vit-cifar-patch4-32", hidden_size=256, intermediate_size=1024, id2label=labels
    )
    teacher_dir = os.path.join(directory, "teacher")
    HfViTForImageClassification(teacher_config).save_pretrained(teacher_dir)
    make_image_processor(32).save_pretrained(teacher_dir)
    pixels = torch.randn(1, 3, 32, 32)
    cost = forward_cost(HfViTForImageClassification(teacher_config), pixels) / forward_cost(student, pixels)

    def train(name: str, cache: str) -> tuple[float, float]:
        output_dir = os.path.join(directory, name)
        args = ["--output_dir", output_dir, "--teacher_name_or_path", teacher_dir, "--teacher_logits_cache", cache,
                "--num_train_epochs", str(epochs), "--max_train_samples", str(images), "--disable_tqdm", "true",
                "--save_strategy", "no", "--dataloader_num_workers", "0"]  # fmt: skip
        metrics = finetune(*finetune_args(args))
        with open(os.path.join(output_dir, "train_results.json"), encoding="utf-8") as f:
            return json.load(f)["train_runtime"], metrics["eval_accuracy"]

    seconds, accuracy = {"teacher computed": [], "cache read": []}, {}
    for round_index in range(repeats):  # round 0 fills cache0 first; then the order alternates
        fill = ("teacher computed", os.path.join(directory, f"cache{round_index}"))
        read = ("cache read", os.path.join(directory, "cache0"))
        for name, cache in [fill, read] if round_index % 2 == 0 else [read, fill]:
            value, accuracy[name] = train(f"{name.replace(' ', '_')}{round_index}", cache)
            seconds[name].append(value)
    computed = statistics.median(seconds["teacher computed"])
    return [
        dict(
            run=name,
            train_seconds=round(statistics.median(values), 2),
            eval_accuracy=accuracy[name],
            speedup=round(computed / statistics.median(values), 3),
            teacher_cost=round(cost, 2),
        )
        for name, values in seconds.items()
    ]


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; the most specific name first.
PEAK_BF16_TFLOPS = {"H200 NVL": 835.0, "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
GPU_FAMILIES = ("vit_b16", "vit_s16", "deit_s_distilled", "swin_t", "dinov3_s16")


def peak_tflops(device: str) -> float | None:
    """The accelerator's dense bf16 peak when it is in PEAK_BF16_TFLOPS, else None (no utilisation reported)."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def forward_flops(family: str) -> int:
    """Model FLOPs of one image's forward pass, counted on timm's model (every token of every block) with attention
    in plain matmuls so that it is counted too: the common yardstick of every implementation's utilisation."""
    model = build(family, "timm").eval()
    pixels = torch.randn(1, 3, MODELS[family][0], MODELS[family][0])
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits_of(model(pixels))
    return counter.get_total_flops()


def step_peak_mib(step: Callable[[], None], device: str) -> float | None:
    """Run `step` once (the warm-up that compiles) and return the memory it allocated above what was already
    held (CUDA only)."""
    if device != "cuda":
        step()
        return None
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    return (torch.cuda.max_memory_allocated() - held) / 2**20


def accelerator_speed(
    family, mode, batch_size, repeats, device="cuda", amp="bf16", compile_models=True, peak=None, implementations=None
) -> list[dict]:
    """Images/s, step peak memory and model FLOPs utilisation of every implementation of `family`, eager and (with
    `compile_models`) compiled by regions, with the seconds the compiling first step took beyond a steady one, timed
    interleaved in one process; `implementations` picks some of "ours", "timm"
    and "transformers". Training is forward, fp32 loss, backward and a
    (fused on CUDA) AdamW update, so utilisation counts 3x the forward FLOPs."""
    image_size = MODELS[family][0]
    make_step = inference_step if mode == "inference" else training_step
    steps, memory, first = {}, {}, {}
    for name in MODELS[family][1]:
        if name in ("hf_vit_every_token", "transformers_eager"):
            continue
        if implementations and ("ours" if name.startswith("hf_") else name) not in implementations:
            continue
        model = build(family, name, device)
        # compiled as --torch_compile trains: by regions, each repeated block compiled once
        variants = {name: model} | ({f"{name}+compile": compile_regions(model)} if compile_models else {})
        for variant, module in variants.items():
            steps[variant] = make_step(module, batch_size, image_size, device, amp)
            start = time.perf_counter()
            memory[variant] = step_peak_mib(steps[variant], device)
            first[variant] = time.perf_counter() - start
    seconds = interleaved_medians(steps, repeats, desc=f"{family} {mode} b{batch_size}")
    flops = forward_flops(family) * (1 if mode == "inference" else 3)
    rows = speed_rows(seconds, family, mode, batch_size, device, amp)
    for row in rows:
        variant = row["implementation"]
        row.update(
            compile_s=first[variant] - seconds[variant] if variant.endswith("+compile") else None,
            step_peak_mib=memory[variant],
            gflops_per_image=flops / 1e9,
            mfu=flops * row["images_per_s"] / (peak * 1e12) if peak else None,
        )
    return rows


SWIN_AT_SIZE = {
    "hf_swin": lambda size: ours("hf_swin", "swin-tiny-patch4-window7-224", num_labels=1000),
    "timm": lambda size: timm.create_model("swin_tiny_patch4_window7_224", img_size=size),
    # transformers' Swin keeps the window clamps of the first size it runs, so one model per size.
    "transformers": lambda size: reference("swin", image_size=size, num_labels=1000),
}


def swin_resolution_growth(implementations, sizes=(224, 448), batch_size=4, repeats=5) -> dict:
    """Per-image Swin-T inference seconds at each size, and the growth from the first size to the last (4x the
    pixels: 4x is linear cost, 16x quadratic)."""
    steps = {}
    for name in implementations:
        for size in sizes:
            torch.manual_seed(0)
            steps[(name, size)] = inference_step(SWIN_AT_SIZE[name](size), batch_size, size)
    seconds = interleaved_medians(steps, repeats, desc=f"swin_t at {sizes}")
    return {
        name: {f"seconds_per_image_{size}": seconds[(name, size)] / batch_size for size in sizes}
        | {"growth": seconds[(name, sizes[-1])] / seconds[(name, sizes[0])]}
        for name in implementations
    }


def peak_training_memory(
    family: str, implementation: str, batch_size: int, gradient_checkpointing: bool, device="cpu"
) -> float:
    """Peak memory (MiB) a training step adds on top of the model, measured in a fresh subprocess. A fixed glibc
    mmap threshold gives every tensor above 128 KiB its own mapping, unmapped when freed, so the resident set follows
    live tensors; with the default sliding threshold freed blocks stay resident and the peak varies by 2x between
    identical runs."""
    code = (
        "from hf_vit_lessons.benchmark import memory_probe; "
        f"memory_probe({family!r}, {implementation!r}, {batch_size}, {gradient_checkpointing}, {device!r})"
    )
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe for {implementation} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def checkpointing_memory(family: str, implementations, batch_size: int, device="cpu") -> list[dict]:
    """Per implementation: the training step's peak memory (MiB) without and with gradient checkpointing, and the
    fraction checkpointing saves."""
    probes = [(name, checkpointing) for name in implementations for checkpointing in (False, True)]
    peaks = {
        (name, checkpointing): peak_training_memory(family, name, batch_size, checkpointing, device)
        for name, checkpointing in tqdm(probes, desc=f"{family} b{batch_size} peak memory")
    }
    return [
        dict(
            implementation=name,
            peak_mib=peaks[(name, False)],
            checkpointed_peak_mib=peaks[(name, True)],
            reduction=1 - peaks[(name, True)] / peaks[(name, False)],
        )
        for name in implementations
    ]


def enable_gradient_checkpointing(model) -> None:
    if hasattr(model, "set_grad_checkpointing"):  # timm
        model.set_grad_checkpointing(True)
    else:
        model.gradient_checkpointing_enable()


def memory_probe(family, implementation, batch_size, gradient_checkpointing, device="cpu") -> None:
    """Print {"peak_mib": ...}: the peak of one training step above the memory held before it (model, optimizer
    state). A first step runs before, so AdamW's state exists and the measured step holds activations, gradients
    and temporaries only."""
    model = build(family, implementation, device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    step = training_step(model, batch_size, MODELS[family][0], device)
    step()
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = reset_peak_resident_memory()
        step()
        peak = resident_memory("VmHWM") - before
    print(json.dumps({"peak_mib": peak / 2**20}))


def resident_memory(field: str = "VmRSS") -> int:
    """Bytes of this process's resident set (`VmRSS`) or its high-water mark (`VmHWM`), from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_resident_memory() -> int:
    """Hand freed heap pages back to the OS, then reset the high-water mark to the current resident set (Linux:
    /proc/self/clear_refs); returns that resident set in bytes. Without the trim, a step would reuse memory the
    allocator kept from model construction and look smaller than it is."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return resident_memory("VmRSS")


def compiled_model(family: str, compilation: str, backend: str = "inductor", device="cpu") -> torch.nn.Module:
    """hf_vit's `family` eager, compiled whole (`torch.compile`) or by regions (`compile_repeated_blocks`: the
    blocks compiled in place, one graph they share, as `--torch_compile` trains)."""
    model = build(family, "hf_vit", device)
    if compilation == "whole model":
        return torch.compile(model, backend=backend)
    if compilation == "regional":
        model.compile_repeated_blocks(backend=backend)
    return model


def first_training_step_seconds(family: str, compilation: str, batch_size: int, backend: str = "inductor") -> float:
    """The seconds of a fresh model's first training step (compiling, for a compiled one), in this process: run it
    in a fresh one (`compile_cost`), so that nothing compiled before is reused."""
    torch._inductor.config.force_disable_caches = True
    model = compiled_model(family, compilation, backend)
    step = step_on(
        model, lambda model: model(torch.randn(batch_size, 3, *(MODELS[family][0],) * 2)), batch_size, "train"
    )
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


COMPILATIONS = ("eager", "whole model", "regional")


def compile_cost(
    family: str = "vit_b16", batch_size: int = 8, repeats: int = 3, device="cpu", amp=None, backend: str = "inductor"
) -> list[dict]:
    """hf_vit's training step eager, compiled whole and compiled by regions (`compiled_model`): the seconds the first
    step takes beyond a steady one, measured in fresh processes taken in turn (`repeats` each, medians; the
    label-finding forward `step_on` runs first compiles the inference graph, not timed), and the steady images/s,
    timed interleaved in this one."""
    firsts = {name: [] for name in COMPILATIONS}
    for _ in tqdm(range(repeats), desc=f"{family} first steps", leave=False):
        for name in COMPILATIONS:
            code = (
                "from hf_vit_lessons.benchmark import first_training_step_seconds as f; "
                f"print(f({family!r}, {name!r}, {batch_size}, {backend!r}))"
            )
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            firsts[name].append(float(result.stdout.split()[-1]))
    image_size = MODELS[family][0]
    steps = {
        name: training_step(compiled_model(family, name, backend, device), batch_size, image_size, device, amp)
        for name in COMPILATIONS
    }
    seconds = interleaved_medians(steps, repeats, desc=f"{family} compiled steps")
    return [
        dict(
            family=family,
            mode="train",
            batch_size=batch_size,
            compilation=name,
            first_step_s=statistics.median(firsts[name]),
            compile_s=statistics.median(firsts[name]) - seconds[name],
            images_per_s=batch_size / seconds[name],
            whole_model_step_ratio=seconds["whole model"] / seconds[name],
        )
        for name in COMPILATIONS
    ]


def graph_breaks(family: str, implementation: str) -> int:
    """Graph breaks `torch._dynamo.explain` finds in one inference forward (0: the whole model is one graph)."""
    model = build(family, implementation).eval()
    pixels = torch.randn(1, 3, MODELS[family][0], MODELS[family][0])
    with torch.no_grad():
        return torch._dynamo.explain(model)(pixels).graph_break_count


def token_merging_speed(counts, family: str = "vit_s16", batch_size: int = 8, repeats: int = 7, device="cpu", amp=None):
    """Inference images/s of hf_vit merging each of `counts` tokens per block (ToMe) against timm's same model, timed
    interleaved; rows with `speedup`, against hf_vit without merging (which must be among `counts`: 0)."""
    image_size = MODELS[family][0]
    timm_model = build(family, "timm", device)
    steps = {"timm": inference_step(timm_model, batch_size, image_size, device, amp)}
    for count in counts:
        model = build(family, next(iter(MODELS[family][1])), device)
        set_token_merging(model, count)
        steps[count] = inference_step(model, batch_size, image_size, device, amp)
    seconds = interleaved_medians(steps, repeats, desc=f"{family} token merging b{batch_size}")
    return [
        dict(
            family=family,
            batch_size=batch_size,
            implementation="timm" if name == "timm" else "hf_vit",
            token_merging=None if name == "timm" else name,
            images_per_s=batch_size / value,
            speedup=seconds[0] / value,
        )
        for name, value in seconds.items()
    ]


def token_merging_accuracy(
    model_name_or_path: str, counts, directory: str, batch_size: int = 64, repeats: int = 5, data_args=None, seed=42
) -> list[dict]:
    """A fine-tuned checkpoint at each of `counts` tokens merged per block: its accuracy on its evaluation split
    (`data_args`'s, split by the run's `seed`; default the digits') through `evaluate`, and its images/s on a batch
    of those pictures, timed interleaved."""
    data_args = data_args or DataArguments()
    config = AutoConfig.from_pretrained(model_name_or_path)
    processor = checkpoint_image_processor(model_name_or_path, config)
    split = load_splits(data_args, seed, evaluation_only=True)["validation"].select(range(batch_size))
    loader = evaluation_loader(split, processor, config.num_channels, data_args, batch_size)
    pixels = next(iter(loader))["pixel_values"]
    accuracy, steps = {}, {}
    for count in counts:  # one model each, so that their steps interleave
        output_dir = os.path.join(directory, str(count))
        arguments = EvaluateArguments(model_name_or_path, output_dir, seed=seed, token_merging=count)
        with contextlib.redirect_stdout(None):
            accuracy[count] = evaluate_checkpoint(arguments, data_args)["accuracy"]
        model, _ = load_classifier(model_name_or_path, token_merging=count)
        steps[count] = step_on(model, lambda model: model(pixels), batch_size, "inference")
    seconds = interleaved_medians(steps, repeats, desc="token merging accuracy")
    return [
        dict(
            model=model_name_or_path,
            token_merging=count,
            accuracy=accuracy[count],
            accuracy_change=accuracy[count] - accuracy[counts[0]],
            images_per_s=batch_size / seconds[count],
            speedup=seconds[counts[0]] / seconds[count],
        )
        for count in counts
    ]


def draw_token_merging(rows: list[dict], path: str) -> None:
    """The speed / accuracy curve of `token_merging_accuracy`'s rows: accuracy against speed-up, each point its r."""
    figure, axes = new_figure(figsize=(6, 4))
    speedups, accuracies = [row["speedup"] for row in rows], [100 * row["accuracy"] for row in rows]
    axes.plot(speedups, accuracies, marker="o")
    for row, x, y in zip(rows, speedups, accuracies):
        axes.annotate(f"r={row['token_merging']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set(xlabel="speed-up over r = 0 (images/s)", ylabel="accuracy (%)", title="token merging: speed and accuracy")
    save_plot(figure, path, axes)


def export_speed(batch_sizes=(1, 8), repeats: int = 7, family: str = "vit_s16") -> list[dict]:
    """Inference images/s of hf_vit's ONNX export (dynamic batch and size) in onnxruntime on the CPU, in fp32 and as
    its int8 copies (`export.py --quantize int8`: dynamic, and static calibrated on 16 random pictures), against the
    same model in PyTorch eager, timed interleaved; rows with each one's file size and its speed as a multiple of
    PyTorch's and of the fp32 export's."""
    import onnxruntime

    model = build(family, "hf_vit" if family.startswith("vit") else next(iter(MODELS[family][1]))).eval()
    image_size = MODELS[family][0]
    generator = torch.Generator().manual_seed(0)
    calibration = [{"pixel_values": torch.randn(1, 3, image_size, image_size, generator=generator).numpy()}] * 16
    sessions, sizes = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        export_model(model, directory)
        files = {"onnxruntime": os.path.join(directory, ONNX_FILE)}
        for name, inputs in (("onnxruntime int8 dynamic", None), ("onnxruntime int8 static", calibration)):
            files[name] = os.path.join(directory, f"{name.split()[-1]}.onnx")
            quantize_export(files["onnxruntime"], files[name], "int8", inputs)
        for name, path in files.items():
            sessions[name] = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            sizes[name] = os.path.getsize(path) / 1e6
    steps = {}
    for batch_size in batch_sizes:
        pixels = torch.randn(batch_size, 3, image_size, image_size).numpy()
        steps[("pytorch eager", batch_size)] = inference_step(model, batch_size, image_size)
        for name, session in sessions.items():
            steps[(name, batch_size)] = partial(session.run, None, {"pixel_values": pixels})
    seconds = interleaved_medians(steps, repeats, desc=f"{family} export")
    return [
        dict(
            family=family,
            mode="inference",
            batch_size=batch_size,
            implementation=name,
            file_mb=sizes.get(name),
            images_per_s=batch_size / seconds[(name, batch_size)],
            pytorch_ratio=seconds[("pytorch eager", batch_size)] / seconds[(name, batch_size)],
            fp32_onnx_ratio=seconds[("onnxruntime", batch_size)] / seconds[(name, batch_size)],
        )
        for name, batch_size in steps
    ]


def make_jpeg_imagefolder(
    directory: str, count: int = 256, size=(256, 320), num_classes: int = 4, seed: int = 0
) -> str:
    """An imagefolder of `count` JPEG photographs-to-be (smooth random colour fields with edges), `size` px, in
    `num_classes` class folders: what a 224 px training pipeline reads."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = os.path.join(directory, f"class{index % num_classes}")
        os.makedirs(folder, exist_ok=True)
        low = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3)).astype(np.uint8)
        image = Image.fromarray(low).resize(size[::-1], Image.BICUBIC)
        image.save(os.path.join(folder, f"{index}.jpg"), quality=90)
    return directory


def input_pipeline_speed(
    directory: str, workers=(0, 1, 2), batch_size: int = 16, repeats: int = 3, image_size: int = 224
) -> list[dict]:
    """Images/s of the training input pipeline on the imagefolder at `directory` (decode, DeiT's ImageNet
    augmentation at `image_size` px: RandomResizedCrop, flip, RandAugment 9, RandomErasing 0.25, then batching),
    with each number of data-loading workers (median of `repeats` passes after a warm one), and of the ViT-S/16
    training step (224 px) at the same batch size on the same machine."""
    from hf_vit.data import DataArguments, attach_transforms, collate, load_training_data
    from hf_vit.processors import make_image_processor

    data = load_training_data(DataArguments(train_dir=directory, train_val_split=0.05))
    attach_transforms(
        data,
        make_image_processor(image_size),
        3,
        DataArguments(),
        crop_scale_min=0.08,
        hflip_prob=0.5,
        rand_augment_magnitude=9,
        random_erasing_prob=0.25,
    )
    rows = []
    for count in workers:
        loader = torch.utils.data.DataLoader(
            data.train,
            batch_size=batch_size,
            shuffle=True,
            num_workers=count,
            persistent_workers=count > 0,
            collate_fn=collate,
        )
        seconds = []
        for _ in tqdm(range(repeats + 1), desc=f"input pipeline, {count} workers", leave=False):
            start = time.perf_counter()
            for _batch in loader:
                pass
            seconds.append(time.perf_counter() - start)
        rows.append(
            dict(
                stage="input pipeline",
                workers=count,
                batch_size=batch_size,
                images_per_s=len(data.train) / statistics.median(seconds[1:]),
            )
        )
    step = training_step(build("vit_s16", "hf_vit"), batch_size, MODELS["vit_s16"][0])
    seconds = interleaved_medians({"step": step}, max(repeats, 3), desc="ViT-S/16 training step")["step"]
    rows.append(
        dict(stage="ViT-S/16 training step", workers=None, batch_size=batch_size, images_per_s=batch_size / seconds)
    )
    for row in rows:
        row["times_the_step"] = row["images_per_s"] / rows[-1]["images_per_s"]  # > 1: the pipeline keeps up
    return rows


def time_to_first_steps(directory: str, counts=(1_000, 100_000), rounds: int = 2, steps: int = 3) -> list[dict]:
    """Seconds from the command to its end for `finetune.py --max_steps {steps}` (a fresh process: imports, data,
    model, the steps, an evaluation on 64 images) on imagefolders of `counts` 32 px JPEGs in 10 classes, streamed
    and map-style (every image checked first), the runs interleaved over `rounds`; medians."""
    folders = {
        count: make_jpeg_imagefolder(os.path.join(directory, f"images_{count}"), count, size=(32, 32), num_classes=10)
        for count in counts
    }
    seconds = {(count, streaming): [] for count in counts for streaming in (True, False)}
    for round_index in tqdm(range(rounds), desc="time to the first steps"):
        for (count, streaming), runs in seconds.items():
            output_dir = os.path.join(directory, f"run_{count}_{streaming}_{round_index}")
            command = [
                sys.executable,
                "-c",
                "from hf_vit.training.finetune import main; raise SystemExit(main())",
                "--train_dir",
                folders[count],
                "--output_dir",
                output_dir,
                "--max_steps",
                str(steps),
                "--per_device_train_batch_size",
                "16",
                "--max_eval_samples",
                "64",
                "--save_strategy",
                "no",
                "--disable_tqdm",
                "true",
                *(["--streaming"] if streaming else []),
            ]
            # a cache of its own: a map-style run must not find the previous one's prepared dataset
            env = {**os.environ, "HF_DATASETS_CACHE": os.path.join(output_dir, "datasets_cache")}
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env)
            runs.append(time.perf_counter() - start)
    return [
        dict(images=count, streaming=streaming, seconds=statistics.median(runs), runs=len(runs))
        for (count, streaming), runs in seconds.items()
    ]
