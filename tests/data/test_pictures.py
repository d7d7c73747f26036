"""One way to read a picture in every job (`hf_vit.data.decoding`, `transforms`): predict reads files as finetune,
evaluate and probe do, and the evaluation resize uses the processor's own resampling."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.data import build_transforms, decode_image
from hf_vit.inference.classifier import read_picture
from hf_vit.inference.predict import parse_args as predict_args
from hf_vit.inference.predict import predict
from hf_vit.processors import make_image_processor, timm_image_processor

from conftest import TINY_VIT


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "vit"
    torch.manual_seed(0)
    HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=4, initializer_range=0.5)).save_pretrained(path)
    make_image_processor(32).save_pretrained(path)
    return path


def dark_pictures(folder):
    """The same dark picture as an 8-bit PNG, a 16-bit PNG and an RGBA PNG whose transparent pixels are dark too."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, (24, 24), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(folder / "eight.png")
    Image.fromarray(pixels.astype(np.uint16) * 257).save(folder / "sixteen.png")  # I;16: 257 * v maps v to v / 255
    rgba = np.dstack([pixels] * 3 + [np.where(pixels > 30, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    return folder


def test_predict_reads_16_bit_and_transparent_pictures_as_training_does(tmp_path, classifier):
    folder = dark_pictures(tmp_path)
    assert torch.equal(read_picture(str(folder / "eight.png")), decode_image({"path": str(folder / "eight.png")}, 3))
    output = tmp_path / "predictions.jsonl"
    predict(*predict_args(["--model_name_or_path", str(classifier), "--inputs", str(folder), "--output_file",
                           str(output), "--top_k", "4"]))  # fmt: skip
    rows = {
        row["path"].rsplit("/", 1)[1]: row for row in map(__import__("json").loads, output.read_text().split("\n")[:-1])
    }
    scores = {name: dict(zip(row["labels"], row["scores"])) for name, row in rows.items()}
    for other in ("sixteen.png", "transparent.png"):  # the same dark pixels, whatever the file's depth or alpha
        assert scores[other] == pytest.approx(scores["eight.png"], abs=1e-3), other


def test_the_evaluation_resize_uses_the_processors_resampling():
    bicubic = build_transforms(timm_image_processor({"input_size": (3, 32, 32)}), 3, train=False)
    bilinear = build_transforms(make_image_processor(32), 3, train=False)
    modes = lambda pipeline: [t.interpolation for t in pipeline.transforms if isinstance(t, v2.Resize)]  # noqa: E731
    assert modes(bicubic) == [v2.InterpolationMode.BICUBIC] and modes(bilinear) == [v2.InterpolationMode.BILINEAR]


def test_training_crops_take_an_elongated_picture_whole_where_evaluation_squashes_it():
    """A 1:3 strip trained at 32 x 32 with crops of at least 90 % of its area: hf_vit's processor squashes the whole
    strip at evaluation, so the crops keep the strip's shape (torchvision's square-centred ones could take a third
    of it at most, and after ten failed draws fell back to its middle); a center-cropping processor keeps them."""
    torch.manual_seed(0)
    strip = torch.arange(8 * 24, dtype=torch.uint8).reshape(1, 8, 24)  # every pixel its own value
    squashing = build_transforms(make_image_processor(32), 1, train=True, crop_scale_min=0.9, hflip_prob=0.0)
    crop = squashing.transforms[1]
    for _ in range(20):
        params = crop.make_params([v2.functional.to_image(strip)])
        assert params["height"] * params["width"] >= 0.85 * 8 * 24 and params["width"] > 2 * params["height"]
    cropping = build_transforms(timm_image_processor({"input_size": (3, 32, 32)}), 1, train=True, crop_scale_min=0.9)
    assert type(cropping.transforms[1]) is v2.RandomResizedCrop
    square = torch.zeros(1, 16, 16, dtype=torch.uint8)
    torch.manual_seed(1)
    expected = v2.RandomResizedCrop(32, scale=(0.5, 1.0)).make_params([v2.functional.to_image(square)])
    torch.manual_seed(1)
    shaped = build_transforms(make_image_processor(32), 1, train=True, crop_scale_min=0.5).transforms[1]
    assert shaped.make_params([v2.functional.to_image(square)]) == expected  # a square picture: torchvision's draws
