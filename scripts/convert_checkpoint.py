"""Convert a transformers (vit, deit, swin, dinov2, dinov2_with_registers) or timm (vit_*, deit_*, deit3_*, vit_*_dinov2,
vit_*_reg4_dinov2, vit_*_siglip_*, swin_*) checkpoint into an hf_vit checkpoint.

    python scripts/convert_checkpoint.py --source google/vit-base-patch16-224 --output_dir vit-base
    python scripts/convert_checkpoint.py --source timm/swin_tiny_patch4_window7_224.ms_in1k --output_dir swin-t \
        --push_to_hub --hub_model_id me/swin-t-hf-vit
    python scripts/convert_checkpoint.py --source microsoft/swin-tiny-patch4-window7-224 --output_dir swin-t-384 \
        --image_size 384 --window_size 12
"""

import argparse

from hf_vit.cli import OVERWRITE_HELP, TRACEBACK_FLAG, TRACEBACK_HELP, run_command
from hf_vit.convert import convert_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a local directory or a Hub repo id")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=None, help="resample position embeddings to this size")
    parser.add_argument("--window_size", type=int, default=None,
                        help="Swin: attention windows of this side (relative position bias tables resampled)")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="default: HF_TOKEN or the cached login")
    parser.add_argument("--overwrite_output_dir", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(TRACEBACK_FLAG, action="store_true", help=TRACEBACK_HELP)
    args = parser.parse_args(argv)

    def body():
        model = convert_checkpoint(args.source, args.output_dir, args.image_size, args.push_to_hub, args.hub_model_id,
                                   args.hub_token, args.window_size, args.overwrite_output_dir)  # fmt: skip
        print(f"{args.source} -> {args.output_dir}: {model.config.model_type}, {model.num_parameters():,} parameters, "
              f"{model.config.num_labels} labels" + (f", pushed to {args.hub_model_id}" if args.push_to_hub else ""))  # fmt: skip

    return run_command(body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
