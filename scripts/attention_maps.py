"""Attention rollout for an hf_vit / hf_deit checkpoint: where the CLS token looks, per layer and rolled out
through the layers (Abnar & Zuidema 2020), overlaid on the image.

    python scripts/attention_maps.py --model_name_or_path runs/finetune --output_dir runs/attention
    python scripts/attention_maps.py --model_name_or_path runs/finetune --image cat.png
"""

import argparse
import os

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_vit.data import DataArguments, load_splits, open_image
from hf_vit_lessons.attention import attention_rollout, save_attention_maps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--image", default=None, help="an image file (default: a sample of the embedded digits)")
    parser.add_argument("--index", type=int, default=0, help="which digits validation image when no --image")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--output_dir", default="runs/attention_maps")
    args = parser.parse_args(argv)
    model = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path, trust_remote_code=args.trust_remote_code
    )
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    image = open_image(args.image or load_splits(DataArguments())["validation"][args.index]["image"])
    pixels = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    per_layer, rollout = attention_rollout(model.eval(), pixels)
    prediction = model.config.id2label[int(model(pixels).logits.argmax(-1))]
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "attention_maps.png")
    save_attention_maps(pixels, per_layer, rollout, path)
    np.save(os.path.join(args.output_dir, "attention_rollout.npy"), torch.cat([per_layer, rollout[None]]).numpy())
    peak = tuple(int(i) for i in np.unravel_index(int(rollout.argmax()), tuple(rollout.shape)))
    print(f"predicted {prediction!r}; {len(per_layer)} layers; the rollout peaks at patch (row, col) {peak} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
