"""Semantic segmentation with hf_vit backbones: UperNet (transformers) on a plain ViT with ViTDet's simple feature
pyramid and on Swin, trained with the Trainer on canvases of embedded digits labelled per pixel (nothing is
downloaded). Prints and saves the table (mIoU, digit mIoU, pixel accuracy) and masks.png.

    python scripts/segmentation.py --output_dir docs/learn/segmentation
    python scripts/segmentation.py --output_dir runs/seg --train_canvases 64 --epochs 1      # a quick look
"""

import argparse

from hf_vit_lessons.segmentation import BACKBONES, study_segmentation


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--train_canvases", type=int, default=1000)
    parser.add_argument("--eval_canvases", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=32, help="canvas side in pixels, a multiple of 16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    study_segmentation(**vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
