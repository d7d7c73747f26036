"""One way to read a picture in every job: predict and the demo read files as finetune, evaluate and probe do
(`data.decode_image`), resize with the processor's own resampling, and draw attention over the region the model saw."""

import pytest
import torch

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.processors import make_image_processor

from conftest import TINY_VIT


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "vit"
    torch.manual_seed(0)
    HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=4, initializer_range=0.5)).save_pretrained(path)
    make_image_processor(32).save_pretrained(path)
    return path


def test_the_inference_jobs_run_where_the_accelerator_is(classifier):
    """evaluate, predict, the demo and probe run the model on the GPU when there is one, in bf16 where it computes
    in bf16, with workers reading into pinned memory; on the CPU, in the process at full precision."""
    from hf_vit.devices import inference_device, inference_precision, loader_settings
    from hf_vit.inference.classifier import load_classifier

    assert loader_settings(torch.device("cpu")) == dict(num_workers=0, pin_memory=False)
    on_gpu = loader_settings(torch.device("cuda"))
    assert on_gpu["pin_memory"] and 1 <= on_gpu["num_workers"] <= 8
    model, _ = load_classifier(str(classifier))
    assert model.device.type == inference_device().type
    with inference_precision(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
