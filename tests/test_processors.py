"""Image processors (`hf_vit.processors`): loaded without a backend warning, and the pipeline's documented inputs."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.processors import make_image_processor

from conftest import TINY_VIT


def test_image_processors_load_without_a_backend_warning(tmp_path):
    HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=2)).save_pretrained(tmp_path)
    make_image_processor(224).save_pretrained(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import hf_vit\nfrom transformers import AutoImageProcessor\n"
            f"print(type(AutoImageProcessor.from_pretrained({str(tmp_path)!r})).__name__)",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ViTImageProcessor" and "backend" not in result.stderr, result.stderr


@pytest.mark.parametrize("num_channels", [3, 1])
def test_pipeline_takes_the_documented_inputs_for_a_grayscale_array(tmp_path, tiny_vit_config, num_channels):
    tiny_vit_config.num_channels = num_channels
    HfViTForImageClassification(tiny_vit_config).save_pretrained(tmp_path)
    make_image_processor(32, num_channels).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    array = np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)  # a grayscale image, (H, W)
    documented = Image.fromarray(array) if num_channels == 3 else array[..., None]  # README: troubleshooting
    assert len(classifier(documented)) == 5
