"""Export an hf_vit checkpoint to ONNX (model.onnx) and torch.export (model.pt2), checked with onnxruntime.

    python scripts/export.py --model_name_or_path runs/digits-vit --output_dir runs/digits-vit-onnx
    python scripts/export.py --model_name_or_path swin-t --output_dir swin-t-onnx --check_sizes 224 448
    python scripts/export.py --model_name_or_path runs/digits-vit --output_dir out --static_image_size

Every export has a dynamic batch; height and width are dynamic too (ViT, DeiT, hybrid: multiples of the patch
size, or any size the CNN takes; Swin: multiples of patch_size * 2**(stages - 1) * window_size) unless
--static_image_size. onnxruntime must match PyTorch within 1e-4 at two batch sizes and every checked size, or the
export fails. export_report.json records the dynamic axes and the differences.
"""

import argparse

from hf_vit.cli import OVERWRITE_HELP, TRACEBACK_FLAG, TRACEBACK_HELP, run_command
from hf_vit.export import export_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="an hf_vit checkpoint: a directory or a Hub id")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--static_image_size", action="store_true", help="export for the traced image size only")
    parser.add_argument("--check_sizes", nargs="+", default=None,
                        help="image sizes (a side or HxW) onnxruntime is checked at (default: the traced size and one step more)")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--overwrite_output_dir", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(TRACEBACK_FLAG, action="store_true", help=TRACEBACK_HELP)
    args = parser.parse_args(argv)

    def body():
        report = export_checkpoint(args.model_name_or_path, args.output_dir, not args.static_image_size, args.check_sizes,
                                   args.trust_remote_code, args.overwrite_output_dir)  # fmt: skip
        worst = max(report["max_abs_difference"].values())
        print(f"{args.model_name_or_path} -> {args.output_dir}/{{{', '.join(report['files'])}}}: {report['model_type']}, "
              f"outputs {report['outputs']}, dynamic axes {report['dynamic_axes']}; onnxruntime vs PyTorch at most "
              f"{worst:.1e} over {list(report['max_abs_difference'])}")  # fmt: skip

    return run_command(body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
