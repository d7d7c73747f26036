"""The article's DeiT comparison: its small ViT from scratch with a naive recipe, with DeiT's recipe, and with
DeiT's recipe plus hard distillation from a small CNN teacher trained first.

    python scripts/compare_recipes.py --output_dir runs/recipes                 # embedded digits, 32 px
    python scripts/compare_recipes.py --output_dir runs/recipes --dataset_name cifar10   # where the Hub is reachable

Prints a table (accuracy, epochs, seconds) and writes results.json, results.csv and eval_curves.png.
"""

import argparse

from hf_vit.lessons.recipe_study import compare_recipes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate of every run.")
    parser.add_argument("--dataset_name", default=None, help="A Hub dataset id or local dataset dir (default: digits).")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    compare_recipes(args.output_dir, args.epochs, args.batch_size, args.learning_rate, args.dataset_name,
                    args.max_train_samples, args.seed)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
