"""Training at scale on this machine's CPUs: FSDP2 that really shards (and resumes), the shipped accelerate
configs for data parallelism on one and on two machines (two ranks over 127.0.0.1), streamed and large datasets."""

import json
import logging
import socket
import subprocess
import sys

import pytest
from datasets import Image
from transformers import AutoModelForImageClassification

from hf_vit.data import DataArguments, load_splits
from hf_vit.data.sources import open_source
from hf_vit.data.streaming import load_stream

from conftest import REPO_ROOT
from test_finetune import FAST, SCRIPTS, make_imagefolder, run_script

CONFIGS = REPO_ROOT / "scripts" / "accelerate"


def launcher(config: str, *flags: str) -> tuple:
    return (sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *flags)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fsdp_shards_parameters_gradients_and_optimizer_on_cpu_resumes_and_saves_one_model(tmp_path):
    output_dir = tmp_path / "fsdp"
    common = ["--output_dir", str(output_dir), *FAST, "--per_device_train_batch_size", "32", "--recipe", "plain"]
    result = run_script(
        [*common, "--num_train_epochs", "1"], launcher=launcher("fsdp.yaml", "--main_process_port", str(free_port()))
    )
    checkpoint = output_dir / "checkpoint-2"  # 128 images / (32 x 2 processes) = 2 steps
    # FSDP's sharded checkpoint: one file of model and one of optimizer state per process, no whole optimizer.pt
    shards = sorted((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"]
    # each process holds about half of the weights (replicated ones would all be written by the first process)
    sizes = [p.stat().st_size for p in shards]
    assert min(sizes) > 0.3 * sum(sizes), sizes
    assert len(list((checkpoint / "optimizer_0").glob("*.distcp"))) == 2 and not (checkpoint / "optimizer.pt").exists()
    assert "find_unused_parameters" not in result.stderr  # no DistributedDataParallel anywhere
    model = AutoModelForImageClassification.from_pretrained(output_dir)  # the final model, gathered whole
    assert model.config.num_hidden_layers == 1 and (output_dir / "modeling_vit.py").is_file()

    run_script(
        [*common, "--num_train_epochs", "2", "--resume_from_checkpoint", str(checkpoint)],
        launcher=launcher("fsdp.yaml", "--main_process_port", str(free_port())),
    )
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 4
    assert (output_dir / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()


def test_fsdp1_on_cpu_is_refused_rather_than_run_as_data_parallel(tmp_path):
    result = run_script(
        ["--output_dir", str(tmp_path / "out"), *FAST, "--num_train_epochs", "1"],
        expect_success=False,
        launcher=launcher("fsdp.yaml", "--fsdp_version", "1", "--main_process_port", str(free_port())),
    )
    assert result.returncode != 0 and "FSDP on CPU needs FSDP2" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow  # a long end-to-end run; the script's short one stays in CI
def test_the_shipped_ddp_config_and_two_machine_ranks_over_loopback_train_one_model(tmp_path):
    run_script(
        ["--output_dir", str(tmp_path / "ddp"), *FAST, "--num_train_epochs", "1"],
        launcher=launcher("ddp.yaml", "--main_process_port", str(free_port())),
    )
    assert json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())["global_step"] == 1  # 128 / (64 x 2)

    port, output_dir = free_port(), tmp_path / "two-machines"
    ranks = [
        subprocess.Popen(
            [
                *launcher("multi_machine.yaml", "--machine_rank", str(rank), "--main_process_port", str(port)),
                str(SCRIPTS / "finetune.py"),
                "--output_dir",
                str(output_dir),
                *FAST,
                "--num_train_epochs",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert sum(out.count("eval: accuracy") for out, _ in outputs) == 1  # one world, one report
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 1
    AutoModelForImageClassification.from_pretrained(output_dir)


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
