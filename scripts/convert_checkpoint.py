"""Convert a transformers or timm checkpoint into an hf_vit checkpoint.

See `hf-vit convert --help` and hf_vit.interop.convert; this file is only the command line.
"""

from hf_vit.interop.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
