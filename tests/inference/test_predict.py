"""Prediction over a folder (`hf_vit.inference.predict`): every kind of picture, as the pipeline sees it, the
refusals, and a table never overwritten."""

import csv
import json

import pytest
from PIL import Image as PILImage
from transformers import pipeline

from hf_vit.guards import UsageError
from hf_vit.inference.predict import parse_args as predict_args
from hf_vit.inference.predict import predict


def test_predict_a_folder_of_every_kind_of_picture_like_the_pipeline(tmp_path, trained, pictures, caplog):
    checkpoint, _ = trained
    output = tmp_path / "predictions.csv"
    args = ["--model_name_or_path", str(checkpoint), "--inputs", str(pictures), "--output_file", str(output),
            "--top_k", "3", "--attention_maps", str(tmp_path / "maps"), "--batch_size", "2"]  # fmt: skip
    result = predict(*predict_args(args))
    assert result["predicted"] == 4 and [path for path, _ in result["skipped"]] == [str(pictures / "broken.png")]
    rows = list(csv.DictReader(output.open()))
    names = ("colour.png", "gray.jpg", "transparent.png", "nested/colour.png")
    assert [row["path"] for row in rows] == [str(pictures / name) for name in names]
    classifier = pipeline("image-classification", model=str(checkpoint))
    for row in rows:
        expected = classifier(row["path"], top_k=3)  # the pipeline reads the file as every job does
        assert row["label_1"] == expected[0]["label"]
        assert float(row["score_1"]) == pytest.approx(expected[0]["score"], abs=2e-3)
    maps = sorted(path.name for path in (tmp_path / "maps").iterdir())
    assert maps == ["colour.png.png", "gray.jpg.png", "nested__colour.png.png", "transparent.png.png"]
    gray_side = PILImage.open(pictures / "gray.jpg").width
    enlarged = PILImage.open(tmp_path / "maps" / "gray.jpg.png").size
    assert enlarged[0] >= 224 and enlarged[0] % gray_side == 0 and enlarged[0] == enlarged[1]  # by a whole factor

    jsonl = tmp_path / "predictions.jsonl"
    predict(*predict_args(["--model_name_or_path", str(checkpoint), "--inputs", f"{pictures}/**/*.png",
                           "--output_file", str(jsonl), "--top_k", "20"]))  # fmt: skip
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 3 and len(lines[0]["labels"]) == 10 and sum(lines[0]["scores"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("flags, message", [
    (("--output_file", "out.txt"), r"must end in one of \['.csv', '.jsonl'\]"),
    (("--inputs", "missing/"), "'missing/': no such file or directory"),
    (("--token_merging", "2", "--attention_maps", "maps"), "--attention_maps needs every patch's own token"),
])  # fmt: skip
def test_predict_refuses_bad_arguments_before_writing(tmp_path, trained, pictures, flags, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint, _ = trained
    args = {"--model_name_or_path": str(checkpoint), "--inputs": str(pictures), "--output_file": "out.csv"}
    args.update(dict(zip(flags[::2], flags[1::2])))
    with pytest.raises(UsageError, match=message):
        predict(*predict_args([item for pair in args.items() for item in pair]))
    assert not list(tmp_path.iterdir())


def test_predict_will_not_overwrite_a_table(tmp_path, trained, pictures):
    (tmp_path / "out.csv").write_text("a finished table")
    args = ["--model_name_or_path", str(trained[0]), "--inputs", str(pictures),
            "--output_file", str(tmp_path / "out.csv")]  # fmt: skip
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        predict(*predict_args(args))
    assert (tmp_path / "out.csv").read_text() == "a finished table"
