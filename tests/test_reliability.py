"""Faults a review found, each pinned by the test that failed before its fix: silent wrong results, crashes on common
paths, a finished run overwritten, evaluation memory."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageClassification, TrainerCallback, TrainingArguments

from hf_vit import (
    HfDeiTConfig,
    HfSwinBackbone,
    HfSwinConfig,
    HfSwinForImageClassification,
    HfSwinForMaskedImageModeling,
    HfSwinModel,
    HfViTBackbone,
    HfViTConfig,
    HfViTForImageClassification,
    HfViTForMaskedImageModeling,
    HfViTForPreTraining,
    HfViTModel,
)
from hf_vit.cards import render_model_card
from hf_vit.guards import UsageError
from hf_vit.models.modeling_deit import deit_loss
from hf_vit.models.modeling_swin import resize_relative_position_bias_table
from hf_vit.training.distributed import unused_parameters
from hf_vit.training.finetune import finetune, parse_args
from hf_vit.training.recipes import RECIPES, RunFacts
from hf_vit.training.regularisation import ModelEMA
from hf_vit.training.trainer import HfViTTrainer, PretrainingTrainer

from conftest import REPO_ROOT, randomize
from conftest import TINY_VIT as TINY_ENCODER
from test_finetune import FAST, TINY, make_imagefolder, run_script
from test_scale import free_port, launcher

TINY_VIT = {**TINY_ENCODER, "num_labels": 3}
TINY_SWIN = dict(
    image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4, num_labels=3
)


# --- silent wrong results -------------------------------------------------------------------------------------------


def assert_started_as_new(loaded: torch.nn.Module, fresh: torch.nn.Module, missing) -> None:
    """Every weight `from_pretrained` did not find in the checkpoint starts as a new model's does: a constant one
    (ones, zeros) at the same constant, a random one finite and at about the same scale."""
    assert missing, "the test needs weights that the checkpoint lacks"
    fresh_state = fresh.state_dict()
    for name in missing:
        got, expected = loaded.state_dict()[name].float(), fresh_state[name].float()
        assert torch.isfinite(got).all(), f"{name} holds non-finite values"
        if torch.all(expected == expected.flatten()[0]):
            assert torch.all(got == expected.flatten()[0]), f"{name} should start at {expected.flatten()[0]}"
        else:
            ratio = float(got.std() / expected.std())
            assert 0.5 < ratio < 2.0, f"{name}: std {float(got.std()):.3g} vs a new model's {float(expected.std()):.3g}"


@pytest.mark.parametrize(
    "model_class, base_config, added",
    [
        (HfViTBackbone, TINY_VIT, dict(feature_pyramid_channels=16)),  # ViTDet's pyramid on a pretrained ViT
        (HfViTForImageClassification, TINY_VIT, {}),  # a new classifier head
        (
            HfViTForPreTraining,
            TINY_VIT,
            dict(
                decoder_hidden_size=16,
                decoder_num_hidden_layers=1,
                decoder_num_attention_heads=2,
                decoder_intermediate_size=32,
            ),
        ),  # MAE's decoder
        (HfViTForMaskedImageModeling, TINY_VIT, {}),  # SimMIM's decoder and mask token
        (HfSwinBackbone, TINY_SWIN, dict(out_features=["stage1", "stage2"])),  # the backbone's norms
        (HfSwinForMaskedImageModeling, TINY_SWIN, {}),
    ],
)
def test_what_a_head_or_option_adds_starts_initialised_on_the_from_pretrained_path(
    tmp_path, model_class, base_config, added
):
    config_class = HfSwinConfig if "Swin" in model_class.__name__ else HfViTConfig
    base = HfSwinModel if config_class is HfSwinConfig else HfViTModel
    base(config_class(**base_config)).save_pretrained(tmp_path / "base")
    loaded, info = model_class.from_pretrained(tmp_path / "base", **added, output_loading_info=True)
    torch.manual_seed(0)
    assert_started_as_new(loaded, model_class(loaded.config), info["missing_keys"])
    pixels = torch.randn(2, 3, 32, 32)
    outputs = loaded.eval()(pixels)
    for tensor in outputs.feature_maps if hasattr(outputs, "feature_maps") else [outputs[0]]:
        assert torch.isfinite(tensor).all()


def test_the_ema_decay_follows_max_steps_not_the_epochs():
    facts = dict(
        num_train_images=50_000,
        num_labels=10,
        image_size=32,
        model_type="hf_vit",
        from_checkpoint=False,
        has_teacher=False,
        num_train_epochs=20,
        global_batch_size=128,
    )
    by_epochs = RECIPES["deit"](RunFacts(**facts))["ema_decay"][0]
    by_steps = RECIPES["deit"](RunFacts(**facts, max_steps=500))["ema_decay"][0]
    assert by_epochs == pytest.approx(1 - 15 / (391 * 20))
    assert by_steps == pytest.approx(1 - 15 / 500)  # the last ~1/15 of the 500 steps taken
    assert 0.9**500 < 1e-20 and by_steps**500 < 1e-6  # nothing of the random start survives in the average


def test_a_shape_changing_override_of_a_checkpoint_is_refused_naming_image_size(tmp_path, capsys):
    HfViTForImageClassification(HfViTConfig(**TINY_VIT)).save_pretrained(tmp_path / "checkpoint")
    train = make_imagefolder(tmp_path / "train", per_class=4)
    for override, named in (("image_size=64", "--image_size"), ("patch_size=4", "patch_size=4")):
        args = [
            "--output_dir",
            str(tmp_path / "out"),
            "--train_dir",
            str(train),
            "--model_name_or_path",
            str(tmp_path / "checkpoint"),
            "--config_overrides",
            override,
        ]
        with pytest.raises(UsageError, match="would start weights of the checkpoint .* at random") as error:
            finetune(*parse_args(args))
        assert named in str(error.value) and "position_embeddings" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_with_other_labels_of_the_same_count_gets_a_new_head(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    config = HfViTConfig(
        **{**TINY_VIT, "image_size": 24, "patch_size": 4, "num_labels": 2},
        id2label={0: "apple", 1: "pear"},
        label2id={"apple": 0, "pear": 1},
    )
    randomize(HfViTForImageClassification(config), std=1.0).save_pretrained(checkpoint)
    old_head = AutoModelForImageClassification.from_pretrained(checkpoint).classifier.weight.detach().clone()
    train = make_imagefolder(tmp_path / "train", per_class=4)  # cat, dog
    args = [
        "--output_dir",
        str(tmp_path / "out"),
        "--train_dir",
        str(train),
        "--model_name_or_path",
        str(checkpoint),
        "--max_steps",
        "1",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--recipe",
        "plain",
        "--learning_rate",
        "1e-9",
    ]
    finetune(*parse_args(args))
    printed = capsys.readouterr().out
    assert (
        "The checkpoint's head classifies ['apple', 'pear'], the data has ['cat', 'dog']: the head starts afresh"
        in printed
    )
    assert "after 1 steps" in printed  # the closing line counts what ran
    tuned = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert tuned.config.id2label == {0: "cat", 1: "dog"}
    assert not torch.allclose(tuned.classifier.weight, old_head, atol=1e-3)
    assert tuned.classifier.weight.abs().max() < 0.1  # a new head's truncated normal, not the randomised one


def test_swin_relative_position_bias_tables_and_tokens_take_no_weight_decay(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    swin = HfSwinForImageClassification(HfSwinConfig(**TINY_SWIN, use_absolute_embeddings=True))
    decayed = HfViTTrainer(model=swin, args=args).get_decay_parameter_names(swin)
    assert not [name for name in decayed if "relative_position_bias_table" in name or "position_embeddings" in name]
    assert "swin.stages.0.blocks.0.attention.qkv.weight" in decayed
    vit = HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_register_tokens=2))
    decayed = HfViTTrainer(model=vit, args=args).get_decay_parameter_names(vit)
    assert not [name for name in decayed if name.startswith("vit.embeddings.")]
    assert "vit.encoder.layers.0.mlp.fc1.weight" in decayed


def test_the_unused_parameter_probe_leaves_batchnorm_statistics_alone():
    model = HfViTForImageClassification(HfViTConfig(**TINY_VIT, patch_embedding_type="conv_stem"))
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    assert any("running_mean" in name for name in before)
    assert unused_parameters(model) == []
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_distillation_and_label_losses_are_computed_in_fp32():
    config = HfDeiTConfig(**TINY_VIT, distillation_type="soft", distillation_tau=2.0)
    torch.manual_seed(0)
    cls_logits, distillation_logits, teacher = (torch.randn(4, 3) * 8 for _ in range(3))
    labels = torch.tensor([0, 1, 2, 0])
    half = [tensor.bfloat16() for tensor in (cls_logits, distillation_logits, teacher)]
    loss = deit_loss(*half[:2], labels, half[2], config)
    assert loss.dtype == torch.float32
    expected = deit_loss(*(tensor.float() for tensor in half[:2]), labels, half[2].float(), config)
    assert float(loss) == float(expected)  # the bf16 logits, but every term in fp32
    config.distillation_type = "hard"
    assert deit_loss(*half[:2], labels, half[2], config).dtype == torch.float32


# --- crashes on common paths ----------------------------------------------------------------------------------------


def test_lora_trains_on_two_processes(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    HfViTForImageClassification(HfViTConfig(**{**TINY_VIT, "num_labels": 10})).save_pretrained(checkpoint)
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


def test_swin_compiles_with_torch_compile_defaults():
    model = randomize(HfSwinForImageClassification(HfSwinConfig(**TINY_SWIN)))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels).logits
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(pixels).logits, expected, rtol=1e-4, atol=1e-4)


def test_export_takes_a_checkpoint_saved_without_its_processor(tmp_path, caplog):
    randomize(HfViTForImageClassification(HfViTConfig(**TINY_VIT))).save_pretrained(tmp_path / "model")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "export.py"),
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--output_dir",
            str(tmp_path / "onnx"),
            "--static_image_size",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no preprocessor_config.json: the image processor is built from config.json" in result.stderr
    assert json.loads((tmp_path / "onnx" / "preprocessor_config.json").read_text())["size"] == {
        "height": 32,
        "width": 32,
    }


def test_resizing_the_relative_position_bias_table_stays_on_its_device():
    """A fake CUDA table (no GPU needed): mixing in a CPU tensor is the error a model on a GPU would meet."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        table = torch.empty(49, 3, device="cuda")
        resized = resize_relative_position_bias_table(table, 4, 6)
    assert resized.device.type == "cuda" and resized.shape == (121, 3)


# --- losing a user's work -------------------------------------------------------------------------------------------


def test_a_second_run_into_the_same_output_dir_is_refused_unless_resumed_or_overwritten(tmp_path):
    output_dir = tmp_path / "run"
    common = ["--output_dir", str(output_dir), *FAST, "--num_train_epochs", "1"]
    run_script(common)
    first = (output_dir / "model.safetensors").read_bytes()
    result = run_script([*common, "--num_train_epochs", "2"], expect_success=False)
    assert result.returncode == 2 and f"--output_dir '{output_dir}' already holds a run" in result.stderr
    assert (output_dir / "model.safetensors").read_bytes() == first and "Traceback" not in result.stderr
    run_script([*common, "--num_train_epochs", "2", "--resume_from_checkpoint", str(output_dir / "checkpoint-2")])
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 4
    run_script([*common, "--overwrite_output_dir"])  # a new run: the old checkpoints go first
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.parametrize(
    "script, flags",
    [
        ("pretrain.py", ["--config_overrides", TINY, "--max_train_samples", "64", "--max_eval_samples", "8"]),
        ("convert_checkpoint.py", ["--source", "SOURCE"]),
        ("export.py", ["--model_name_or_path", "SOURCE"]),
    ],
)
def test_the_other_jobs_refuse_an_output_dir_that_holds_files(tmp_path, script, flags):
    source = tmp_path / "source"
    HfViTForImageClassification(HfViTConfig(**TINY_VIT)).save_pretrained(source)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "config.json").write_text("{}")
    flags = [str(source) if flag == "SOURCE" else flag for flag in flags]
    result = run_script(["--output_dir", str(output_dir), *flags], script=script, expect_success=False)
    assert (
        result.returncode == 2 and "already holds a run" in result.stderr and "--overwrite_output_dir" in result.stderr
    )
    assert sorted(os.listdir(output_dir)) == ["config.json"] and (output_dir / "config.json").read_text() == "{}"


def test_a_file_written_atomically_is_whole_or_untouched(tmp_path):
    from hf_vit.guards import replaced_atomically

    path = tmp_path / "README.md"
    path.write_text("the old card")
    with pytest.raises(OSError, match="No space left"):
        with replaced_atomically(str(path)) as temporary, open(temporary, "w") as f:
            f.write("half a ca")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "the old card" and os.listdir(tmp_path) == ["README.md"]
    with replaced_atomically(str(path)) as temporary, open(temporary, "w") as f:
        f.write("the new card")
    assert path.read_text() == "the new card" and os.listdir(tmp_path) == ["README.md"]


class FailsAtInit(TrainerCallback):
    def on_init_end(self, args, state, control, **kwargs):
        raise ValueError("an internal fault, not the user's input")


def test_an_internal_error_in_the_set_up_keeps_its_traceback_not_a_usage_error(tmp_path):
    args = ["--output_dir", str(tmp_path / "out"), *FAST, "--num_train_epochs", "1"]
    with pytest.raises(ValueError, match="an internal fault") as error:
        finetune(*parse_args(args), callbacks=[FailsAtInit()])
    assert not isinstance(error.value, UsageError)


def test_a_card_names_a_local_source_checkpoint_by_its_folder_only(tmp_path):
    model = HfViTForImageClassification(HfViTConfig(**TINY_VIT))
    model.config._name_or_path = str(tmp_path / "private" / "runs" / "my-vit")
    card = render_model_card(model, "hf_vit.md")
    assert "my-vit" in card and str(tmp_path) not in card
    model.config._name_or_path = "someone/vit-base"
    assert "fine-tuned from someone/vit-base" in render_model_card(model, "hf_vit.md")


def test_the_ema_of_a_lora_model_follows_only_what_trains():
    from hf_vit.training.lora import LoraArguments, add_lora

    model = add_lora(HfViTForImageClassification(HfViTConfig(**TINY_VIT)), LoraArguments(lora_rank=2))
    ema = ModelEMA(model, decay=0.5)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert set(ema.shadow) == trainable and 0 < len(trainable) < len(list(model.parameters())) / 2


# --- memory ---------------------------------------------------------------------------------------------------------


def test_pretraining_evaluation_keeps_the_loss_only(tmp_path):
    model = HfViTForPreTraining(
        HfViTConfig(
            **TINY_VIT,
            decoder_hidden_size=16,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=32,
        )
    )
    images = [{"pixel_values": torch.randn(3, 32, 32)} for _ in range(6)]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_eval_batch_size=2)
    trainer = PretrainingTrainer(model=model, args=args, eval_dataset=images, card_template="pretraining.md")
    output = trainer.evaluation_loop(trainer.get_eval_dataloader(), "evaluation", metric_key_prefix="eval")
    assert output.predictions is None and output.label_ids is None
    assert output.metrics["eval_loss"] > 0
