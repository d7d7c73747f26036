"""Benchmark hf_vit against timm and transformers: images/s (inference and training), the Swin resolution growth,
training-step peak memory with and without gradient checkpointing, torch.compile, the ONNX export in
onnxruntime against PyTorch eager, the input pipeline, and the time to the first training steps.

    python scripts/benchmark.py                       # CPU fp32, every suite but compile, export, data and startup
    python scripts/benchmark.py --suite compile       # ViT-B/16's training compiled whole and by regions; graph breaks
    python scripts/benchmark.py --suite export        # ViT-S/16 in onnxruntime, fp32 and int8, vs PyTorch eager
    python scripts/benchmark.py --suite data          # the 224 px input pipeline at 0, 1, 2 workers vs a ViT-S/16 step
    python scripts/benchmark.py --suite startup       # finetune.py's first steps on 1,000 and 100,000 images
    python scripts/benchmark.py --suite naflex        # NaFlex batches against 224 px images at 196 patches a picture
    python scripts/benchmark.py --suite logit_cache   # a student's training, teacher computed against cache read
    python scripts/benchmark.py --suite token_merging --token_merging 0 4 8 13 [--model_name_or_path runs/digits-vit]
        # ViT-S/16 and DeiT-S at batch 8 merging tokens (ToMe), against timm; with a fine-tuned checkpoint, its
        # accuracy on its evaluation data beside its speed, per count (with --json, a picture of the curve beside it)
    python scripts/benchmark.py --suite gpu --device cuda --amp bf16 --json gpu.json   # the accelerator suite
    python scripts/benchmark.py --suite gpu --smoke   # the same code on the CPU, tiny (the test suite runs this)
"""

import argparse
import json
import os
import platform
import tempfile

import torch

from hf_vit_lessons import benchmark
from hf_vit_lessons.report import markdown_table

SUITES = (
    "inference",
    "train",
    "swin",
    "memory",
    "compile",
    "export",
    "data",
    "startup",
    "naflex",
    "logit_cache",
    "token_merging",
    "gpu",
)
OPT_IN = ("compile", "export", "data", "startup", "naflex", "logit_cache", "token_merging", "gpu")  # when named


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=SUITES, default=[s for s in SUITES if s not in OPT_IN])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (default: fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed rounds; medians are reported")
    parser.add_argument("--json", default=None, help="also write every figure to this file, as each suite ends")
    merging = parser.add_argument_group("the token_merging suite")
    merging.add_argument("--token_merging", nargs="+", type=int, default=[0, 4, 8, 13], help="tokens merged per block")
    merging.add_argument("--model_name_or_path", default=None, help="a fine-tuned checkpoint to measure accuracy on")
    merging.add_argument("--seed", type=int, default=42, help="the checkpoint's run's --seed (its evaluation split)")
    gpu = parser.add_argument_group("the gpu suite")
    gpu.add_argument("--families", nargs="+", choices=list(benchmark.MODELS), default=list(benchmark.GPU_FAMILIES))
    gpu.add_argument("--modes", nargs="+", choices=["train", "inference"], default=["train", "inference"])
    gpu.add_argument("--implementations", nargs="+", choices=["ours", "timm", "transformers"], default=None)
    gpu.add_argument("--batch_size", type=int, default=256)
    gpu.add_argument("--peak_tflops", type=float, default=None, help="the device's peak (default: known GPUs)")
    gpu.add_argument("--no_compile", action="store_true", help="eager only")
    gpu.add_argument("--smoke", action="store_true", help="CPU-sized: the CIFAR ViT, batch 2, one round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.families, args.batch_size, args.repeats = ["vit_cifar"], 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    speed = dict(repeats=args.repeats, device=args.device, amp=args.amp)
    results = dict(
        torch=torch.__version__,
        machine=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        device=args.device,
        amp=args.amp or "fp32",
    )
    rows = []

    def add(suite: str, new_rows: list[dict]) -> None:
        rows.extend(dict(row, suite=suite) for row in new_rows)
        save()

    def save() -> None:  # after every comparison, so a run cut short by its time limit keeps what it measured
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results | {"speed": rows}, f, indent=2)

    if "gpu" in args.suite:
        peak = args.peak_tflops or benchmark.peak_tflops(args.device)
        results["peak_tflops"] = peak
        for family in args.families:
            for mode in args.modes:
                try:
                    new = benchmark.accelerator_speed(
                        family,
                        mode,
                        args.batch_size,
                        args.repeats,
                        args.device,
                        args.amp,
                        not args.no_compile,
                        peak,
                        args.implementations,
                    )
                except Exception as error:  # one family failing (a peer library too old for it) ends none of the rest
                    print(f"{family} {mode} failed: {error!r}", flush=True)
                    results.setdefault("failed", []).append(f"{family} {mode}: {error!r}")
                    continue
                add("gpu", new)
                columns = [
                    "family",
                    "mode",
                    "implementation",
                    "images_per_s",
                    "hf_vit_ratio",
                    "step_peak_mib",
                    "mfu",
                    "compile_s",
                ]
                print(markdown_table(new, columns), flush=True)

    if "inference" in args.suite:
        for family in ("vit_s16", "deit_s_distilled", "swin_t", "hybrid_r50", "dinov3_s16", "eva02_s14"):
            for batch_size in (1, 8):
                add(
                    "inference",
                    benchmark.compare_speed(
                        family, list(benchmark.MODELS[family][1]), "inference", batch_size, **speed
                    ),
                )
    if "train" in args.suite:
        implementations = ["hf_vit", "hf_vit_every_token", "timm", "transformers"]
        add("train", benchmark.compare_speed("vit_cifar", implementations, "train", 128, **speed))
        add("train", benchmark.compare_speed("vit_s16", implementations, "train", 16, **speed))
    if "naflex" in args.suite:
        for mode, batch_size in (("inference", 16), ("train", 16)):
            new = benchmark.naflex_speed(mode, batch_size, args.repeats, args.device, args.amp)
            add("naflex", new)
            columns = ["mode", "implementation", "input", "mean_patches", "images_per_s", "fixed_size_ratio"]
            print(markdown_table(new, columns), flush=True)
    if "logit_cache" in args.suite:
        with tempfile.TemporaryDirectory() as directory:
            results["logit_cache"] = benchmark.logit_cache_speed(directory, repeats=max(2, args.repeats // 2))
        print(markdown_table(results["logit_cache"], list(results["logit_cache"][0])), flush=True)
        save()
    if "token_merging" in args.suite:
        counts = sorted(set(args.token_merging) | {0})
        columns = ["family", "implementation", "token_merging", "images_per_s", "speedup"]
        for family in ("vit_s16", "deit_s_distilled"):
            new = benchmark.token_merging_speed(counts, family, 8, args.repeats, args.device, args.amp)
            add("token_merging", new)
            print(markdown_table(new, columns), flush=True)
        if args.model_name_or_path:
            with tempfile.TemporaryDirectory() as directory:
                results["token_merging_accuracy"] = benchmark.token_merging_accuracy(
                    args.model_name_or_path, counts, directory, repeats=args.repeats, seed=args.seed
                )
            accuracy = results["token_merging_accuracy"]
            print(markdown_table(accuracy, list(accuracy[0])), flush=True)
            if args.json:
                benchmark.draw_token_merging(accuracy, os.path.splitext(args.json)[0] + "_token_merging.png")
            save()
    if "compile" in args.suite:
        results["compile_cost"] = benchmark.compile_cost("vit_b16", 8, repeats=max(2, args.repeats // 2))
        print(markdown_table(results["compile_cost"], list(results["compile_cost"][0])), flush=True)
        add(
            "compile",
            benchmark.compare_speed("vit_s16", ["hf_vit", "timm"], "inference", 8, compile_ours=True, **speed),
        )
        results["graph_breaks"] = {
            family: benchmark.graph_breaks(family, ours)
            for family, ours in (("vit_s16", "hf_vit"), ("swin_t", "hf_swin"))
        }
        print("graph breaks (torch._dynamo.explain):", results["graph_breaks"])
    results["speed"] = rows
    if any(row["suite"] != "gpu" for row in rows):
        print(
            markdown_table(
                [row for row in rows if row["suite"] != "gpu"],
                ["suite", "family", "mode", "batch_size", "implementation", "images_per_s", "hf_vit_ratio"],
            )
        )
    if "swin" in args.suite:
        results["swin_growth"] = benchmark.swin_resolution_growth(
            ["hf_swin", "timm"], repeats=max(3, args.repeats // 2)
        )
        for name, figures in results["swin_growth"].items():
            print(f"swin_t {name}: " + ", ".join(f"{key} {value:.3f}" for key, value in figures.items()))
    if "export" in args.suite:
        results["export"] = benchmark.export_speed(repeats=args.repeats)
        print(
            markdown_table(
                results["export"],
                ["batch_size", "implementation", "file_mb", "images_per_s", "pytorch_ratio", "fp32_onnx_ratio"],
            )
        )
    if "data" in args.suite:
        with tempfile.TemporaryDirectory() as directory:
            results["data"] = benchmark.input_pipeline_speed(
                benchmark.make_jpeg_imagefolder(directory), repeats=args.repeats
            )
        print(markdown_table(results["data"], ["stage", "workers", "batch_size", "images_per_s", "times_the_step"]))
    if "startup" in args.suite:
        with tempfile.TemporaryDirectory() as directory:
            results["startup"] = benchmark.time_to_first_steps(directory)
        print(markdown_table(results["startup"], ["images", "streaming", "seconds", "runs"]))
    if "memory" in args.suite:
        memory = benchmark.checkpointing_memory("vit_b16", ["hf_vit", "timm", "transformers"], 32, args.device)
        results["memory_vit_b16_batch32"] = memory
        print(markdown_table(memory, ["implementation", "peak_mib", "checkpointed_peak_mib", "reduction"]))
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
