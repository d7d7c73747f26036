"""Export an hf_vit checkpoint to ONNX (model.onnx) and torch.export (model.pt2), checked with onnxruntime.

See `hf-vit export --help` and hf_vit.interop.export; this file is only the command line.
"""

from hf_vit.interop.export import main

if __name__ == "__main__":
    raise SystemExit(main())
