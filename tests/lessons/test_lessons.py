"""The lessons (`hf_vit_lessons`, `scripts/`): the article's exercises, attention rollout, segmentation and the
studies (recipes, pretraining, fine-tuning), each end to end on the embedded digits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit import HfDeiTConfig, HfDeiTForImageClassification, HfViTConfig, HfViTForImageClassification
from hf_vit.processors import make_image_processor
from hf_vit_lessons.attention import attention_cost, attention_cost_sweep, attention_rollout

from conftest import randomize, run_script


def test_recipe_study_writes_its_table_and_plot(tmp_path):
    runs = ["ViT, plain recipe", "DeiT, deit recipe + CNN teacher, truncated-normal start"]  # the second an ablation
    result = run_script(
        ["--output_dir", str(tmp_path), "--seeds", "0", "--epochs", "1", "--max_train_samples", "48", "--runs", *runs],
        script="recipe_study.py",
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(row["dataset"], row["run"]) for row in rows] == [
        (dataset, run) for dataset in ("digits", "photo_patches") for run in ["CNN (ResNet, 3 stages)", *runs]
    ]
    assert all(0 <= row["min_accuracy"] <= row["mean_accuracy"] <= row["max_accuracy"] <= 1 for row in rows)
    assert "| photo_patches | DeiT, deit recipe + CNN teacher, truncated-normal start |" in result.stdout
    assert (tmp_path / "results.csv").read_text().startswith("dataset,run,mean_accuracy")
    assert (tmp_path / "recipe_study.png").read_bytes()[:4] == b"\x89PNG"
    distilled = tmp_path / "photo_patches" / "seed0" / "DeiT_deit_recipe_and_CNN_teacher_truncated-normal_start"
    config = json.loads((distilled / "config.json").read_text())
    assert config["model_type"] == "hf_deit" and config["distillation_type"] == "hard"
    assert (
        config["position_embedding_init"] == "trunc_normal"
    )  # the ablation's flag, over the recipe's sine-cosine start
    assert config["patch_embedding_init"] == "xavier"  # the recipe's, for a student from scratch with a teacher


def test_aspect_study_trains_squashed_and_naflex_at_one_budget(tmp_path):
    args = ["--output_dir", str(tmp_path), "--seeds", "0", "--epochs", "1", "--train_images", "40"]
    run_script([*args, "--validation_images", "20", "--budget", "16"], script="aspect_study.py")
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [row["run"] for row in rows] == ["squashed to 16 px (16 patches)", "NaFlex (<= 16 patches)"]
    wide = next((tmp_path / "data" / "train").rglob("*.png"))
    assert max(Image.open(wide).size) == 3 * min(Image.open(wide).size)  # three 8 px digits in a row or a column
    naflex = json.loads((tmp_path / "seed0" / "naflex" / "config.json").read_text())
    assert naflex["max_num_patches"] == 16 and (tmp_path / "aspect_study.png").exists()


def run(script, *args) -> str:
    """A lesson's script run to its end; what it printed."""
    return run_script(list(args), script=script).stdout


def save_article_vit(path):
    model = randomize(
        HfViTForImageClassification(HfViTConfig.from_preset("vit-cifar-patch4-32", num_labels=10)), std=0.05
    )
    model.config.id2label = {i: str(i) for i in range(10)}
    model.save_pretrained(path)
    make_image_processor(32).save_pretrained(path)
    return model


def test_compare_vit_cnn_prints_epochs_and_saves_curves_and_table(tmp_path):
    out = run("compare_vit_cnn.py", "--epochs", "2", "--max_train_samples", "128", "--output_dir", str(tmp_path))
    for name in ("vit", "cnn", "vit +aug", "cnn +aug"):
        assert f"{name:>14} epoch   2: train loss" in out
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["vit", "cnn", "vit +aug", "cnn +aug"]
    assert all(0 <= row["final_test_accuracy"] <= 1 for row in rows)
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert curves["train_samples"] == 128 and curves["test_samples"] == 360 and len(curves["curves"]["cnn"]) == 2
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000


def test_data_efficiency_trains_every_model_on_each_fraction_and_plots(tmp_path):
    out = run("data_efficiency.py", "--epochs", "1", "--fractions", "0.05", "0.1", "--output_dir", str(tmp_path))
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(row["model"], row["train_images"]) for row in rows] == [
        (name, images) for images in (72, 144) for name in ("vit", "vit conv-stem", "hybrid resnet", "cnn")
    ]
    assert all(0 <= row["final_test_accuracy"] <= 1 for row in rows) and "| hybrid resnet |" in out
    assert (tmp_path / "data_efficiency.png").stat().st_size > 10_000


def test_visualize_patches_verifies_every_patch_and_saves_the_similarity(tmp_path):
    save_article_vit(tmp_path / "trained")
    out = run(
        "visualize_patches.py", "--model_name_or_path", str(tmp_path / "trained"), "--output_dir", str(tmp_path / "out")
    )
    assert "[random] (a) image: [3, 32, 32]" in out
    assert "(b) 64 patches of [3, 4, 4]" in out
    assert "(c) verified: every patch block matches the patch embedding input; reconstruction exact: True" in out
    assert "[trained] (d) [65, 65] cosine similarity; most similar pairs:" in out
    similarity = np.load(tmp_path / "out" / "position_similarity_random.npy")
    assert similarity.shape == (65, 65) and np.allclose(np.diag(similarity), 1, atol=1e-5)
    for picture in ("patches_reconstruction", "position_similarity_random", "position_similarity_grid_trained"):
        assert (tmp_path / "out" / f"{picture}.png").exists()


def test_attention_cost_reports_the_theoretical_and_measured_speedup(tmp_path):
    figures = attention_cost(14, 14, runs=1)
    assert figures["tokens"] == 196 and figures["num_windows"] == 4
    assert figures["theoretical_speedup"] == 196 / 49
    out = run("attention_cost.py", "--runs", "2", "--output_dir", str(tmp_path))
    assert "full attention over 3136 tokens" in out and "64 windows of 49 tokens" in out
    assert "theoretical speedup (N^2 d / (windows w^2 w^2 d)): 64.0x; measured:" in out
    rows = attention_cost_sweep(sides=(14, 28), output_dir=str(tmp_path), runs=1)
    assert [row["tokens"] for row in rows] == [196, 784]
    assert (tmp_path / "attention_cost.png").exists()


def test_attention_rollout_script_and_distillation_prefix(tmp_path):
    save_article_vit(tmp_path / "vit")
    out = run(
        "attention_maps.py", "--model_name_or_path", str(tmp_path / "vit"), "--output_dir", str(tmp_path / "maps")
    )
    assert "4 layers; the rollout peaks at patch (row, col)" in out
    maps = np.load(tmp_path / "maps" / "attention_rollout.npy")
    assert maps.shape == (5, 8, 8) and (tmp_path / "maps" / "attention_maps.png").exists()
    deit = HfDeiTForImageClassification(HfDeiTConfig.from_preset("deit-cifar-patch4-32", num_labels=10)).eval()
    per_layer, rollout = attention_rollout(deit, torch.randn(1, 3, 32, 32))
    assert per_layer.shape == (4, 8, 8) and rollout.shape == (8, 8)
    assert 0 < rollout.sum() < 1  # the CLS row minus what stays on the two prefix tokens


def test_segmentation_lesson_trains_upernet_on_both_backbones_and_draws_masks(tmp_path):
    from hf_vit_lessons.segmentation import digit_canvases, segmentation_scores

    canvases = digit_canvases("validation", 4, seed=3)
    first = canvases[0]
    assert first["pixel_values"].shape == (3, 32, 32) and first["labels"].shape == (32, 32)
    cells = first["labels"].reshape(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, 64)  # the 8 px cells digits sit in
    assert 2 <= int((cells > 0).any(dim=1).sum()) <= 3  # two or three digits, labelled with their class + 1
    assert all(len(set(cell[cell > 0].tolist())) <= 1 for cell in cells)
    labels = canvases[:]["labels"].numpy()
    assert segmentation_scores(labels, labels) == {"mean_iou": 1.0, "pixel_accuracy": 1.0, "digit_iou": 1.0}
    run(
        "segmentation.py",
        "--output_dir",
        str(tmp_path),
        "--train_canvases",
        "32",
        "--eval_canvases",
        "8",
        "--epochs",
        "1",
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [row["backbone"] for row in rows] == ["hf_vit + simple feature pyramid", "hf_swin"]
    assert all(0 <= row["mean_iou"] <= 1 and 0 <= row["pixel_accuracy"] <= 1 for row in rows)
    assert (tmp_path / "masks.png").stat().st_size > 0


def test_pretraining_study_pretrains_then_fine_tunes_against_scratch(tmp_path):
    run(
        "pretraining_study.py",
        "--output_dir",
        str(tmp_path),
        "--runs",
        "ViT from scratch",
        "ViT, SimMIM-pretrained",
        "--fractions",
        "0.05",
        "--seeds",
        "0",
        "--pretrain_epochs",
        "1",
        "--finetune_epochs",
        "1",
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(row["run"], row["labelled_images"]) for row in rows] == [
        ("ViT from scratch", 72),
        ("ViT, SimMIM-pretrained", 72),
    ]
    assert all(0 <= row["mean_accuracy"] <= 1 for row in rows)
    assert (tmp_path / "pretraining.png").is_file() and (tmp_path / "simmim" / "reconstructions.png").is_file()
    assert json.loads((tmp_path / "simmim" / "config.json").read_text())["mask_ratio"] == 0.6


@pytest.mark.slow  # a long end-to-end run; the script's short one stays in CI
def test_fine_tuning_study_trains_a_source_and_fine_tunes_it_on_the_other_digits(tmp_path):
    runs = ["from scratch, auto recipe", "checkpoint, lr 5e-4, layer decay 0.75"]
    result = run_script(
        [
            "--study",
            "fine_tuning",
            "--output_dir",
            str(tmp_path),
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--labelled_images",
            "40",
            "--runs",
            *runs,
        ],
        script="recipe_study.py",
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(row["dataset"], row["run"]) for row in rows] == [("digits 5-9", run) for run in runs]
    assert "(40 labelled images)" in result.stdout and (tmp_path / "fine_tuning.png").read_bytes()[:4] == b"\x89PNG"
    source = json.loads((tmp_path / "checkpoint_digits_0-4" / "config.json").read_text())
    tuned = json.loads((tmp_path / "seed0" / "checkpoint_lr_5e-4_layer_decay_0.75" / "config.json").read_text())
    assert list(source["id2label"].values()) == ["0", "1", "2", "3", "4"]
    assert list(tuned["id2label"].values()) == ["5", "6", "7", "8", "9"]
    card = (tmp_path / "seed0" / "checkpoint_lr_5e-4_layer_decay_0.75" / "README.md").read_text()
    assert "layer_decay = 0.75: given" in card
