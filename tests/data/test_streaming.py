"""Streaming (`hf_vit.data.streaming`): an image folder read as a stream, a shard for every reader, unreadable
pictures skipped and counted, and the flags a stream needs."""

import json

import pytest
from datasets import ClassLabel, Image

from hf_vit.data import DataArguments, load_training_data
from hf_vit.data.folders import stream_image_folders
from hf_vit.data.sources import open_source
from hf_vit.data.streaming import load_stream
from hf_vit.training.arguments import FinetuneTrainingArguments

from conftest import FAST, free_port, launcher, make_imagefolder, run_script


def test_a_streamed_imagefolder_has_a_shard_for_every_reader_each_with_every_class(tmp_path):
    make_imagefolder(tmp_path / "train", classes=("a", "b", "c"), per_class=5)
    stream = stream_image_folders({"train": str(tmp_path / "train")}, num_shards=4)["train"]
    stream = stream.cast_column("image", Image(decode=False))
    assert stream.n_shards == 4
    shards = [list(stream.shard(num_shards=4, index=index)) for index in range(4)]
    paths = [example["image"]["path"] for shard in shards for example in shard]
    assert len(paths) == len(set(paths)) == 15  # every image once
    assert all({example["label"] for example in shard} == {0, 1, 2} for shard in shards)

    data_args = DataArguments(train_dir=str(tmp_path / "train"), streaming=True, max_eval_samples=3)
    training_args = FinetuneTrainingArguments(
        output_dir=str(tmp_path / "out"), dataloader_num_workers=3, max_steps=1, use_cpu=True
    )
    data = load_training_data(data_args, training_args=training_args)
    assert data.train.n_shards == 3  # 3 workers x 1 process
    assert isinstance(data.train.features["label"], ClassLabel)


def test_streaming_an_imagefolder_in_two_processes_skips_and_counts_unreadable_images(tmp_path):
    images = make_imagefolder(tmp_path / "images", per_class=12, size=(16, 16))
    for index in range(4):  # in the second class folder: the evaluation images come from the head of the stream
        (images / "dog" / f"broken{index}.png").write_bytes(b"not an image")
    output_dir = tmp_path / "stream"
    # 24 readable images, 8 held out for evaluation; 16 left for 2 processes x 2 steps x batch 4: one pass
    result = run_script(
        [
            "--output_dir",
            str(output_dir),
            "--train_dir",
            str(images),
            "--streaming",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--max_eval_samples",
            "8",
            "--disable_tqdm",
            "true",
            "--config_overrides",
            FAST[FAST.index("--config_overrides") + 1],
        ],
        launcher=launcher("ddp.yaml", "--main_process_port", str(free_port())),
    )
    metrics = json.loads((output_dir / "all_results.json").read_text())
    assert metrics["train_skipped_unreadable_images"] == 4  # each image read by one process only
    assert "4 unreadable images skipped" in result.stdout and result.stderr.count("Skipping an unreadable image") == 4
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert "on 8 images of imagefolder images after 2 steps of a stream" in result.stdout


def test_an_imagefolder_stream_lists_no_file_ahead_mixes_classes_and_labels_as_imagefolder(tmp_path):
    images = make_imagefolder(tmp_path / "train", classes=("ant", "bee", "cat"), per_class=6, size=(8, 8))
    validation = make_imagefolder(tmp_path / "validation", classes=("ant", "cat"), per_class=2, size=(8, 8))
    args = DataArguments(train_dir=str(images), validation_dir=str(validation), streaming=True)
    streams = open_source(args, streaming=True)
    make_imagefolder(tmp_path / "more", classes=("bee",), per_class=1, size=(8, 8))
    (tmp_path / "more" / "bee" / "0.png").rename(images / "bee" / "late.png")  # added after the stream was opened
    undecoded = streams["train"].cast_column("image", Image(decode=False))
    train = [(example["label"], example["image"]["path"]) for example in undecoded]
    assert len(train) == 19 and any(path.endswith("late.png") for _, path in train)  # nothing was listed ahead
    assert [label for label, _ in train[:6]] == [0, 1, 2, 0, 1, 2]  # one image of each class in turn
    # the labels imagefolder gives the same folders, over both splits (the validation split lacks "bee")
    map_style = open_source(DataArguments(train_dir=str(images), validation_dir=str(validation)))
    assert (
        streams["train"].features["label"].names == map_style["train"].features["label"].names == ["ant", "bee", "cat"]
    )
    assert (
        sorted(example["label"] for example in streams["validation"])
        == sorted(map_style["validation"]["label"])
        == [0, 0, 2, 2]
    )
    _, evaluation = load_stream(args)
    assert len(evaluation) == 4

    (images / "loose.png").write_bytes((images / "ant" / "0.png").read_bytes())
    with pytest.raises(ValueError, match=r"holds images beside its class folders \(loose.png"):
        open_source(args, streaming=True)


def test_streaming_needs_max_steps_and_a_class_label(tmp_path):
    result = run_script(["--output_dir", str(tmp_path / "out"), "--streaming"], expect_success=False)
    assert result.returncode == 2 and "--streaming needs --max_steps" in result.stderr
