"""Predict a folder or glob of pictures with a classifier checkpoint: a CSV or JSON Lines table of the top-k labels
and scores per picture, and with --attention_maps an overlay of where the model looks.

    python scripts/predict.py --model_name_or_path runs/digits-vit --inputs photos/ --output_file predictions.csv
    python scripts/predict.py --model_name_or_path runs/digits-vit --inputs 'photos/**/*.jpg' \\
        --output_file predictions.jsonl --attention_maps runs/overlays
"""

from hf_vit.inference.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
