"""The metrics (`hf_vit.data.metrics`): accuracy and top-5 as a local `evaluate` module, multi-label mAP and F1 over
the classes present, and what the Trainer reports."""

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_vit.data.metrics import compute_metrics, load_metric


def test_top5_is_reported_only_with_more_than_five_classes():
    labels = np.array([0, 1])
    assert set(compute_metrics(EvalPrediction(np.eye(2), labels))) == {"accuracy"}
    assert set(compute_metrics(EvalPrediction(np.eye(6)[:2], labels))) == {"accuracy", "top5_accuracy"}


def test_local_metrics_load_without_the_hub():
    accuracy = load_metric("accuracy")
    four_classes = np.eye(4)[[0, 1, 2, 2]]
    assert accuracy.compute(predictions=four_classes, references=[0, 1, 1, 2]) == {"accuracy": 0.75}
    scores = [[6.0, 5, 4, 3, 2, 1, 0]] * 2  # classes 0-4 are the top five
    assert accuracy.compute(predictions=scores, references=[0, 6]) == {"accuracy": 0.5, "top5_accuracy": 0.5}
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        load_metric("f1")


def test_multi_label_macro_f1_averages_the_classes_present_and_survives_a_split_without_positives():
    from transformers import EvalPrediction

    from hf_vit.data.metrics import compute_metrics

    # class 2 has no positive in the split
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    perfect = np.where(targets > 0, 5.0, -5.0)
    metrics = compute_metrics(EvalPrediction(predictions=perfect, label_ids=targets))
    assert metrics["macro_f1"] == 1.0 and metrics["mAP"] == 1.0 and metrics["classes_present"] == 2
    empty = compute_metrics(EvalPrediction(predictions=perfect, label_ids=np.zeros_like(targets)))
    assert empty["classes_present"] == 0 and empty["macro_f1"] == 0.0
