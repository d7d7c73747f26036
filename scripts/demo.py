"""A Gradio demo of a classifier checkpoint in the browser: upload a picture, see its top labels and where the model
looks. Needs the `demo` extra (pip install "hf_vit[demo]").

    python scripts/demo.py --model_name_or_path runs/digits-vit --port 7860
"""

from hf_vit.inference.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
