"""Where the data comes from (`hf_vit.data.sources`, `folders`): the embedded digits, folders and dataset
directories, unreadable and missing pictures named at once, empty classes, images checked once per dataset."""

import json
import logging

import numpy as np
import pytest

from hf_vit.data import DataArguments, load_digits_splits, load_splits
from hf_vit.guards import UsageError
from hf_vit.training.finetune import finetune, parse_args

from conftest import TINY, make_imagefolder


def test_an_empty_class_folder_warns_and_a_class_without_training_images_fails(tmp_path, caplog):
    train = make_imagefolder(tmp_path / "train", per_class=6)
    (train / "bird").mkdir()
    args = ["--output_dir", str(tmp_path / "out"), "--train_dir", str(train), "--num_train_epochs", "1",
            "--config_overrides", TINY, "--disable_tqdm", "true", "--save_strategy", "no",
            "--train_val_split", "0.25"]  # fmt: skip
    with caplog.at_level("WARNING"):
        metrics = finetune(*parse_args(args))
    assert "Class folders without images" in caplog.text and "bird" in caplog.text
    assert "eval_top5_accuracy" not in metrics  # two classes: top-5 would always be 1

    validation = make_imagefolder(tmp_path / "val", classes=("cat", "dog", "bird"), per_class=2)
    args = [*args, "--validation_dir", str(validation), "--output_dir", str(tmp_path / "out2")]
    with pytest.raises(UsageError, match=r"Classes \['bird'\] have evaluation images but no training image"):
        finetune(*parse_args(args))
    assert not (tmp_path / "out2").exists()


def test_digits_are_real_and_split_the_same_way_every_time():
    splits = load_digits_splits()
    assert (len(splits["train"]), len(splits["validation"])) == (1437, 360)
    assert splits["train"].features["label"].names == [str(d) for d in range(10)]
    image = splits["train"][0]["image"]
    assert image.size == (8, 8) and image.mode == "L"
    assert load_digits_splits()["validation"]["label"] == splits["validation"]["label"]
    assert np.bincount(splits["validation"]["label"]).min() >= 35  # stratified


def test_a_local_dataset_directory_works_as_dataset_name(tmp_path):
    splits = load_digits_splits()
    (tmp_path / "digits").mkdir()
    splits["train"].select(range(100)).to_parquet(tmp_path / "digits" / "train.parquet")
    splits["validation"].select(range(40)).to_parquet(tmp_path / "digits" / "validation.parquet")
    args = ["--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path / "digits"),
            "--num_train_epochs", "1", "--config_overrides", TINY, "--disable_tqdm", "true"]  # fmt: skip
    metrics = finetune(*parse_args(args))
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["eval_samples_per_second"] > 0
    assert metrics["epoch"] == 1.0


def corrupt_imagefolder(root, bad: int):
    images = make_imagefolder(root, per_class=12, size=(16, 16))
    for index in range(bad):
        (images / "cat" / f"broken{index}.png").write_bytes(b"not an image")
    return images


def test_every_unreadable_image_is_named_at_once_or_left_out_with_a_count(tmp_path, caplog):
    images = corrupt_imagefolder(tmp_path / "images", bad=3)
    with pytest.raises(
        ValueError,
        match=r"^3 unreadable image\(s\): Cannot read image .*broken.\.png.*broken.\.png.*broken.\.png"
        r".*--skip_unreadable_images",
    ):
        load_splits(DataArguments(train_dir=str(images), preprocessing_num_workers=2))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataArguments(train_dir=str(images), skip_unreadable_images=True), seed=0)
    assert len(splits["train"]) + len(splits["validation"]) == 24  # the 24 good images, the 3 broken left out
    assert any("Leaving out" in record.getMessage() and "broken" in record.getMessage() for record in caplog.records)
