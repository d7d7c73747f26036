"""The aspect-ratio study: the article's ViT trained from scratch on strips of digits (wide 1:3 and tall 3:1,
labelled by the middle digit), squashed to a square against NaFlex at the same patch budget, over seeds; nothing
is downloaded.

    python scripts/aspect_study.py --output_dir docs/learn/aspect_ratio                # seeds 0-2, 10 epochs
    python scripts/aspect_study.py --output_dir runs/aspect --seeds 0 --epochs 1        # a quick look

Prints the table (mean, min, max final eval accuracy per run) and writes results.json / .md / .csv and
aspect_study.png.
"""

import argparse

from hf_vit_lessons.aspect_study import study_aspect


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--budget", type=int, default=49, help="patches per picture, both ways")
    parser.add_argument("--train_images", type=int, default=3000)
    parser.add_argument("--validation_images", type=int, default=600)
    args = parser.parse_args(argv)
    study_aspect(**vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
