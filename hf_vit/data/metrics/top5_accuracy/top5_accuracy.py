"""Top-5 accuracy as a local `evaluate` module, loadable by path without the Hub."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-5 accuracy: the fraction of samples whose true label is among the 5 highest scores."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): per-class scores (logits), one row per sample.
    references (`list[int]`): true class ids.
Returns:
    top5_accuracy (`float`): in [0, 1]; with fewer than 5 classes every sample counts as a hit.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Top5Accuracy(evaluate.Metric):
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
        scores = np.asarray(predictions)
        top5 = np.argsort(-scores, axis=1)[:, :5]
        return {"top5_accuracy": float(np.mean((top5 == np.asarray(references)[:, None]).any(axis=1)))}
