"""Metrics shipped as local `evaluate` modules: `evaluate.load("accuracy")` needs the Hub, these do not."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load `accuracy` or `top5_accuracy` from this folder; extra kwargs go to `evaluate.load`."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"Unknown metric {name!r}; hf_vit ships {available}")
    return evaluate.load(str(path), **kwargs)
