"""The teacher-logit cache (`--teacher_logits_cache`, `hf_vit.training.logit_cache`): the first run keeps the
teacher's logits of replayable views, a second reads them without the teacher (its folder gone), another run's
cache is refused, a partial one completed."""

import shutil

import pytest
import torch

from hf_vit.data import DataArguments, load_splits, set_transforms
from hf_vit.data.batching import EpochBatches, SeededViews
from hf_vit.guards import UsageError
from hf_vit.processors import make_image_processor
from hf_vit.training.finetune import finetune
from hf_vit.training.finetune import parse_args as finetune_args

from conftest import TINY, TWO_PROCESSES, make_resnet_teacher, run_script


def test_a_pictures_view_is_the_same_in_any_run_for_its_seed_epoch_and_index():
    data_args = DataArguments(max_train_samples=8)
    split = load_splits(data_args)["train"]
    set_transforms({"train": split}, make_image_processor(32), 3, data_args, crop_scale_min=0.3, hflip_prob=0.5)
    views = SeededViews(split, seed=5)
    first = views[(3, 1)]
    torch.manual_seed(123)  # whatever the global random state
    assert torch.equal(views[(3, 1)]["pixel_values"], first["pixel_values"]) and int(first["example_index"]) == 3
    assert not torch.equal(views[(3, 2)]["pixel_values"], first["pixel_values"])  # another epoch, another view
    batches = EpochBatches(8, 3, seed=0)
    batches.set_epoch(1)
    keys = [key for batch in batches for key in batch]
    assert len(batches) == 3 and sorted(index for index, _ in keys) == list(range(8)) and {e for _, e in keys} == {1}


def test_a_second_run_reads_the_cache_without_the_teacher_and_learns_the_same(tmp_path, capsys):
    labels = [str(digit) for digit in range(10)]
    teacher, cache = make_resnet_teacher(tmp_path / "teacher", labels), tmp_path / "cache"

    def run(name, *flags):
        args = ["--output_dir", str(tmp_path / name), "--teacher_name_or_path", str(teacher),
                "--teacher_logits_cache", str(cache), "--num_train_epochs", "2", "--max_train_samples", "48",
                "--max_eval_samples", "16", "--config_overrides", TINY, "--disable_tqdm", "true",
                "--distillation_type", "soft", "--dataloader_num_workers", "0", *flags]  # fmt: skip
        return finetune(*finetune_args(args))

    first = run("first")
    shutil.copytree(teacher, tmp_path / "kept")  # with its files' times, so that it is the same teacher again
    assert "the teacher fills 96 of 96 rows" in capsys.readouterr().out
    assert {path.name for path in cache.iterdir()} == {
        "key.json",
        "epoch0.rank0.safetensors",
        "epoch1.rank0.safetensors",
    }
    shutil.rmtree(teacher)
    second = run("second")
    assert "the teacher is not loaded" in capsys.readouterr().out
    assert second["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-2)
    with pytest.raises(UsageError, match=r"holds logits of another run \(its \['augmentation'\] differ"):
        run("other", "--crop_scale_min", "0.5")
    (cache / "epoch1.rank0.safetensors").unlink()
    with pytest.raises(UsageError, match="lacks 48 of 96 rows, and the teacher .* is not there"):
        run("partial")
    make_resnet_teacher(teacher, labels)  # another teacher of the same name, shape and size
    with pytest.raises(UsageError, match=r"its \['teacher_fingerprint'\] differ"):
        run("another teacher")
    shutil.rmtree(teacher)
    shutil.copytree(tmp_path / "kept", teacher)  # the first teacher back
    run("completed")
    assert "the teacher fills 48 of 96 rows" in capsys.readouterr().out
    assert (cache / "epoch1.rank0.safetensors").exists()


@pytest.mark.slow  # 12 s of two-process launches; the cache's files per process are tested in one process above
def test_two_processes_fill_one_cache_that_a_single_process_reads(tmp_path):
    """Each process writes the rows it computed; a later run with another number of processes reads them all."""
    teacher = make_resnet_teacher(tmp_path / "teacher", [str(digit) for digit in range(10)])
    common = ["--teacher_name_or_path", str(teacher), "--teacher_logits_cache", str(tmp_path / "cache"),
              "--num_train_epochs", "1", "--max_train_samples", "32", "--max_eval_samples", "16",
              "--config_overrides", TINY, "--disable_tqdm", "true", "--per_device_train_batch_size", "8"]  # fmt: skip
    run_script(["--output_dir", str(tmp_path / "two"), *common], launcher=TWO_PROCESSES)
    assert sorted(path.name for path in (tmp_path / "cache").glob("*.safetensors")) == [
        "epoch0.rank0.safetensors",
        "epoch0.rank1.safetensors",
    ]
    shutil.rmtree(teacher)
    result = run_script(["--output_dir", str(tmp_path / "one"), *common])
    assert "the teacher is not loaded" in result.stdout
