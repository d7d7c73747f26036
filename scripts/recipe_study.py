"""The recipe study: the article's ViT with the plain and DeiT recipes (from scratch the default, auto, is DeiT's
scaled to the run), and DeiT distilled from a small CNN, over seeds, on the embedded digits and on crops of real
photographs (both shipped, nothing is downloaded); with `--study fine_tuning`, learning rates and layer-wise decay
when fine-tuning a checkpoint on a new label set.

    python scripts/recipe_study.py --output_dir docs/learn/recipes                  # seeds 0-2, 15 epochs
    python scripts/recipe_study.py --output_dir runs/study --seeds 0 --epochs 2     # a quick look
    python scripts/recipe_study.py --study fine_tuning --output_dir docs/learn/recipes/fine_tuning --epochs 20

Prints the table (mean, min, max final eval accuracy per dataset and run) and writes results.json / .md / .csv
and recipe_study.png.
"""

import argparse

from hf_vit_lessons.recipe_study import ABLATIONS, FINE_TUNING_RUNS, RUNS, study_fine_tuning, study_recipes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--study", choices=["recipes", "fine_tuning"], default="recipes")
    parser.add_argument(
        "--datasets", nargs="+", choices=["digits", "photo_patches"], default=["digits", "photo_patches"]
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=[*RUNS, *ABLATIONS, *FINE_TUNING_RUNS],
        default=None,
        help="default: the study's, without the ablations",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--labelled_images", type=int, default=150, help="fine_tuning: labelled images of the new task")
    args = parser.parse_args(argv)
    common = dict(output_dir=args.output_dir, seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size)
    if args.study == "fine_tuning":
        study_fine_tuning(**common, runs=args.runs or list(FINE_TUNING_RUNS), max_train_samples=args.labelled_images)
    else:
        study_recipes(
            **common, runs=args.runs or list(RUNS), datasets=args.datasets, max_train_samples=args.max_train_samples
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
