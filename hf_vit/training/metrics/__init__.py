"""Metrics shipped as local `evaluate` modules: `evaluate.load("accuracy")` needs the Hub, these do not."""

from pathlib import Path

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).parent


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load `accuracy` or `top5_accuracy` from this folder; extra kwargs go to `evaluate.load`."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"Unknown metric {name!r}; hf_vit ships {available}")
    return evaluate.load(str(path), **kwargs)


def compute_metrics(eval_prediction) -> dict:
    """The Trainer's `compute_metrics`: top-1 accuracy of (B, num_labels) logits, and top-5 accuracy when there are
    more than five classes (with five or fewer it would always be 1)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    metrics = load_metric("accuracy").compute(predictions=np.argmax(logits, axis=-1), references=labels)
    if logits.shape[-1] > 5:
        metrics.update(load_metric("top5_accuracy").compute(predictions=logits, references=labels))
    return metrics
