"""Where inference runs (`hf_vit.devices`): the accelerator when there is one, its precision, its loader settings."""

import torch


def test_the_inference_jobs_run_where_the_accelerator_is(trained):
    """evaluate, predict, the demo and probe run the model on the GPU when there is one, in bf16 where it computes
    in bf16, with workers reading into pinned memory; on the CPU, in the process at full precision."""
    from hf_vit.devices import inference_device, inference_precision, loader_settings
    from hf_vit.inference.classifier import load_classifier

    assert loader_settings(torch.device("cpu")) == dict(num_workers=0, pin_memory=False)
    on_gpu = loader_settings(torch.device("cuda"))
    assert on_gpu["pin_memory"] and 1 <= on_gpu["num_workers"] <= 8
    model, _ = load_classifier(str(trained[0]))
    assert model.device.type == inference_device().type
    with inference_precision(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
