"""Frozen-feature probes (`hf_vit.training.probe`): kNN, logistic and linear on cached features, on checkpoints and
several blocks, with little data, and the arguments that cannot work."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification, pipeline

from hf_vit.guards import UsageError
from hf_vit.inference.evaluation import evaluate_checkpoint
from hf_vit.inference.evaluation import parse_args as evaluate_args
from hf_vit.training.probe import knn_probe, probe
from hf_vit.training.probe import parse_args as probe_args

from conftest import DIGITS_SUBSET, TINY_VIT, TINY_VIT_FLAGS


def run_probe(tmp_path, name, *flags):
    args = ["--output_dir", str(tmp_path / name), *DIGITS_SUBSET, "--feature_cache_dir", str(tmp_path / "cache")]
    return probe(*probe_args([*args, *flags]))


def test_probes_share_cached_features_and_the_linear_probe_is_a_checkpoint_that_scores_what_it_reports(
    tmp_path, capsys
):
    knn = run_probe(tmp_path, "knn", "--method", "knn", *TINY_VIT_FLAGS)
    assert "train features read from the cache" not in capsys.readouterr().out
    assert knn["k"] in (1, 3, 5, 10, 20, 50, 100) and 0 < knn["accuracy"] <= 1
    logistic = run_probe(tmp_path, "logistic", "--method", "logistic", *TINY_VIT_FLAGS)
    assert "train features read from the cache" in capsys.readouterr().out  # the same random model: the same features
    run_probe(tmp_path, "mean", "--method", "knn", TINY_VIT_FLAGS[0], TINY_VIT_FLAGS[1] + ",pooling='mean'")
    assert "train features read from the cache" not in capsys.readouterr().out  # the same weights, other features
    assert logistic["C"] > 0 and logistic["num_features"] == 32
    linear = run_probe(tmp_path, "linear", "--method", "linear", "--linear_epochs", "5", *TINY_VIT_FLAGS)
    assert json.loads((tmp_path / "linear" / "probe_results.json").read_text())["accuracy"] == linear["accuracy"]
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "linear").eval()
    assert model.config.id2label[3] == "3"
    report = evaluate_checkpoint(*evaluate_args(["--model_name_or_path", str(tmp_path / "linear"), "--output_dir",
                                                 str(tmp_path / "report"), "--max_eval_samples", "60"]))  # fmt: skip
    assert report["accuracy"] == pytest.approx(linear["accuracy"], abs=1e-6)
    classifier = pipeline("image-classification", model=str(tmp_path / "linear"))
    assert len(classifier(PILImage.new("L", (8, 8)), top_k=3)) == 3
    assert "linear probe on the frozen features" in (tmp_path / "linear" / "README.md").read_text()


def test_a_probe_of_a_trained_checkpoint_and_of_several_blocks(tmp_path, trained):
    checkpoint, _ = trained
    results = run_probe(tmp_path, "knn", "--method", "knn", "--model_name_or_path", str(checkpoint), "--blocks", "2")
    assert results["num_features"] == 2 * TINY_VIT["hidden_size"] and results["model"] == str(checkpoint)


def test_a_deit_linear_probe_sets_both_heads(tmp_path):
    overrides = ",".join(f"{key}={value}" for key, value in TINY_VIT.items())
    linear = run_probe(tmp_path, "deit", "--model_type", "hf_deit", "--config_overrides", overrides, "--linear_epochs",
                       "3")  # fmt: skip
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "deit")
    torch.testing.assert_close(model.classifier.weight, model.distillation_classifier.weight)
    report = evaluate_checkpoint(*evaluate_args(["--model_name_or_path", str(tmp_path / "deit"), "--output_dir",
                                                 str(tmp_path / "report"), "--max_eval_samples", "60"]))  # fmt: skip
    assert report["accuracy"] == pytest.approx(linear["accuracy"], abs=1e-6)


def test_knn_chooses_k_and_temperature_on_the_training_split_only():
    generator = torch.Generator().manual_seed(0)
    train_y = torch.arange(60) % 3
    train_x = F.one_hot(train_y, 3).float() + 0.3 * torch.randn(60, 3, generator=generator)
    val_x = torch.randn(20, 3, generator=generator)
    chosen = {
        (result["k"], result["temperature"])
        for result in (
            knn_probe((train_x, train_y), (val_x, labels), 3) for labels in (torch.zeros(20), torch.ones(20))
        )
    }
    assert len(chosen) == 1  # the evaluation labels never change the choice


@pytest.mark.parametrize("flags, message", [
    (("--method", "svm"), r"--method must be one of \['linear', 'knn', 'logistic'\]"),
    (("--method", "linear", "--blocks", "2"), "use --blocks 1"),
    (("--method", "knn", "--model_type", "hf_swin", "--blocks", "2"), "Swin's stages widen"),
])  # fmt: skip
def test_probe_arguments_that_cannot_work_are_named(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        run_probe(tmp_path, "bad", *flags)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method", ["knn", "linear", "logistic"])
def test_probes_on_a_handful_of_pictures_give_valid_json_or_one_line(tmp_path, method):
    flags = ["--method", method, "--max_train_samples", "1" if method == "knn" else "4", "--max_eval_samples", "8"]
    args = ["--output_dir", str(tmp_path / "probe"), *TINY_VIT_FLAGS, *flags]
    if method == "logistic":  # one picture per class at most: nothing to cross-validate
        with pytest.raises(UsageError, match="every class needs 2 images"):
            probe(*probe_args(args))
        return
    results = probe(*probe_args(args))
    written = json.loads((tmp_path / "probe" / "probe_results.json").read_text())  # strict JSON: no NaN
    assert written["accuracy"] == results["accuracy"] and 0 <= results["accuracy"] <= 1
