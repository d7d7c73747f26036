"""Metrics shipped as local `evaluate` modules: `evaluate.load("accuracy")` needs the Hub, these do not."""

from pathlib import Path

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).parent


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load a metric of this folder (`accuracy`: top-1 and top-5 of scores); extra kwargs go to `evaluate.load`."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"Unknown metric {name!r}; hf_vit ships {available}")
    return evaluate.load(str(path), **kwargs)


MULTI_LABEL_THRESHOLD = 0.5  # the sigmoid score from which a class counts as predicted (the F1 scores)


def multi_label_metrics(logits: np.ndarray, targets: np.ndarray) -> dict:
    """Multi-label scores of (N, C) logits against (N, C) 0/1 targets, over the classes that have a positive image in
    the split (a class without one has no precision or recall to average): mean average precision (`mAP`) and macro
    F1 of the classes whose sigmoid reaches the threshold; micro F1 over every class. A split without a positive at
    all scores 0 (and `classes_present` says 0)."""
    from sklearn.metrics import average_precision_score, f1_score

    targets = targets > 0.5
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    present = targets.any(axis=0)
    predicted = scores >= MULTI_LABEL_THRESHOLD
    if not present.any():
        return {"mAP": 0.0, "micro_f1": 0.0, "macro_f1": 0.0, "classes_present": 0}
    return {
        "mAP": float(average_precision_score(targets[:, present], scores[:, present], average="macro")),
        "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(targets[:, present], predicted[:, present], average="macro", zero_division=0)),
        "classes_present": int(present.sum()),
    }


def compute_metrics(eval_prediction) -> dict:
    """The Trainer's `compute_metrics`: top-1 accuracy of (B, num_labels) logits, and top-5 accuracy when there are
    more than five classes (with five or fewer it would always be 1); for multi-label targets (B, num_labels),
    `multi_label_metrics`."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    if labels.ndim == 2:
        return multi_label_metrics(logits, labels)
    return load_metric("accuracy").compute(predictions=logits, references=labels)
