"""The first ten minutes: what a newcomer meets on the command line (errors, help, warnings, card, pictures)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image
from transformers import EvalPrediction, pipeline

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.cards import render_model_card
from hf_vit.data.metrics import compute_metrics
from hf_vit.guards import UsageError
from hf_vit.interop.convert import read_source
from hf_vit.processors import make_image_processor
from hf_vit.training.finetune import START_HERE, build_parser, finetune, main, parse_args

from conftest import REPO_ROOT
from test_finetune import FAST, TINY, make_imagefolder, run_script


@pytest.fixture
def broken_images(tmp_path):
    """An imagefolder whose images cannot be read: an error about anything else proves the data was not touched."""
    return make_imagefolder(tmp_path / "broken", per_class=1, corrupt="broken.png")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model_type", "hf_nonsense"], r"'hf_nonsense' is not an hf_vit model type; choose one of \['hf_deit'"),
        (
            ["--preset", "vit-tiny"],
            r"Unknown --preset 'vit-tiny' for hf_vit; choose one of \[.*'vit-tiny-patch16-224'\]",
        ),
        (
            ["--config_overrides", "drop_path_rat=0.1"],
            "HfViTConfig has no field 'drop_path_rat'; did you mean drop_path_rate",
        ),
        (["--config_overrides", "nonexistent_field=3"], "HfViTConfig has no field 'nonexistent_field'; its fields are"),
        (["--config_overrides", "hidden_size=-3"], "hidden_size must be positive, got -3"),
        (["--recipe", "deitt"], r"Unknown --recipe 'deitt'; choose one of \['auto', 'deit', 'finetune', 'plain'\]"),
        (["--layer_decay", "1.5"], r"layer_decay must be in \(0, 1\], got 1.5"),
        (
            ["--position_embedding_init", "learned"],
            r"position_embedding_init must be one of \['trunc_normal', 'sincos'\]",
        ),
        (
            ["--model_type", "hf_swin", "--position_embedding_init", "sincos"],
            "--position_embedding_init does not apply to hf_swin: its config has no 'position_embedding_init' field",
        ),
        (["--patch_embedding_init", "kaiming"], r"patch_embedding_init must be one of \['trunc_normal', 'xavier'\]"),
        (
            ["--patch_embedding_init", "xavier", "--config_overrides", "patch_embedding_type=conv_stem"],
            "patch_embedding_init='xavier' starts the 'patch' projection .*; patch_embedding_type='conv_stem' has none",
        ),
        (
            ["--model_type", "hf_vit_hybrid", "--patch_embedding_init", "xavier"],
            "--patch_embedding_init does not apply to hf_vit_hybrid: its config has no 'patch_embedding_init' field",
        ),
        (["--drop_path_rate", "1.5"], "drop_path_rate must be in"),
        (["--model_name_or_path", "./no_such_checkpoint"], "--model_name_or_path './no_such_checkpoint': no such file"),
        (["--teacher_name_or_path", "./teacher"], "needs a model that distills"),
        (["--backbone_learning_rate", "1e-4"], "needs a model with a CNN backbone"),
        (["--num_train_epochz", "3"], "unrecognized arguments: --num_train_epochz 3; did you mean --num_train_epochs"),
    ],
)
def test_bad_arguments_fail_in_one_line_with_exit_code_2_before_any_data_or_file(
    tmp_path, broken_images, capsys, monkeypatch, flags, message
):
    (tmp_path / "teacher").mkdir()
    output_dir = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert main(["--output_dir", str(output_dir), "--train_dir", str(broken_images), *flags]) == 2
    error = capsys.readouterr().err
    assert __import__("re").search(message, error), error
    assert error.count("\n") == 1 and error.startswith(f"{os.path.basename(sys.argv[0])}: error: ")
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "flags, start",
    [
        (["--position_embedding_init", "sincos"], "position_embedding_init='sincos'"),
        (["--config_overrides", "position_embedding_init='sincos'"], "position_embedding_init='sincos'"),
        (["--patch_embedding_init", "xavier"], "patch_embedding_init='xavier'"),
    ],
)
def test_a_start_for_a_checkpoint_is_refused_before_any_data(
    tmp_path, broken_images, capsys, tiny_vit_config, flags, start
):
    HfViTForImageClassification(tiny_vit_config).save_pretrained(tmp_path / "checkpoint")
    output_dir = tmp_path / "out"
    assert (
        main(
            [
                "--output_dir",
                str(output_dir),
                "--train_dir",
                str(broken_images),
                "--model_name_or_path",
                str(tmp_path / "checkpoint"),
                *flags,
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert f"{start} sets how a model trained from scratch starts; --model_name_or_path loads" in error
    assert not output_dir.exists()


def test_the_script_exits_2_with_one_line_and_traceback_shows_the_whole_story(tmp_path):
    args = ["--output_dir", str(tmp_path / "out"), "--model_type", "hf_nonsense"]
    result = run_script(args, expect_success=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "finetune.py: error: 'hf_nonsense' is not an hf_vit model type; choose one of "
        "['hf_deit', 'hf_swin', 'hf_vit', 'hf_vit_hybrid']"
    )
    result = run_script([*args, "--traceback"], expect_success=False)
    assert result.returncode == 1 and "Traceback" in result.stderr and "UsageError" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_shows_the_newcomers_flags_first_then_model_data_recipe_and_trainer():
    text = build_parser().format_help()
    order = [
        text.index(f"\n{title}:\n")
        for title in ("start here", "model", "data", "recipe", "Trainer (transformers TrainingArguments)")
    ]
    assert order == sorted(order)
    start_here = text[order[0] : order[1]]
    assert [flag for flag in START_HERE if f"  {flag} " in start_here] == list(START_HERE)
    assert "--output_dir" not in text[order[-1] :]  # moved, not repeated
    assert text.splitlines()[0].startswith("usage: ") and len(text.splitlines()[0]) < 200
    model_args, data_args, training_args, recipe_args, lora_args = parse_args(
        ["--output_dir", "x", "--train_dir", "d", "--recipe", "plain"]
    )
    assert (training_args.output_dir, data_args.train_dir, recipe_args.recipe) == ("x", "d", "plain")


def test_convert_names_a_missing_local_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="source './does_not_exist': no such file or directory"):
        read_source("./does_not_exist")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "convert_checkpoint.py"),
            "--source",
            "./does_not_exist",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "convert_checkpoint.py: error: source './does_not_exist': no such file or directory"
    assert not (tmp_path / "out").exists()


def test_an_empty_class_folder_warns_and_a_class_without_training_images_fails(tmp_path, caplog):
    train = make_imagefolder(tmp_path / "train", per_class=6)
    (train / "bird").mkdir()
    args = [
        "--output_dir",
        str(tmp_path / "out"),
        "--train_dir",
        str(train),
        "--num_train_epochs",
        "1",
        "--config_overrides",
        TINY,
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        "--train_val_split",
        "0.25",
    ]
    with caplog.at_level("WARNING"):
        metrics = finetune(*parse_args(args))
    assert "Class folders without images" in caplog.text and "bird" in caplog.text
    assert "eval_top5_accuracy" not in metrics  # two classes: top-5 would always be 1

    validation = make_imagefolder(tmp_path / "val", classes=("cat", "dog", "bird"), per_class=2)
    args = [*args, "--validation_dir", str(validation), "--output_dir", str(tmp_path / "out2")]
    with pytest.raises(UsageError, match=r"Classes \['bird'\] have evaluation images but no training image"):
        finetune(*parse_args(args))
    assert not (tmp_path / "out2").exists()


def test_top5_is_reported_only_with_more_than_five_classes():
    labels = np.array([0, 1])
    assert set(compute_metrics(EvalPrediction(np.eye(2), labels))) == {"accuracy"}
    assert set(compute_metrics(EvalPrediction(np.eye(6)[:2], labels))) == {"accuracy", "top5_accuracy"}


def test_the_card_is_valid_hub_metadata_with_one_accuracy_per_epoch_and_links_the_curves(tmp_path):
    output_dir = tmp_path / "run"
    train = make_imagefolder(tmp_path / "train", per_class=6)
    args = [
        "--output_dir",
        str(output_dir),
        "--train_dir",
        str(train),
        "--num_train_epochs",
        "2",
        "--config_overrides",
        TINY,
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        "--train_val_split",
        "0.25",
    ]
    metrics = finetune(*parse_args(args))
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets is None  # a local folder is no Hub dataset id
    (result,) = card.data.eval_results
    assert (result.task_type, result.metric_type) == ("image-classification", "accuracy")
    assert result.metric_value == round(metrics["eval_accuracy"], 4) and result.dataset_name == "imagefolder train"
    assert "eval accuracy at epochs 1, 2: " in card.text  # the final evaluate() repeats epoch 2; listed once
    assert "optimizer: adamw_torch_fused" in card.text or "optimizer: adamw_torch" in card.text
    assert "OptimizerNames" not in card.text and "SchedulerType" not in card.text
    assert "](training_curves.png)" in card.text
    with Image.open(output_dir / "training_curves.png") as picture:
        assert picture.size[0] > 800

    on_hub = ModelCard(
        render_model_card(
            HfViTForImageClassification(HfViTConfig(num_labels=3)),
            "hf_vit.md",
            dataset="beans",
            dataset_id="AI-Lab-Makerere/beans",
        )
    )
    assert on_hub.data.datasets == ["AI-Lab-Makerere/beans"] and on_hub.data.eval_results is None


def test_image_processors_load_without_a_backend_warning(tmp_path):
    HfViTForImageClassification(HfViTConfig(num_labels=2)).save_pretrained(tmp_path)
    make_image_processor(224).save_pretrained(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import hf_vit\nfrom transformers import AutoImageProcessor\n"
            f"print(type(AutoImageProcessor.from_pretrained({str(tmp_path)!r})).__name__)",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ViTImageProcessor" and "backend" not in result.stderr, result.stderr


@pytest.mark.parametrize("num_channels", [3, 1])
def test_pipeline_takes_the_documented_inputs_for_a_grayscale_array(tmp_path, tiny_vit_config, num_channels):
    tiny_vit_config.num_channels = num_channels
    HfViTForImageClassification(tiny_vit_config).save_pretrained(tmp_path)
    make_image_processor(32, num_channels).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    array = np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)  # a grayscale image, (H, W)
    documented = Image.fromarray(array) if num_channels == 3 else array[..., None]  # README: troubleshooting
    assert len(classifier(documented)) == 5


def test_the_shipped_accelerate_config_silences_the_launch_defaults_block(tmp_path):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO_ROOT / "accelerate.yaml"))
    result = run_script(
        ["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1", *FAST, "--save_strategy", "no"],
        launcher=launcher,
    )
    assert "were not passed to `accelerate launch`" not in result.stderr
    assert "Falling back" not in result.stderr and result.stdout.count("eval: accuracy") == 1
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "hf_vit"
