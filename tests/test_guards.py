"""One-line refusals of common mistakes (`hf_vit.guards`), each before any work and without a half-written output:
through the jobs' own entry points, as a user would meet them; a run never overwritten."""

import json
import os
import subprocess
import sys

import pytest

from hf_vit import (
    HfViTConfig,
    HfViTForImageClassification,
)
from hf_vit.guards import LOCK_FILE, UsageError, claim_output_dir
from hf_vit.inference.evaluation import evaluate_checkpoint
from hf_vit.inference.evaluation import parse_args as evaluate_args
from hf_vit.training.finetune import finetune, parse_args
from hf_vit.training.trainer import last_complete_checkpoint, resolve_resume

from conftest import FAST, REPO_ROOT, TINY, TINY_CLASSIFIER, make_imagefolder, run_script

QUICK = [*FAST, "--num_train_epochs", "1", "--report_to", "none"]


def refused(tmp_path, *flags) -> str:
    """The message of a finetune run with `flags` refused as bad input (a ValueError from the arguments, which the
    command prints in one line, or a UsageError), checking that it left no model behind."""
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        finetune(*parse_args(["--output_dir", str(output), *QUICK, *flags]))
    assert not (output / "model.safetensors").exists()
    return str(error.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size must be at least 1, got 0"),
        (("--max_train_samples", "0"), "--max_train_samples must be at least 1, got 0"),
        (("--dataset_name", "some/data", "--train_dir", "x"), "--dataset_name and --train_dir / --validation_dir"),
        (("--resume_from_checkpoint", "no-such-checkpoint"), "'no-such-checkpoint': no such checkpoint directory"),
        (("--max_num_patches", "0"), "--max_num_patches must be at least 1, got 0"),
        (("--max_num_patches", "16", "--image_size", "32"), "--max_num_patches keeps each picture's own shape"),
        (("--max_num_patches", "16", "--model_type", "hf_vit_hybrid"), "--max_num_patches does not apply to hf_vit_h"),
        (("--max_num_patches", "16", "--teacher_name_or_path", "."), "--teacher_name_or_path takes fixed-size"),
        (("--train_patch_budgets", "16"), "--train_patch_budgets fills NaFlex batches by patches; it needs --max_num"),
        (("--max_num_patches", "16", "--train_patch_budgets", "0"), "--train_patch_budgets must be budgets of at"),
        (("--max_num_patches", "16", "--train_patch_budgets", "16", "--streaming"), "which a stream (--streaming)"),
        (
            ("--max_num_patches", "16", "--train_patch_budgets", "16", "--repeated_augmentation", "3"),
            "--repeated_augmentation 3 does not apply with --train_patch_budgets",
        ),
    ],
)
def test_flags_that_cannot_work_are_named_before_any_data(tmp_path, flags, message):
    assert message in refused(tmp_path, *flags)


def test_an_output_dir_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        finetune(*parse_args(["--output_dir", str(tmp_path / "file"), *QUICK]))


@pytest.mark.slow  # 11 s: two runs started together; a directory holding a run is refused below
def test_a_second_run_into_the_same_directory_at_the_same_time_is_refused(tmp_path):
    held = claim_output_dir(str(tmp_path / "run"))  # another process's run, writing there now
    assert (tmp_path / "run" / LOCK_FILE).exists()
    code = (
        "import sys; from hf_vit.guards import claim_output_dir\n"
        f"try: claim_output_dir({str(tmp_path / 'run')!r})\n"
        "except FileExistsError as e: print(e); sys.exit(3)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode == 3 and "is being written by another run right now" in other.stdout
    held.close()  # the first run ends: the directory can be claimed again (a dead process's lock is gone too)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_one_class_folder_is_named_as_such_not_as_a_missing_column(tmp_path):
    folder = make_imagefolder(tmp_path / "train", classes=("cat",))
    assert "holds one class folder ('cat'): a classifier needs at least two classes" in refused(
        tmp_path, "--train_dir", str(folder)
    )


def test_a_small_stream_without_an_evaluation_split_is_refused_not_trained_for_zero_steps(tmp_path):
    folder = make_imagefolder(tmp_path / "train", per_class=6)
    message = refused(tmp_path, "--train_dir", str(folder), "--streaming", "--max_steps", "4")
    assert "The stream holds only 12 images, and all of them would be held out for evaluation" in message


def test_resume_picks_the_last_whole_checkpoint_and_refuses_other_classes(tmp_path):
    run = tmp_path / "run"
    for step, whole in ((4, True), (8, False)):  # checkpoint-8 was being saved when the run was killed
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "config.json").write_text(json.dumps({"id2label": {"0": "cat", "1": "dog"}}))
        if whole:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(run)) == str(run / "checkpoint-4")
    args = parse_args(["--output_dir", str(run), "--resume_from_checkpoint", "True"])[2]
    assert resolve_resume(args, ["cat", "dog"]) == str(run / "checkpoint-4")
    with pytest.raises(ValueError, match=r"trained on the classes \['cat', 'dog'\], the data has \['0', '1'"):
        resolve_resume(args, [str(digit) for digit in range(10)])
    args.resume_from_checkpoint = str(run / "checkpoint-8")
    with pytest.raises(ValueError, match="is not a whole checkpoint"):
        resolve_resume(args, ["cat", "dog"])


def test_save_steps_alone_saves_by_steps():
    args = parse_args(["--output_dir", "unused", "--save_steps", "7"])[2]
    assert args.save_strategy == "steps" and args.save_steps == 7
    assert parse_args(["--output_dir", "unused"])[2].save_strategy == "epoch"


def test_evaluate_takes_a_validation_folder_alone(tmp_path):
    train = make_imagefolder(tmp_path / "train")
    finetune(*parse_args(["--output_dir", str(tmp_path / "model"), "--train_dir", str(train), *QUICK[4:]]))
    validation = make_imagefolder(tmp_path / "validation", per_class=3)
    flags = ["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "report")]
    metrics = evaluate_checkpoint(*evaluate_args([*flags, "--validation_dir", str(validation)]))
    assert metrics["images"] == 6


def test_the_readmes_launch_shows_an_input_error_in_one_line(tmp_path):
    """`accelerate launch -q` (the README's quick start): the job's line, not accelerate's traceback after it."""
    readme = (REPO_ROOT / "README.md").read_text()
    assert "accelerate launch -q --config_file accelerate.yaml scripts/finetune.py" in readme
    command = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
               str(REPO_ROOT / "accelerate.yaml"), str(REPO_ROOT / "scripts" / "finetune.py"),
               "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "0"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "--per_device_train_batch_size must be at least 1" in result.stderr + result.stdout


def test_a_second_run_into_the_same_output_dir_is_refused_unless_resumed_or_overwritten(tmp_path):
    output_dir = tmp_path / "run"
    common = ["--output_dir", str(output_dir), *FAST, "--num_train_epochs", "1"]
    run_script(common)
    first = (output_dir / "model.safetensors").read_bytes()
    result = run_script([*common, "--num_train_epochs", "2"], expect_success=False)
    assert result.returncode == 2 and f"--output_dir '{output_dir}' already holds a run" in result.stderr
    assert (output_dir / "model.safetensors").read_bytes() == first and "Traceback" not in result.stderr
    run_script([*common, "--num_train_epochs", "2", "--resume_from_checkpoint", str(output_dir / "checkpoint-2")])
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 4
    run_script([*common, "--overwrite_output_dir"])  # a new run: the old checkpoints go first
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.parametrize(
    "script, flags",
    [
        ("pretrain.py", ["--config_overrides", TINY, "--max_train_samples", "64", "--max_eval_samples", "8"]),
        ("convert_checkpoint.py", ["--source", "SOURCE"]),
        ("export.py", ["--model_name_or_path", "SOURCE"]),
    ],
)
def test_the_other_jobs_refuse_an_output_dir_that_holds_files(tmp_path, script, flags):
    source = tmp_path / "source"
    HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER)).save_pretrained(source)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "config.json").write_text("{}")
    flags = [str(source) if flag == "SOURCE" else flag for flag in flags]
    result = run_script(["--output_dir", str(output_dir), *flags], script=script, expect_success=False)
    assert (
        result.returncode == 2 and "already holds a run" in result.stderr and "--overwrite_output_dir" in result.stderr
    )
    assert sorted(os.listdir(output_dir)) == ["config.json"] and (output_dir / "config.json").read_text() == "{}"


def test_a_file_written_atomically_is_whole_or_untouched(tmp_path):
    from hf_vit.guards import replaced_atomically

    path = tmp_path / "README.md"
    path.write_text("the old card")
    with pytest.raises(OSError, match="No space left"):
        with replaced_atomically(str(path)) as temporary, open(temporary, "w") as f:
            f.write("half a ca")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "the old card" and os.listdir(tmp_path) == ["README.md"]
    with replaced_atomically(str(path)) as temporary, open(temporary, "w") as f:
        f.write("the new card")
    assert path.read_text() == "the new card" and os.listdir(tmp_path) == ["README.md"]
