"""Exercise 1: the article's ViT (32 px, patch 4, d_model 128, 4 heads, 4 layers, d_ff 512) against a 3-layer
ConvNet, Adam 1e-3, batch 128, with and without augmentation (random flip + random crop).

    python scripts/compare_vit_cnn.py --output_dir runs/vit_vs_cnn             # embedded digits
    python scripts/compare_vit_cnn.py --dataset_name cifar10 --output_dir runs/cifar   # needs the Hub
"""

import argparse

from hf_vit.data import DataArguments
from hf_vit_lessons.vit_vs_cnn import compare_vit_cnn


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits"], default="digits", help="the embedded data (default)")
    parser.add_argument("--dataset_name", default=None, help="a Hub dataset or local directory instead, e.g. cifar10")
    parser.add_argument("--image_column_name", default=None)
    parser.add_argument("--label_column_name", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--output_dir", default="runs/compare_vit_cnn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_args = DataArguments(dataset_name=args.dataset_name, max_train_samples=args.max_train_samples)
    if args.dataset_name == "cifar10":  # its columns are named img / label
        data_args.image_column_name = "img"
    for name in ("image_column_name", "label_column_name"):
        if getattr(args, name):
            setattr(data_args, name, getattr(args, name))
    compare_vit_cnn(
        args.output_dir, data_args, args.epochs, args.batch_size, args.learning_rate, args.device, args.seed
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
