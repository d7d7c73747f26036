"""Frozen-feature probes of a checkpoint (or of a random model, the baseline): linear, kNN, logistic regression.

python scripts/probe.py --model_name_or_path runs/pretrain --method knn --output_dir runs/probe-knn
python scripts/probe.py --model_type hf_vit --image_size 32 --method linear --output_dir runs/probe-random
"""

from hf_vit.training.probe import main

if __name__ == "__main__":
    raise SystemExit(main())
