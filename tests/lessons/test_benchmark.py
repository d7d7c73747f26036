"""The benchmark (`hf_vit_lessons.benchmark`): speed against timm and transformers as ratios, memory, export speed,
the input pipeline, the time to the first steps, and the GPU benchmark's smoke mode."""

import json

import pytest
import torch
from PIL import Image as PILImage

from hf_vit.data import DataArguments
from hf_vit_lessons import benchmark

from conftest import run_script


def test_the_gpu_benchmark_runs_in_smoke_mode(tmp_path):
    output = tmp_path / "gpu.json"
    smoke = ["--suite", "gpu", "--smoke"]
    run_script([*smoke, "--no_compile", "--json", str(output)], script="benchmark.py")
    rows = json.loads(output.read_text())["speed"]
    assert {(row["mode"], row["implementation"]) for row in rows} == {
        (mode, name) for mode in ("train", "inference") for name in ("hf_vit", "timm", "transformers")
    }
    assert all(row["images_per_s"] > 0 and row["gflops_per_image"] > 0 for row in rows)
    assert all(row["mfu"] is None and row["step_peak_mib"] is None for row in rows)  # no GPU, no peak to use

    run_script(
        [*smoke, "--modes", "inference", "--implementations", "ours", "--peak_tflops", "1", "--json", str(output)],
        script="benchmark.py",
    )
    rows = json.loads(output.read_text())["speed"]
    assert [row["implementation"] for row in rows] == ["hf_vit", "hf_vit+compile"]
    assert all(0 < row["mfu"] < 1 for row in rows)


def test_compare_speed_gives_one_row_per_implementation_with_ratios():
    rows = benchmark.compare_speed("vit_cifar", ["hf_vit", "timm", "transformers"], "train", 8, repeats=2)
    assert [row["implementation"] for row in rows] == ["hf_vit", "timm", "transformers"]
    ours = rows[0]["images_per_s"]
    assert all(row["images_per_s"] > 0 for row in rows)
    assert [row["hf_vit_ratio"] for row in rows] == pytest.approx(
        [1.0] + [ours / row["images_per_s"] for row in rows[1:]]
    )


def test_token_merging_is_timed_against_timm_and_its_accuracy_measured_through_evaluate(tmp_path, trained):
    rows = benchmark.token_merging_speed([0, 4], "vit_cifar", 2, repeats=1)
    assert [(row["implementation"], row["token_merging"]) for row in rows] == [
        ("timm", None),
        ("hf_vit", 0),
        ("hf_vit", 4),
    ]
    assert all(row["images_per_s"] > 0 for row in rows) and rows[1]["speedup"] == 1.0
    subset = DataArguments(max_train_samples=200, max_eval_samples=60)  # the data `trained` evaluated on
    rows = benchmark.token_merging_accuracy(str(trained[0]), [0, 2], str(tmp_path), 8, repeats=1, data_args=subset)
    assert rows[0]["accuracy"] == pytest.approx(trained[1]["eval_accuracy"], abs=1e-6)  # evaluate's own figure
    assert rows[1]["accuracy_change"] == pytest.approx(rows[1]["accuracy"] - rows[0]["accuracy"])
    assert all(row["images_per_s"] > 0 for row in rows)
    benchmark.draw_token_merging(rows, str(tmp_path / "curve.png"))
    assert PILImage.open(tmp_path / "curve.png").size[0] > 300


@pytest.mark.slow  # three fresh processes, 35 s; the compile suite's figures in the docs come from it
def test_compile_cost_times_the_first_step_of_each_compilation_in_fresh_processes():
    rows = benchmark.compile_cost("vit_cifar", 2, repeats=1, backend="aot_eager")
    assert [row["compilation"] for row in rows] == ["eager", "whole model", "regional"]
    assert all(row["first_step_s"] > 0 for row in rows) and rows[1]["compile_s"] > rows[0]["compile_s"]
    assert rows[1]["whole_model_step_ratio"] == 1.0 and all(row["images_per_s"] > 0 for row in rows)


def test_naflex_speed_times_both_inputs_of_both_implementations_on_the_same_patches():
    batch = benchmark.naflex_batch(4, budget=16)
    valid = batch["ours"]["pixel_attention_mask"].bool()
    assert torch.equal(batch["timm"]["patch_valid"], valid) and (valid.sum(1) <= 16).all()
    heights, widths = batch["ours"]["spatial_shapes"].T  # square, 4:3, 3:4, 16:9 pictures keep their shapes
    assert heights[0] == widths[0] and heights[1] > widths[1] and heights[2] < widths[2] and heights[3] > widths[3]
    tiny = dict(benchmark.NAFLEX_S16, embed_dim=64, depth=2, num_heads=2, pos_embed_grid_size=(4, 4))
    rows = benchmark.naflex_speed("train", 2, repeats=1, model=tiny)
    assert [(row["implementation"], row["input"]) for row in rows] == [
        ("hf_vit", "64 x 64 images"),
        ("hf_vit", "NaFlex <= 16 patches"),
        ("timm", "64 x 64 images"),
        ("timm", "NaFlex <= 16 patches"),
    ]
    assert all(row["images_per_s"] > 0 for row in rows) and rows[0]["fixed_size_ratio"] == 1.0


@pytest.mark.slow  # a long end-to-end run; the script's short one stays in CI
def test_memory_probe_sees_gradient_checkpointing_shrink_the_step_and_repeats_itself():
    rows = benchmark.checkpointing_memory("vit_cifar", ["hf_vit", "timm"], 128)
    assert [row["implementation"] for row in rows] == ["hf_vit", "timm"]
    for row in rows:
        assert 0 < row["checkpointed_peak_mib"] < row["peak_mib"]
        assert row["reduction"] == pytest.approx(1 - row["checkpointed_peak_mib"] / row["peak_mib"])
    # The fixed mmap threshold makes the resident set follow live tensors, so a second probe agrees.
    again = benchmark.peak_training_memory("vit_cifar", "hf_vit", 128, True)
    assert again == pytest.approx(rows[0]["checkpointed_peak_mib"], rel=0.05)


def test_the_vit_compiles_as_one_graph():
    assert benchmark.graph_breaks("vit_cifar", "hf_vit") == 0


def test_export_speed_times_onnxruntime_fp32_and_int8_against_pytorch_on_the_same_export():
    rows = benchmark.export_speed(batch_sizes=(1, 2), repeats=2, family="vit_cifar")
    names = ["pytorch eager", "onnxruntime", "onnxruntime int8 dynamic", "onnxruntime int8 static"]
    assert [(row["implementation"], row["batch_size"]) for row in rows] == [(n, b) for b in (1, 2) for n in names]
    assert all(row["images_per_s"] > 0 for row in rows)
    for row in rows:
        eager, fp32 = (next(r for r in rows if r["batch_size"] == row["batch_size"] and r["implementation"] == name)
                       for name in names[:2])  # fmt: skip
        assert row["pytorch_ratio"] == pytest.approx(row["images_per_s"] / eager["images_per_s"])
        assert row["fp32_onnx_ratio"] == pytest.approx(row["images_per_s"] / fp32["images_per_s"])
    sizes = {row["implementation"]: row["file_mb"] for row in rows[:4]}
    assert sizes["pytorch eager"] is None and sizes["onnxruntime int8 dynamic"] < sizes["onnxruntime"]


def test_input_pipeline_speed_reads_a_jpeg_imagefolder_at_each_worker_count(tmp_path):
    directory = benchmark.make_jpeg_imagefolder(str(tmp_path / "jpegs"), count=24, size=(64, 80))
    rows = benchmark.input_pipeline_speed(directory, workers=(0, 1), batch_size=4, repeats=1, image_size=32)
    assert [(row["stage"], row["workers"]) for row in rows] == [
        ("input pipeline", 0),
        ("input pipeline", 1),
        ("ViT-S/16 training step", None),
    ]
    assert all(row["images_per_s"] > 0 for row in rows) and rows[-1]["times_the_step"] == 1.0


@pytest.mark.slow  # a long end-to-end run; the script's short one stays in CI
def test_time_to_first_steps_runs_the_script_streamed_and_map_style(tmp_path):
    rows = benchmark.time_to_first_steps(str(tmp_path), counts=(40,), rounds=1, steps=1)
    assert [(row["images"], row["streaming"], row["runs"]) for row in rows] == [(40, True, 1), (40, False, 1)]
    assert all(row["seconds"] > 0 for row in rows)
    assert (tmp_path / "run_40_True_0" / "model.safetensors").is_file() and (
        tmp_path / "run_40_False_0" / "all_results.json"
    ).is_file()


@pytest.mark.slow  # four short finetune runs; the cache itself is tested in CI (tests/training/test_logit_cache.py)
def test_logit_cache_speed_times_computed_against_cached_teaching(tmp_path):
    rows = benchmark.logit_cache_speed(str(tmp_path), repeats=2, epochs=1, images=32)
    assert [row["run"] for row in rows] == ["teacher computed", "cache read"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0 and rows[0]["teacher_cost"] > 3
