"""Predict a folder (or glob, or list) of pictures with a classifier checkpoint into a table, one row per picture.

    parse_args(argv) -> (PredictArguments,)
    predict(predict_args) -> {"predicted": N, "skipped": [(path, reason), ...], "output_file": ...}

Pictures of any size, mode and depth are read and prepared as `finetune` evaluates them (`data.decode_image`, the
processor's resize and crop). The table is CSV (path, label_1, score_1, ..., label_k, score_k) or JSON Lines
({"path", "labels", "scores"}), chosen by the output file's extension; scores are softmax probabilities, or a
multi-label model's independent sigmoids, as `pipeline()` gives them. `--attention_maps DIR` writes an overlay of
where the model looks per picture, over the region it saw (`attention.attention_heatmaps`: the same forward pass, at
SDPA's speed). A picture that cannot be read is skipped and
named. `scripts/predict.py` and `hf-vit predict` are its command line.
"""

import csv
import glob
import json
import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from ..checkpoints import TOKEN_MERGING_HELP
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..data import build_transforms, collate, image_files, is_image_file, model_inputs
from ..devices import loader_settings
from ..guards import check_output_dir, replaced_atomically, usage_errors
from .classifier import attention_overlay, classify, load_classifier, read_picture

logger = logging.get_logger(__name__)

TABLE_FORMATS = (".csv", ".jsonl")


@dataclass
class PredictArguments:
    """The checkpoint, the pictures, and where the predictions go."""

    _argument_group_name = "prediction"

    model_name_or_path: str = field(metadata={"help": "An image-classification checkpoint (directory or Hub id)."})
    inputs: list[str] = field(metadata={"help": "Folders (walked), globs ('photos/**/*.jpg') or picture files."})
    output_file: str = field(metadata={"help": f"The table: a path ending in one of {list(TABLE_FORMATS)}."})
    top_k: int = field(default=5, metadata={"help": "Labels per picture (at most the model's classes)."})
    batch_size: int = field(default=32, metadata={"help": "Pictures per batch."})
    attention_maps: str | None = field(
        default=None, metadata={"help": "A directory for one attention overlay per picture (<name>.png)."}
    )
    token_merging: int = field(default=0, metadata={"help": TOKEN_MERGING_HELP})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing table and overlays."})


START_HERE = ("--model_name_or_path", "--inputs", "--output_file")


def parse_args(argv=None):
    parser = grouped_parser((PredictArguments,), START_HERE, __doc__.split("\n\n")[0])
    return tuple(parse_into_dataclasses(parser, argv))


def picture_paths(inputs: list[str]) -> list[str]:
    """The picture files `inputs` name: folders walked and globs expanded (recursive with **; sorted, files with a
    picture extension only), files as given. An input that matches nothing is a FileNotFoundError naming it."""
    paths = []
    for entry in inputs:
        if os.path.isdir(entry):
            found = list(image_files(entry))
        elif glob.has_magic(entry):
            found = sorted(path for path in glob.glob(entry, recursive=True) if is_image_file(path))
        elif os.path.isfile(entry):
            found = [entry]
        else:
            raise FileNotFoundError(f"--inputs {entry!r}: no such file or directory")
        if not found:
            raise FileNotFoundError(f"--inputs {entry!r} holds no pictures")
        paths += found
    return list(dict.fromkeys(paths))


def overlay_name(path: str, root: str) -> str:
    """A flat file name for the overlay of `path`: its path under `root` with separators as '__', then .png
    (a.jpg -> a.jpg.png, so that a.jpg and a.png keep apart)."""
    return os.path.relpath(os.path.abspath(path), root).replace(os.sep, "__") + ".png"


class TableWriter:
    """Rows of (path, labels, scores) into a CSV or JSON Lines file."""

    def __init__(self, file, kind: str, top_k: int):
        self.file, self.kind = file, kind
        if kind == ".csv":
            self.csv = csv.writer(file)
            self.csv.writerow(["path", *[f"{name}_{i}" for i in range(1, top_k + 1) for name in ("label", "score")]])

    def write(self, path: str, labels: list[str], scores: list[float]) -> None:
        if self.kind == ".csv":
            self.csv.writerow([path, *[item for pair in zip(labels, (f"{s:.6f}" for s in scores)) for item in pair]])
        else:
            self.file.write(json.dumps({"path": path, "labels": labels, "scores": scores}) + "\n")


class PictureFiles(torch.utils.data.Dataset):
    """The pictures at `paths`, read (`read_picture`) and prepared by `transform` in the data-loading workers:
    (path, (C, H, W) pixels, the model's input, None), or (path, None, None, why) for a file that cannot be read."""

    def __init__(self, paths: list[str], num_channels: int, transform):
        self.paths, self.num_channels, self.transform = paths, num_channels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            picture = read_picture(path, self.num_channels)
        except ValueError as error:
            return path, None, None, str(error)
        return path, picture, self.transform(picture), None


def check_arguments(args: PredictArguments) -> str:
    """The table's format, after checking the flags and that nothing would be overwritten."""
    kind = os.path.splitext(args.output_file)[1].lower()
    if kind not in TABLE_FORMATS:
        raise ValueError(f"--output_file must end in one of {list(TABLE_FORMATS)}, got {args.output_file!r}")
    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top_k and --batch_size must be at least 1")
    if os.path.exists(args.output_file) and not args.overwrite:
        raise FileExistsError(f"--output_file {args.output_file!r} exists; pass --overwrite to replace it")
    if args.attention_maps is not None:
        if args.token_merging:
            raise ValueError("--attention_maps needs every patch's own token: leave out --token_merging")
        check_output_dir(args.attention_maps, args.overwrite, False)
    return kind


def predict(args: PredictArguments) -> dict:
    """Write the table (whole or not at all) and the overlays; returns what was predicted and skipped."""
    with usage_errors():
        kind = check_arguments(args)
        paths = picture_paths(args.inputs)
        model, image_processor = load_classifier(args.model_name_or_path, args.trust_remote_code, args.token_merging)
    channels, names = model.config.num_channels, model.config.id2label
    transform = build_transforms(image_processor, channels, train=False)
    top_k = min(args.top_k, model.config.num_labels)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])
    if args.attention_maps is not None:
        os.makedirs(args.attention_maps, exist_ok=True)
    skipped, predicted = [], 0
    directory = os.path.dirname(os.path.abspath(args.output_file))
    os.makedirs(directory, exist_ok=True)
    batches = torch.utils.data.DataLoader(
        PictureFiles(paths, channels, transform),
        batch_size=args.batch_size,
        collate_fn=list,
        **loader_settings(model.device),
    )
    with replaced_atomically(args.output_file) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        table = TableWriter(file, kind, top_k)
        for batch in tqdm(batches, desc="predicting", unit="batch"):
            skipped += [(path, error) for path, _, _, error in batch if error is not None]
            read = [(path, picture, pixel_values) for path, picture, pixel_values, error in batch if error is None]
            if not read:
                continue
            inputs = collate([model_inputs(transformed) for _, _, transformed in read])
            scores, heat = classify(model, inputs, args.attention_maps is not None)
            top = scores.topk(top_k, dim=1)
            for row, (path, picture, _) in enumerate(read):
                labels = [names[int(i)] for i in top.indices[row]]
                table.write(path, labels, [round(float(s), 6) for s in top.values[row]])
                if heat is not None:
                    picture_overlay = attention_overlay(picture, heat[row], image_processor)
                    picture_overlay.save(os.path.join(args.attention_maps, overlay_name(path, root)))
            predicted += len(read)
    if skipped:
        listed = "; ".join(f"{path}: {reason}" for path, reason in skipped[:10])
        more = " ..." if len(skipped) > 10 else ""
        logger.warning("Skipped %d unreadable picture(s): %s%s", len(skipped), listed, more)
    print(
        f"{predicted} pictures predicted -> {args.output_file}"
        + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
        + (f"; overlays in {args.attention_maps}" if args.attention_maps else "")
    )
    return dict(predicted=predicted, skipped=skipped, output_file=args.output_file)


main = command(parse_args, predict)


if __name__ == "__main__":
    raise SystemExit(main())
