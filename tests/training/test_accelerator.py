"""Ready for the accelerator, checked on the CPU: losses in fp32, the MIM steps compiled, the teacher under the
student's autocast, a bf16 compiled fine-tune, pinned non-blocking copies and fused AdamW (each family's compiled
bf16 and fp16 steps are in tests/models/test_families.py). What only a GPU shows is in docs/results.md."""

import copy
import json

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule
from transformers import AutoModelForImageClassification, PretrainedConfig
from transformers.loss.loss_utils import ForSequenceClassificationLoss

import hf_vit
from hf_vit.checkpoints import load_checkpoint
from hf_vit.models.modeling_utils import image_classification_loss
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.trainer import ImageClassificationTrainer

from conftest import FAST, TINY_VIT, family_classifier, run_script, training_inputs

OPTIMIZATION = dict(learning_rate=1e-3, weight_decay=0.05, warmup_steps=0.0)


@pytest.mark.parametrize(
    "kind, labels",
    [
        ("single_label", torch.tensor([0, 2, 1, 2])),
        ("multi_label", torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])),
        ("regression", torch.tensor([0.5, -1.0, 2.0, 0.0])),
    ],
)
def test_the_loss_is_transformers_and_leaves_the_config_as_it_was(kind, labels):
    # transformers' loss writes the problem type it infers into the config on the first step; a compiled model
    # guards on that field and so compiled every model twice
    num_labels = 1 if kind == "regression" else 3
    # float (B, num_labels) labels are soft targets unless the config says multi-label (finetune.py sets it)
    config = PretrainedConfig(
        num_labels=num_labels, problem_type="multi_label_classification" if kind == "multi_label" else None
    )
    given = config.problem_type
    logits = torch.randn(4, num_labels, dtype=torch.bfloat16)
    ours = image_classification_loss(logits, labels, config)
    assert config.problem_type == given and ours.dtype == torch.float32
    expected = ForSequenceClassificationLoss(labels, logits.float(), copy.deepcopy(config))
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("method", ["mae", "simmim"])
def test_pretraining_steps_compile_in_one_graph_with_fp32_losses(method):
    if method == "mae":
        model = hf_vit.HfViTForPreTraining(hf_vit.HfViTConfig(**TINY_VIT, mask_ratio=0.75))
        extra = {}
    else:
        model = hf_vit.HfViTForMaskedImageModeling(hf_vit.HfViTConfig(**TINY_VIT))
        extra = {"bool_masked_pos": torch.rand(2, 16) < 0.5}
    compiled = torch.compile(model.train(), backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(torch.randn(2, 3, 32, 32), **extra).loss
    assert loss.dtype == torch.float32 and loss.isfinite()
    loss.backward()


def test_fp16_without_an_accelerator_is_refused_by_name(tmp_path):
    # accelerate runs --fp16 on a CPU in fp32 without a word; bf16 is what a CPU computes in
    with pytest.raises(ValueError, match="--fp16 needs a GPU.*--bf16"):
        FinetuneTrainingArguments(output_dir=str(tmp_path), fp16=True, use_cpu=True)


def test_the_teacher_runs_under_the_students_autocast(tmp_path):
    student, teacher = family_classifier("hf_deit"), family_classifier("hf_vit").eval()
    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path), bf16=True, use_cpu=True, eval_strategy="no", report_to=[], **OPTIMIZATION
    )
    trainer = ImageClassificationTrainer(model=student, args=args, teacher=teacher)
    seen = []
    teacher.classifier.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    inputs = training_inputs("hf_vit")
    student.train()
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(student, inputs)
    assert seen == [torch.bfloat16]  # it was fp32 (the autocast wrapped only the prepared student)
    assert loss.dtype == torch.float32


def test_bf16_and_compile_fine_tune_end_to_end_on_the_cpu(tmp_path):
    output_dir = tmp_path / "run"
    args = ["--output_dir", str(output_dir), "--max_steps", "2", *FAST, "--bf16", "--use_cpu", "--torch_compile"]
    run_script(args)
    metrics = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    load_checkpoint(AutoModelForImageClassification, str(output_dir))  # every key in place, no compiled wrappers


@pytest.mark.parametrize("whole", [False, True])
def test_torch_compile_compiles_the_repeated_blocks_in_place_unless_the_whole_model_is_asked(tmp_path, whole):
    args = FinetuneTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, eval_strategy="no", torch_compile=True, torch_compile_whole_model=whole,
        **OPTIMIZATION,
    )  # fmt: skip
    trainer = ImageClassificationTrainer(model=family_classifier("hf_vit"), args=args)
    prepared = trainer.accelerator.prepare_model(trainer.model)
    layers = trainer.model.vit.encoder.layers
    if whole:  # one graph of the whole model, by accelerate
        assert isinstance(prepared, OptimizedModule) and all(layer._compiled_call_impl is None for layer in layers)
    else:  # the blocks compiled in place (the last computes the CLS token only: left eager), nothing else
        assert prepared is trainer.model and not isinstance(prepared, OptimizedModule)
        assert [layer._compiled_call_impl is not None for layer in layers] == [True] * (len(layers) - 1) + [False]
        assert list(trainer.model.state_dict()) == list(family_classifier("hf_vit").state_dict())


def test_pinned_batches_are_copied_without_blocking_and_adamw_is_fused(tmp_path):
    pinned = FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_pin_memory=True)
    assert pinned.accelerator_config.non_blocking
    on_cpu = FinetuneTrainingArguments(output_dir=str(tmp_path), dataloader_pin_memory=True, use_cpu=True)
    assert not on_cpu.dataloader_pin_memory and not on_cpu.accelerator_config.non_blocking  # nothing to pin for
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, eval_strategy="no", **OPTIMIZATION)
    trainer = ImageClassificationTrainer(model=family_classifier("hf_vit"), args=args)
    optimizer = trainer.create_optimizer()
    assert optimizer.defaults.get("fused") is True  # one kernel per step for all parameters
