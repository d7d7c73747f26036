"""Top-1 and top-5 accuracy of per-class scores, as a local `evaluate` module loadable by path without the Hub."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Accuracy of per-class scores: top-1, the fraction of samples whose highest score is the true label, and top-5, "
    "the fraction whose true label is among the 5 highest (reported only with more than five classes, where it can "
    "miss)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): per-class scores (logits or probabilities), one row per sample.
    references (`list[int]`): true class ids.
Returns:
    accuracy (`float`): top-1, in [0, 1].
    top5_accuracy (`float`): in [0, 1], only with more than five classes.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        scores, references = np.asarray(predictions), np.asarray(references)
        metrics = {"accuracy": float(np.mean(scores.argmax(axis=1) == references))}
        if scores.shape[1] > 5:
            top5 = np.argsort(-scores, axis=1)[:, :5]
            metrics["top5_accuracy"] = float(np.mean((top5 == references[:, None]).any(axis=1)))
        return metrics
