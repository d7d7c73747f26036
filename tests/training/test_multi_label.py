"""Multi-label data: folders and Hub-style columns train with BCE, report mAP, mix multi-hot targets, and run on two
processes."""

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, List
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification, pipeline

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.guards import UsageError
from hf_vit.inference.evaluation import evaluate_checkpoint
from hf_vit.inference.evaluation import parse_args as evaluate_args
from hf_vit.training.finetune import finetune
from hf_vit.training.finetune import parse_args as finetune_args
from hf_vit.training.regularisation import BatchMixer
from hf_vit_lessons.digit_grids import make_digit_grids

from conftest import QUIET, TINY_VIT, TINY_VIT_FLAGS, run_script


@pytest.fixture(scope="module")
def digit_grids(tmp_path_factory):
    return make_digit_grids(str(tmp_path_factory.mktemp("grids")), train_images=96, validation_images=32)


def test_multi_label_imagefolder_trains_with_bce_reports_map_and_pipeline_gives_sigmoids(tmp_path, digit_grids):
    output = tmp_path / "grids"
    args = ["--output_dir", str(output), "--train_dir", digit_grids["train"], "--validation_dir",
            digit_grids["validation"], "--label_column_name", "labels", *TINY_VIT_FLAGS, *QUIET, "--max_steps", "6",
            "--class_weights", "balanced"]  # fmt: skip
    metrics = finetune(*finetune_args(args))
    assert {"eval_mAP", "eval_micro_f1", "eval_macro_f1"} <= set(metrics) and 0 < metrics["eval_mAP"] <= 1
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert model.config.problem_type == "multi_label_classification" and model.config.num_labels == 10
    picture = PILImage.open(f"{digit_grids['validation']}/00000.png")
    scores = {entry["label"]: entry["score"] for entry in pipeline("image-classification", model=str(output))(
        picture, top_k=10)}  # fmt: skip
    assert sum(scores.values()) != pytest.approx(1.0) and all(0 < score < 1 for score in scores.values())
    report = evaluate_checkpoint(*evaluate_args(["--model_name_or_path", str(output), "--output_dir",
                                                 str(tmp_path / "report"), "--train_dir", digit_grids["train"],
                                                 "--validation_dir", digit_grids["validation"],
                                                 "--label_column_name", "labels"]))  # fmt: skip
    assert report["mAP"] == pytest.approx(metrics["eval_mAP"], abs=1e-4)
    assert "eval mAP" in (output / "README.md").read_text()
    assert (tmp_path / "report" / "reliability_diagram.png").is_file()


def test_a_hub_style_sequence_of_class_labels_column_trains_multi_label(tmp_path):
    names = ["cat", "dog", "bird"]
    features = Features({"image": Image(), "tags": List(ClassLabel(names=names))})
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("validation", 8)):
        rows = {"image": [PILImage.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(count)],
                "tags": [sorted({int(i) for i in rng.integers(0, 3, 2)}) for _ in range(count)]}  # fmt: skip
        (tmp_path / "data").mkdir(exist_ok=True)
        Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / f"{split}.parquet")
    args = ["--output_dir", str(tmp_path / "run"), "--dataset_name", str(tmp_path / "data"), "--label_column_name",
            "tags", *TINY_VIT_FLAGS, *QUIET, "--max_steps", "2"]  # fmt: skip
    metrics = finetune(*finetune_args(args))
    assert "eval_mAP" in metrics
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "run").config.id2label == dict(enumerate(names))


def test_multi_label_classes_only_the_evaluation_split_has_are_named(tmp_path, digit_grids):
    validation = tmp_path / "validation"
    shutil.copytree(digit_grids["validation"], validation)
    lines = (validation / "metadata.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"file_name": "00000.png", "labels": ["7", "eleven"]})
    (validation / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--output_dir", str(tmp_path / "run"), "--train_dir", digit_grids["train"], "--validation_dir",
            str(validation), "--label_column_name", "labels", *TINY_VIT_FLAGS, *QUIET]  # fmt: skip
    with pytest.raises(UsageError, match=r"classes no training image has: \['eleven'\]"):
        finetune(*finetune_args(args))
    assert not (tmp_path / "run").exists()


def test_mixup_and_smoothing_mix_multi_hot_targets():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pixels, mixed = BatchMixer(3, mixup_alpha=1.0, label_smoothing=0.3)(torch.randn(2, 3, 4, 4), targets)
    lam = mixed[0, 0] - 0.1  # smoothing: t * 0.7 + 0.1
    expected = (targets * lam / 0.7 + targets.roll(1, 0) * (1 - lam / 0.7)) * 0.7 + 0.1
    torch.testing.assert_close(mixed, expected)


def test_untagged_rows_and_unicode_digit_class_names_train_multi_label(tmp_path):
    folder = tmp_path / "tagged"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file_name,tags"]
    for i in range(12):
        PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png," + ["①;cat", "cat", "", "dog;①"][i % 4])  # every fourth image untagged
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["--output_dir", str(tmp_path / "run"), "--train_dir", str(folder), "--label_column_name", "tags",
            "--label_separator", ";", "--max_steps", "2", *TINY_VIT_FLAGS, *QUIET]  # fmt: skip
    finetune(*finetune_args(args))
    config = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert sorted(config["id2label"].values()) == sorted(["cat", "dog", "①"])


def test_the_unused_parameter_probe_of_a_multi_label_model_feeds_it_targets():
    from hf_vit.training.distributed import unused_parameters

    config = HfViTConfig(**TINY_VIT, num_labels=3, problem_type="multi_label_classification")
    assert unused_parameters(HfViTForImageClassification(config)) == []


def test_multi_label_data_trains_on_two_processes(tmp_path, digit_grids):
    """The data-parallel start asks the model which parameters one step leaves unused: with multi-hot targets, as
    a BCE loss takes them (class ids made it fail before the first step)."""
    from conftest import TWO_PROCESSES

    args = ["--output_dir", str(tmp_path / "ddp"), "--train_dir", digit_grids["train"], "--validation_dir",
            digit_grids["validation"], "--label_column_name", "labels", *TINY_VIT_FLAGS, *QUIET, "--max_steps", "2",
            "--per_device_train_batch_size", "8"]  # fmt: skip
    result = run_script(args, launcher=TWO_PROCESSES)
    assert result.stdout.count("eval: mAP") == 1 and (tmp_path / "ddp" / "model.safetensors").is_file()
