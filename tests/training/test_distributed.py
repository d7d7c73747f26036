"""Training on several processes and machines on this machine's CPUs: FSDP2 that really shards, FSDP1 refused, the
shipped DDP config over two ranks, the unused-parameter probe."""

import json
import subprocess

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_vit import (
    HfViTConfig,
    HfViTForImageClassification,
)
from hf_vit.training.distributed import unused_parameters

from conftest import FAST, SCRIPTS, TINY_CLASSIFIER, free_port, launcher, run_script


def test_the_unused_parameter_probe_leaves_batchnorm_statistics_alone():
    model = HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER, patch_embedding_type="conv_stem"))
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    assert any("running_mean" in name for name in before)
    assert unused_parameters(model) == []
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_fsdp_shards_parameters_gradients_and_optimizer_on_cpu_resumes_and_saves_one_model(tmp_path):
    output_dir = tmp_path / "fsdp"
    common = ["--output_dir", str(output_dir), *FAST, "--per_device_train_batch_size", "32", "--recipe", "plain"]
    result = run_script(
        [*common, "--num_train_epochs", "1"], launcher=launcher("fsdp.yaml", "--main_process_port", str(free_port()))
    )
    checkpoint = output_dir / "checkpoint-2"  # 128 images / (32 x 2 processes) = 2 steps
    # FSDP's sharded checkpoint: one file of model and one of optimizer state per process, no whole optimizer.pt
    shards = sorted((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"]
    # each process holds about half of the weights (replicated ones would all be written by the first process)
    sizes = [p.stat().st_size for p in shards]
    assert min(sizes) > 0.3 * sum(sizes), sizes
    assert len(list((checkpoint / "optimizer_0").glob("*.distcp"))) == 2 and not (checkpoint / "optimizer.pt").exists()
    assert "find_unused_parameters" not in result.stderr  # no DistributedDataParallel anywhere
    model = AutoModelForImageClassification.from_pretrained(output_dir)  # the final model, gathered whole
    assert model.config.num_hidden_layers == 1 and (output_dir / "modeling_vit.py").is_file()

    run_script(
        [*common, "--num_train_epochs", "2", "--resume_from_checkpoint", str(checkpoint)],
        launcher=launcher("fsdp.yaml", "--main_process_port", str(free_port())),
    )
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 4
    assert (output_dir / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()


@pytest.mark.slow  # 10 s: a two-process launch to see one refusal
def test_fsdp1_on_cpu_is_refused_rather_than_run_as_data_parallel(tmp_path):
    result = run_script(
        ["--output_dir", str(tmp_path / "out"), *FAST, "--num_train_epochs", "1"],
        expect_success=False,
        launcher=launcher("fsdp.yaml", "--fsdp_version", "1", "--main_process_port", str(free_port())),
    )
    assert result.returncode != 0 and "FSDP on CPU needs FSDP2" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow  # a long end-to-end run; the script's short one stays in CI
def test_the_shipped_ddp_config_and_two_machine_ranks_over_loopback_train_one_model(tmp_path):
    run_script(
        ["--output_dir", str(tmp_path / "ddp"), *FAST, "--num_train_epochs", "1"],
        launcher=launcher("ddp.yaml", "--main_process_port", str(free_port())),
    )
    assert json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())["global_step"] == 1  # 128 / (64 x 2)

    port, output_dir = free_port(), tmp_path / "two-machines"
    ranks = [
        subprocess.Popen(
            [
                *launcher("multi_machine.yaml", "--machine_rank", str(rank), "--main_process_port", str(port)),
                str(SCRIPTS / "finetune.py"),
                "--output_dir",
                str(output_dir),
                *FAST,
                "--num_train_epochs",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert sum(out.count("eval: accuracy") for out, _ in outputs) == 1  # one world, one report
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 1
    AutoModelForImageClassification.from_pretrained(output_dir)
