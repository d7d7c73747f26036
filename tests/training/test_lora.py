"""LoRA through PEFT: `finetune.py --lora_rank` trains adapters and the head, saves PEFT's adapter, merges it, on
every family and on two processes."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageClassification

import hf_vit
from hf_vit import (
    HfViTConfig,
    HfViTForImageClassification,
)
from hf_vit.data import load_digits_splits
from hf_vit.guards import UsageError
from hf_vit.processors import make_image_processor
from hf_vit.training.finetune import finetune, parse_args
from hf_vit.training.lora import LoraArguments, add_lora, head_modules, lora_targets
from hf_vit.training.regularisation import ModelEMA

from conftest import TINY_CLASSIFIER, family_classifier, free_port, launcher, randomize, run_script, training_inputs

SMALL = ["--max_train_samples", "96", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
         "--disable_tqdm", "true", "--num_train_epochs", "2"]  # fmt: skip


@pytest.fixture
def base_checkpoint(tmp_path):
    config = hf_vit.HfViTConfig(**TINY_CLASSIFIER)
    model = randomize(hf_vit.HfViTForImageClassification(config), std=0.05)
    model.save_pretrained(tmp_path / "base")
    make_image_processor(32).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_lora_trains_adapters_and_head_saves_a_peft_adapter_and_merges(tmp_path, base_checkpoint):
    output_dir = tmp_path / "lora"
    metrics = finetune(
        *parse_args(
            [
                "--output_dir",
                str(output_dir),
                "--model_name_or_path",
                str(base_checkpoint),
                "--lora_rank",
                "4",
                "--lora_merge",
                "true",
                "--recipe",
                "finetune",
                *SMALL,
            ]
        )
    )
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert (
        adapter["r"] == 4
        and adapter["lora_alpha"] == 8
        and sorted(adapter["target_modules"]) == ["attention.proj", "attention.qkv"]
    )
    assert adapter["modules_to_save"] == ["classifier"] and not (output_dir / "model.safetensors").exists()
    card = (output_dir / "README.md").read_text()
    assert (
        "LoRA rank 4 on attention.qkv,attention.proj" in card
        and "layer_decay = 1.0: --lora_rank: only the adapters" in card
    )

    labels = load_digits_splits()["train"].features["label"].names
    base = AutoModelForImageClassification.from_pretrained(
        base_checkpoint,
        num_labels=10,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    reloaded = PeftModel.from_pretrained(base, output_dir).eval()
    merged = AutoModelForImageClassification.from_pretrained(output_dir / "merged").eval()
    assert type(merged) is hf_vit.HfViTForImageClassification
    assert not [key for key in merged.state_dict() if "lora" in key]
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(pixels).logits, reloaded(pixel_values=pixels).logits, atol=1e-5, rtol=0)
        # the adapters changed the encoder: the merged weights are not the base checkpoint's
        original = hf_vit.HfViTForImageClassification.from_pretrained(base_checkpoint)
        assert not torch.allclose(
            merged.vit.encoder.layers[0].attention.qkv.weight, original.vit.encoder.layers[0].attention.qkv.weight
        )
        assert torch.equal(merged.vit.encoder.layers[0].mlp.fc1.weight, original.vit.encoder.layers[0].mlp.fc1.weight)
    assert metrics["eval_accuracy"] >= 0


@pytest.mark.parametrize("family", ["hf_vit", "hf_deit", "hf_vit_hybrid", "hf_swin"])
def test_only_adapters_and_heads_learn_on_every_family(family):
    model = family_classifier(family)
    expected_heads = ["classifier", "distillation_classifier"] if family == "hf_deit" else ["classifier"]
    assert head_modules(model) == expected_heads
    peft_model = add_lora(model, LoraArguments(lora_rank=2))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(
        "lora_" in n or any(f"{head}.modules_to_save" in n for head in expected_heads) for n in trainable
    )
    peft_model(**training_inputs(family)).loss.backward()


def test_a_lora_target_that_matches_nothing_is_named_and_nothing_is_written(tmp_path, base_checkpoint):
    model = hf_vit.HfViTForImageClassification.from_pretrained(base_checkpoint)
    with pytest.raises(
        ValueError,
        match=r"--lora_target 'attention\.query' matches no linear layer of HfViTForImageClassification; "
        r"its linear layers end in \[.*'attention\.qkv'.*\]",
    ):
        lora_targets(model, "attention.qkv,attention.query")
    result = run_script(
        [
            "--output_dir",
            str(tmp_path / "out"),
            "--model_name_or_path",
            str(base_checkpoint),
            "--lora_rank",
            "4",
            "--lora_target",
            "attn.qkv",
            *SMALL,
        ],
        expect_success=False,
    )
    assert result.returncode == 2 and "--lora_target 'attn.qkv' matches no linear layer" in result.stderr
    for flags, message in (
        (["--lora_rank", "0"], "--lora_rank must be a positive integer, got 0"),
        (
            ["--lora_rank", "4", "--layer_decay", "0.75"],
            r"--layer_decay 0.75 does not apply with --lora_rank \(only the adapters",
        ),
    ):
        with pytest.raises(UsageError, match=message):
            finetune(
                *parse_args(
                    [
                        "--output_dir",
                        str(tmp_path / "out"),
                        "--model_name_or_path",
                        str(base_checkpoint),
                        *flags,
                        *SMALL,
                    ]
                )
            )
    assert not (tmp_path / "out").exists()


def test_lora_trains_on_two_processes(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    HfViTForImageClassification(HfViTConfig(**{**TINY_CLASSIFIER, "num_labels": 10})).save_pretrained(checkpoint)
    from hf_vit.processors import make_image_processor

    make_image_processor(32, 3).save_pretrained(checkpoint)
    output_dir = tmp_path / "lora"
    run_script(
        [
            "--output_dir",
            str(output_dir),
            "--model_name_or_path",
            str(checkpoint),
            "--lora_rank",
            "2",
            "--max_train_samples",
            "128",
            "--max_eval_samples",
            "32",
            "--per_device_train_batch_size",
            "32",
            "--num_train_epochs",
            "1",
            "--disable_tqdm",
            "true",
            "--save_strategy",
            "no",
        ],
        launcher=launcher("ddp.yaml", "--main_process_port", str(free_port())),
    )
    assert (output_dir / "adapter_config.json").is_file()
    assert json.loads((output_dir / "train_results.json").read_text())["epoch"] == 1.0


def test_the_ema_of_a_lora_model_follows_only_what_trains():
    from hf_vit.training.lora import LoraArguments, add_lora

    model = add_lora(HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER)), LoraArguments(lora_rank=2))
    ema = ModelEMA(model, decay=0.5)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert set(ema.shadow) == trainable and 0 < len(trainable) < len(list(model.parameters())) / 2
