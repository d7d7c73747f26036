"""The evaluation report (`hf_vit.inference.evaluation`): it matches the run's own evaluation, its pictures, the
calibration error, and a checkpoint without a head refused."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

from hf_vit import HfViTConfig, HfViTModel
from hf_vit.inference.evaluation import calibration, evaluate_checkpoint
from hf_vit.inference.evaluation import parse_args as evaluate_args

from conftest import REPO_ROOT, TINY_VIT


def test_the_report_matches_the_runs_own_evaluation_and_draws_its_pictures(tmp_path, trained):
    checkpoint, metrics = trained
    flags = ["--model_name_or_path", str(checkpoint), "--max_train_samples", "200", "--max_eval_samples", "60"]
    report = evaluate_checkpoint(*evaluate_args([*flags, "--output_dir", str(tmp_path / "plain")]))
    assert report["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert report["top5_accuracy"] == pytest.approx(metrics["eval_top5_accuracy"], abs=1e-6)
    assert set(report["per_class"]) == {str(d) for d in range(10)}
    assert sum(entry["support"] for entry in report["per_class"].values()) == 60
    assert 0 <= report["expected_calibration_error"] <= 1 and 0 <= report["macro_f1"] <= 1
    for picture in ("confusion_matrix.png", "reliability_diagram.png", "mistakes.png"):
        assert PILImage.open(tmp_path / "plain" / picture).size[0] > 300
    tta = evaluate_checkpoint(*evaluate_args([*flags, "--output_dir", str(tmp_path / "tta"), "--tta", "flip_crops"]))
    assert tta["tta"]["views"] == 10 and tta["accuracy"] == report["accuracy"]
    assert tta["tta"]["gain"] == pytest.approx(tta["tta"]["accuracy"] - report["accuracy"])
    merged = evaluate_checkpoint(
        *evaluate_args([*flags, "--output_dir", str(tmp_path / "tome"), "--token_merging", "2"])
    )
    assert json.loads((tmp_path / "tome" / "metrics.json").read_text())["arguments"]["token_merging"] == 2
    assert merged["expected_calibration_error"] != report["expected_calibration_error"]  # other scores: it merged


def test_calibration_error_is_zero_when_confidence_is_accuracy():
    confidences = np.repeat([0.25, 0.75], 400)
    correct = np.concatenate([np.arange(400) % 4 == 0, np.arange(400) % 4 != 0])
    assert calibration(confidences, correct)[0] == pytest.approx(0.0)
    assert calibration(np.full(10, 0.9), np.zeros(10, bool))[0] == pytest.approx(0.9)


def test_a_checkpoint_without_a_head_is_refused_in_one_line(tmp_path):
    HfViTModel(HfViTConfig(**TINY_VIT)).save_pretrained(tmp_path / "base")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "evaluate.py"),
            "--model_name_or_path",
            str(tmp_path / "base"),
            "--output_dir",
            str(tmp_path / "report"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "has no trained head" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "report").exists()
