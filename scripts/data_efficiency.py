"""Data efficiency: the article's 32 px ViT, the same ViT with a convolutional stem, the hybrid (a small ResNet under
the same encoder) and a CNN, each trained on 10 %, 30 % and 100 % of the training split with the same epochs and
optimizer (Adam, no augmentation), evaluated on the full test split. Prints and saves the table and a plot.

    python scripts/data_efficiency.py --output_dir runs/data_efficiency        # embedded digits
"""

import argparse

from hf_vit.data import DataArguments
from hf_vit_lessons.vit_vs_cnn import DATA_EFFICIENCY_MODELS, data_efficiency


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default=None, help="a Hub dataset or local directory (default: digits)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument(
        "--models", nargs="+", choices=list(DATA_EFFICIENCY_MODELS), default=list(DATA_EFFICIENCY_MODELS)
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--output_dir", default="runs/data_efficiency")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    options = vars(args)
    data_efficiency(data_args=DataArguments(dataset_name=options.pop("dataset_name")), **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
