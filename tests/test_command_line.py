"""The command line (`hf_vit.cli`, `commands`): one-line errors with exit code 2 before any data, help, config
overrides, and every script end to end as an `hf-vit` subcommand."""

import json
import os
import sys

import pytest
from transformers import TrainerCallback

from hf_vit import (
    HfViTForImageClassification,
)
from hf_vit.cli import parse_config_overrides
from hf_vit.guards import UsageError
from hf_vit.training.finetune import START_HERE, build_parser, finetune, main, parse_args

from conftest import DIGITS_SUBSET, FAST, REPO_ROOT, TINY_VIT_FLAGS, make_imagefolder, run_script


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
        (["--distillation_tau", "2"], "--distillation_tau sets how a student learns from a teacher"),
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


def test_the_shipped_accelerate_config_silences_the_launch_defaults_block(tmp_path):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO_ROOT / "accelerate.yaml"))
    result = run_script(
        ["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1", *FAST, "--save_strategy", "no"],
        launcher=launcher,
    )
    assert "were not passed to `accelerate launch`" not in result.stderr
    assert "Falling back" not in result.stderr and result.stdout.count("eval: accuracy") == 1
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "hf_vit"


def test_config_overrides_parse_literals_and_lists():
    assert parse_config_overrides("hidden_size=64,hidden_act=gelu,depths=[2, 2],qkv_bias=False") == {
        "hidden_size": 64,
        "hidden_act": "gelu",
        "depths": [2, 2],
        "qkv_bias": False,
    }
    with pytest.raises(ValueError, match="expected key=value"):
        parse_config_overrides("hidden_size")


def test_the_scripts_run_end_to_end_and_are_subcommands(tmp_path, trained, pictures):
    checkpoint = str(trained[0])
    runs = {
        "probe.py": ["--method", "knn", "--output_dir", str(tmp_path / "probe"), *TINY_VIT_FLAGS, *DIGITS_SUBSET],
        "evaluate.py": [
            "--model_name_or_path",
            checkpoint,
            "--output_dir",
            str(tmp_path / "eval"),
            "--tta",
            "flip",
            *DIGITS_SUBSET,
        ],  # fmt: skip
        "predict.py": [
            "--model_name_or_path",
            checkpoint,
            "--inputs",
            str(pictures),
            "--output_file",
            str(tmp_path / "predictions.csv"),
        ],  # fmt: skip
    }
    for script, args in runs.items():
        run_script(args, script=script)
    assert (tmp_path / "probe" / "probe_results.json").is_file() and (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "predictions.csv").is_file()


class FailsAtInit(TrainerCallback):
    def on_init_end(self, args, state, control, **kwargs):
        raise ValueError("an internal fault, not the user's input")


def test_an_internal_error_in_the_set_up_keeps_its_traceback_not_a_usage_error(tmp_path):
    args = ["--output_dir", str(tmp_path / "out"), *FAST, "--num_train_epochs", "1"]
    with pytest.raises(ValueError, match="an internal fault") as error:
        finetune(*parse_args(args), callbacks=[FailsAtInit()])
    assert not isinstance(error.value, UsageError)
