"""Data hunger answered: pretrain the article's ViT by masked image modeling (SimMIM, MAE) on the embedded digits'
training images without labels, then fine-tune it on 10 %, 30 % and 100 % of the labels, against the same ViT
from scratch with the same fine-tuning budget, over seeds. Prints and saves the table and pretraining.png.

    python scripts/pretraining_study.py --output_dir docs/learn/pretraining             # seeds 0-2 (about an hour)
    python scripts/pretraining_study.py --output_dir runs/p --seeds 0 --fractions 0.1 --pretrain_epochs 2   # a look
"""

import argparse

from hf_vit_lessons.pretraining_study import RUNS, study_pretraining


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain_epochs", type=float, default=50)
    parser.add_argument("--finetune_epochs", type=float, default=20)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    study_pretraining(**vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
