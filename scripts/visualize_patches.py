"""Exercise 2: patches of a 32 px image (patch 4), checked one by one against what the patch embedding consumes,
the image rebuilt from them, and the 65x65 position-embedding similarity of a random ViT (and of a trained one
with --model_name_or_path, where the 2D structure appears).

    python scripts/visualize_patches.py --output_dir runs/patches
    python scripts/visualize_patches.py --model_name_or_path runs/finetune --output_dir runs/patches
"""

import argparse
import json

import torch
from transformers import AutoModelForImageClassification

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.data import DataArguments, load_splits
from hf_vit_lessons.loop import image_tensors
from hf_vit_lessons.patches import check_patches


def report(name: str, figures: dict) -> None:
    print(f"[{name}] (a) image: {figures['image_shape']} (channels, height, width)")
    print(f"[{name}] (b) {figures['num_patches']} patches of {figures['patch_shape']}")
    mismatched = figures["mismatched_patches"]
    print(
        f"[{name}] (c) "
        + (
            "verified: every patch block matches the patch embedding input"
            if not mismatched
            else f"mismatch at patches {mismatched}"
        )
        + f"; reconstruction exact: {figures['reconstruction_exact']}"
    )
    pairs = ", ".join(f"({i}, {j}) {s:.3f}" for i, j, s in figures["most_similar_pairs"])
    print(f"[{name}] (d) {figures['similarity_shape']} cosine similarity; most similar pairs: {pairs}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default=None, help="default: the embedded digits; e.g. cifar10")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--index", type=int, default=0, help="which validation image")
    parser.add_argument("--model_name_or_path", default=None, help="a trained hf_vit / hf_deit checkpoint to compare")
    parser.add_argument("--output_dir", default="runs/visualize_patches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    splits = load_splits(DataArguments(dataset_name=args.dataset_name, image_column_name=args.image_column_name))
    pixels, _ = image_tensors(splits["validation"].select([args.index]), args.image_column_name)
    torch.manual_seed(args.seed)
    models = {"random": HfViTForImageClassification(HfViTConfig.from_preset("vit-cifar-patch4-32", num_labels=10))}
    if args.model_name_or_path:
        models["trained"] = AutoModelForImageClassification.from_pretrained(args.model_name_or_path)
    results = {}
    for name, model in models.items():
        results[name] = check_patches(pixels, model.eval(), args.output_dir, tag=name)
        report(name, results[name])
    with open(f"{args.output_dir}/patches.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
