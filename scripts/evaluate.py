"""Evaluate a classifier checkpoint: metrics.json (accuracy, per-class scores, calibration, multi-label mAP) and
pictures (confusion matrix, reliability diagram, the most confident mistakes); --tta reports test-time augmentation.

    python scripts/evaluate.py --model_name_or_path runs/digits-vit --output_dir runs/digits-vit-eval
    python scripts/evaluate.py --model_name_or_path runs/digits-vit --output_dir runs/eval-tta --tta flip
"""

import importlib
import os
import sys

# This file shares its name with the `evaluate` library, and Python puts the running script's folder first on the
# import path: keep that folder off it, and when a sibling script's `import evaluate` finds this file, hand it the
# library instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [path for path in sys.path if os.path.abspath(path or ".") != _HERE]
if __name__ == "evaluate":
    del sys.modules["evaluate"]
    sys.modules["evaluate"] = importlib.import_module("evaluate")
else:
    from hf_vit.inference.evaluation import main

    if __name__ == "__main__":
        raise SystemExit(main())
