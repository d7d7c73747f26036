"""The main job, end to end: scripts/finetune.py through the Trainer, accelerate and the (loopback) Hub; resuming,
folders at a requested size, new labels, class weights and the new presets from scratch."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, TrainerCallback, pipeline

from hf_vit import (
    HfViTForImageClassification,
)
from hf_vit.data import load_digits_splits
from hf_vit.data.batching import PatchBudgetBatches
from hf_vit.training.finetune import finetune, parse_args
from hf_vit.training.regularisation import balanced_class_weights, weighted_loss

from conftest import (
    FAST,
    HUB_TOKEN,
    TINY,
    TWO_PROCESSES,
    make_imagefolder,
    randomize,
    run_script,
    run_without_hf_vit,
)


def test_short_run_writes_a_complete_checkpoint_that_resumes_and_serves(tmp_path):
    output_dir = tmp_path / "run"
    args = ["--output_dir", str(output_dir), "--num_train_epochs", "1", *FAST]
    metrics = finetune(*parse_args(args))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_top5_accuracy" in metrics

    files = set(os.listdir(output_dir))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert {"modeling_vit.py", "configuration_vit.py", "layers.py", "eval_results.json", "all_results.json"} <= files
    assert json.loads((output_dir / "eval_results.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]
    card = (output_dir / "README.md").read_text()
    assert "digits" in card and f"{metrics['eval_accuracy']:.4f}" in card and "hf_vit" in card
    assert "$" not in card.replace("${", "")  # every template field was filled
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {str(d): str(d) for d in range(10)} and config["image_size"] == 32
    assert (
        config["position_embedding_init"] == "trunc_normal" and "position_embedding_init = None" in card
    )  # no teacher
    assert config["patch_embedding_init"] == "trunc_normal" and "patch_embedding_init = None" in card

    classifier = pipeline("image-classification", model=str(output_dir))
    image = load_digits_splits()["validation"][0]["image"]
    assert len(classifier(image)) == 5

    resumed_args = parse_args(
        [
            "--output_dir",
            str(output_dir),
            "--num_train_epochs",
            "2",
            *FAST,
            "--resume_from_checkpoint",
            str(output_dir / "checkpoint-2"),
        ]
    )
    finetune(*resumed_args)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["epoch"] == 2.0


def test_imagefolder_data_trains_at_a_requested_size(tmp_path):
    make_imagefolder(tmp_path / "train")
    make_imagefolder(tmp_path / "val", per_class=4)
    output_dir = tmp_path / "out"
    args = ["--output_dir", str(output_dir), "--train_dir", str(tmp_path / "train"),
            "--validation_dir", str(tmp_path / "val"), "--image_size", "24", "--num_train_epochs", "1",
            "--config_overrides", TINY, "--disable_tqdm", "true"]  # fmt: skip
    metrics = finetune(*parse_args(args))
    assert metrics["eval_samples_per_second"] > 0
    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.image_size == 24


def test_checkpoint_fine_tunes_on_new_labels_at_a_new_size(tmp_path, tiny_vit_config):
    from hf_vit.processors import make_image_processor

    source = randomize(HfViTForImageClassification(tiny_vit_config))  # 5 labels, 32 px, patch 8
    source.save_pretrained(tmp_path / "source")
    make_image_processor(32).save_pretrained(tmp_path / "source")
    make_imagefolder(tmp_path / "train", classes=("ant", "bee", "wasp"), per_class=6)
    output_dir = tmp_path / "tuned"
    args = ["--output_dir", str(output_dir), "--model_name_or_path", str(tmp_path / "source"),
            "--train_dir", str(tmp_path / "train"), "--image_size", "48", "--num_train_epochs", "1",
            "--learning_rate", "5e-5", "--disable_tqdm", "true", "--train_val_split", "0.25"]  # fmt: skip
    finetune(*parse_args(args))
    tuned = AutoModelForImageClassification.from_pretrained(output_dir)
    assert tuned.config.id2label == {0: "ant", 1: "bee", 2: "wasp"} and tuned.classifier.weight.shape == (3, 32)
    assert tuned.config.image_size == 48 and tuned.vit.embeddings.position_embeddings.shape == (1, 1 + 36, 32)
    assert json.loads((output_dir / "preprocessor_config.json").read_text())["size"] == {"height": 48, "width": 48}
    card = (output_dir / "README.md").read_text()
    assert "fine-tuned from a local checkpoint `source`" in card and card.startswith("---") and "# tuned" in card
    assert str(tmp_path / "source") not in card  # a card may be pushed: the source by its folder's name only


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_dataset", "--dataset_name '/no/such/dataset': no such file or directory"),
        ("missing_column", r"Column 'species' not found in the dataset; its columns are \['image', 'label'\]"),
        ("unreadable_image", r"Cannot read image .*broken\.png"),
        ("bad_image_size", "image_size 30 must be divisible by patch_size 4"),
    ],
)
def test_bad_input_fails_with_a_clear_error_and_writes_nothing(tmp_path, case, message):
    output_dir = tmp_path / "out"
    args = ["--output_dir", str(output_dir), "--num_train_epochs", "1", "--config_overrides", TINY]
    if case == "missing_dataset":
        args += ["--dataset_name", "/no/such/dataset"]
    elif case == "missing_column":
        args += ["--train_dir", str(make_imagefolder(tmp_path / "train")), "--label_column_name", "species"]
    elif case == "unreadable_image":
        args += ["--train_dir", str(make_imagefolder(tmp_path / "train", corrupt="broken.png"))]
    else:
        args += ["--image_size", "30"]
    result = run_script(args, expect_success=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert __import__("re").search(message, result.stderr), result.stderr[-3000:]
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_two_processes_under_accelerate_launch_train_one_model_and_check_the_images_once(tmp_path):
    def run(launcher, name):  # each on its own copy of the images, so that neither finds the other's cached check
        train = make_imagefolder(tmp_path / name / "train", per_class=40, corrupt="broken.png")
        args = ["--output_dir", str(tmp_path / name / "run"), "--train_dir", str(train), "--skip_unreadable_images"]
        return run_script([*args, "--num_train_epochs", "1", *FAST], launcher=launcher)

    single, result = run((sys.executable,), "single"), run(TWO_PROCESSES, "ddp")
    two = result.stdout + result.stderr
    assert two.count("Leaving out 1 unreadable image") == 2  # both processes leave the broken file out
    for split in ("train", "validation"):  # the main process's progress bars alone (each starts once, at 0 %)
        started = f"Checking {split} images:   0%"
        assert two.count(started) == (single.stdout + single.stderr).count(started) >= 1
    output_dir = tmp_path / "ddp" / "run"
    assert result.stdout.count("eval: accuracy") == 1  # only the main process reports
    assert "find_unused_parameters=True was specified" not in result.stderr  # the model uses every parameter
    steps = {name: json.loads((tmp_path / name / "run" / "trainer_state.json").read_text())["global_step"]
             for name in ("single", "ddp")}  # fmt: skip
    assert steps["ddp"] == -(-steps["single"] // 2)  # each data-parallel step takes two processes' batches
    saved = [p for p in output_dir.rglob("model.safetensors") if "checkpoint-" not in str(p)]
    assert saved == [output_dir / "model.safetensors"]
    AutoModelForImageClassification.from_pretrained(output_dir)


def test_push_to_hub_and_load_back_with_a_fresh_cache(tmp_path, hub):
    output_dir = tmp_path / "pushed"
    args = ["--output_dir", str(output_dir), "--num_train_epochs", "1", *FAST, "--push_to_hub",
            "--hub_model_id", "user/digits-vit", "--save_strategy", "no"]  # fmt: skip
    run_script(args, env={"HF_TOKEN": HUB_TOKEN})
    pushed = set(hub.repos["user/digits-vit"].files())
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "modeling_vit.py",
        "configuration_vit.py",
        "layers.py",
    } <= pushed
    assert "hf_vit" in hub.repos["user/digits-vit"].files()["README.md"].decode()

    pixels = torch.randn(2, 3, 32, 32)
    local = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    from_hub = AutoModelForImageClassification.from_pretrained("user/digits-vit", cache_dir=tmp_path / "cache").eval()
    torch.testing.assert_close(from_hub(pixels).logits, local(pixels).logits)

    torch.save({"pixels": pixels, "logits": local(pixels).logits.detach()}, tmp_path / "expected.pt")
    run_without_hf_vit(
        f"""
        import os, torch
        os.environ["HF_HOME"] = {str(tmp_path / "fresh_home")!r}
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained("user/digits-vit", trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(model(expected["pixels"]).logits, expected["logits"])
        """,
        cwd=tmp_path,
    )


@pytest.mark.slow  # 7 s: a whole run to see the Hub refuse its token; pushing itself is tested above
def test_push_with_a_wrong_token_fails_clearly(tmp_path, hub):
    args = ["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1", *FAST, "--push_to_hub",
            "--hub_model_id", "user/never-created"]  # fmt: skip
    result = run_script(args, env={"HF_TOKEN": "hf_wrong"}, expect_success=False)
    assert result.returncode != 0
    assert "401" in result.stderr and "Invalid credentials" in result.stderr, result.stderr[-3000:]
    assert "user/never-created" not in hub.repos


@pytest.mark.slow
def test_default_run_reaches_97_percent_on_digits(tmp_path):
    """The README's quick start: the article's ViT on the embedded digits, defaults only."""
    result = run_script(["--output_dir", str(tmp_path / "default")])
    metrics = json.loads((tmp_path / "default" / "eval_results.json").read_text())
    assert metrics["eval_accuracy"] >= 0.97, result.stdout[-2000:]


class Killed(Exception):
    """What a killed process leaves: the checkpoints written so far, nothing else."""


class KillAtEpoch(TrainerCallback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        if state.epoch >= self.epoch:
            raise Killed(f"killed at the start of epoch {self.epoch + 1}")


def test_a_run_with_an_ema_killed_after_epoch_two_resumes_to_the_same_weights(tmp_path):
    # an average long enough (decay 0.9 over 6 steps an epoch) that restarting it would change the weights
    common = ["--recipe", "deit", "--ema_decay", "0.9", "--num_train_epochs", "3",
              "--max_train_samples", "96", "--max_eval_samples", "48", "--disable_tqdm", "true",
              "--report_to", "none", "--seed", "0"]  # fmt: skip
    whole = finetune(*parse_args(["--output_dir", str(tmp_path / "whole"), *common]))
    with pytest.raises(Killed):
        finetune(*parse_args(["--output_dir", str(tmp_path / "killed"), *common]), callbacks=[KillAtEpoch(2)])
    checkpoint = tmp_path / "killed" / "checkpoint-12"  # 96 images / batch 16 = 6 steps per epoch
    assert (checkpoint / "ema.safetensors").is_file() and not (tmp_path / "killed" / "model.safetensors").exists()
    run_script(["--output_dir", str(tmp_path / "killed"), *common, "--resume_from_checkpoint", str(checkpoint)])
    resumed = json.loads((tmp_path / "killed" / "eval_results.json").read_text())
    assert resumed["eval_accuracy"] == whole["eval_accuracy"]
    expected, got = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "killed" / "model.safetensors"),
    )
    assert expected.keys() == got.keys()
    assert max((expected[key] - got[key]).abs().max().item() for key in expected) <= 1e-4

    (tmp_path / "whole" / "checkpoint-18" / "ema.safetensors").unlink()  # the one checkpoint kept
    with pytest.raises(FileNotFoundError, match="has no ema.safetensors: it was saved without an EMA"):
        finetune(
            *parse_args(
                [
                    "--output_dir",
                    str(tmp_path / "whole"),
                    *common,
                    "--resume_from_checkpoint",
                    str(tmp_path / "whole" / "checkpoint-18"),
                ]
            )
        )


def test_new_presets_train_from_scratch_through_finetune(tmp_path):
    from hf_vit.training.finetune import finetune, parse_args

    args = ["--output_dir", str(tmp_path / "run"), "--preset", "dinov3-small-patch16-224", "--config_overrides",
            "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64,patch_size=4",
            "--image_size", "32", "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
            "--disable_tqdm", "true", "--save_strategy", "no"]  # fmt: skip
    finetune(*parse_args(args))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["rope"] == "dinov3" and config["num_register_tokens"] == 4


def test_balanced_class_weights_are_scikit_learns_and_weigh_the_loss():
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0, 0, 0, 0, 1, 1, 2]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    torch.testing.assert_close(balanced_class_weights(labels, 3), torch.tensor(expected, dtype=torch.float32))
    assert balanced_class_weights([[0, 1], [0], [0, 2]], 3).tolist() == [0.0, 2.0, 2.0]  # negatives / positives
    logits, ids = torch.randn(7, 3), torch.tensor(labels)
    torch.testing.assert_close(weighted_loss(logits, ids, torch.ones(3), False), F.cross_entropy(logits, ids))
    rare_first = weighted_loss(logits, ids, torch.tensor([0.0, 0.0, 1.0]), False)
    torch.testing.assert_close(rare_first, F.cross_entropy(logits[6:], ids[6:]) / 7)
    with pytest.raises(ValueError, match=r"classes \[2\] have no training image"):
        balanced_class_weights([0, 1, 1], 3)


def make_shaped_folder(root, per_class: int = 8):
    """Two classes of 1:3, 3:1 and 1:1 pictures (the class is in the colour, not the shape)."""
    rng = np.random.default_rng(0)
    shapes = ((72, 24), (24, 72), (40, 40))
    for index, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = shapes[i % 3]
            pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            pixels[..., 0 if index == 0 else 2] += 180
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_finetune_at_native_aspect_ratio_saves_a_naflex_checkpoint_that_every_job_serves(tmp_path):
    train, validation = make_shaped_folder(tmp_path / "train"), make_shaped_folder(tmp_path / "val", per_class=3)
    output_dir = tmp_path / "naflex"
    args = ["--output_dir", str(output_dir), "--train_dir", str(train), "--validation_dir", str(validation),
            "--max_num_patches", "32", "--num_train_epochs", "2", "--config_overrides", TINY,
            "--per_device_train_batch_size", "8", "--disable_tqdm", "true",
            "--train_patch_budgets", "16", "32", "64"]  # fmt: skip
    result = run_script(args)
    assert "training images of up to 32 patches" in result.stdout
    # 16 pictures in batches of 8 * 32 patches: 16, 8 or 4 pictures a batch as the batch's budget is 16, 32 or 64
    schedule = PatchBudgetBatches(16, [16, 32, 64], patches_per_batch=8 * 32, seed=42).schedule  # the default seed
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2 * len(schedule)
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert type(processor).__name__.startswith("Siglip2ImageProcessor") and processor.max_num_patches == 32
    tall = Image.open(train / "red" / "0.png")  # 72 x 24
    inputs = processor(tall, return_tensors="pt")
    height, width = inputs["spatial_shapes"][0].tolist()
    assert height == 3 * width  # the picture keeps its 1:3 shape
    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert model.config.max_num_patches == 32
    predictions = pipeline("image-classification", model=str(output_dir))(tall)
    assert {p["label"] for p in predictions} == {"red", "blue"}
    with torch.no_grad():
        expected = torch.softmax(model(**inputs).logits, -1)[0]
    best = max(predictions, key=lambda p: p["score"])
    assert best["score"] == pytest.approx(float(expected.max()), abs=1e-4)
    predicted = tmp_path / "predictions.csv"
    run_script(["--model_name_or_path", str(output_dir), "--inputs", str(validation), "--output_file", str(predicted),
                "--attention_maps", str(tmp_path / "maps")], script="predict.py")  # fmt: skip
    assert len(predicted.read_text().splitlines()) == 1 + 6 and len(list((tmp_path / "maps").iterdir())) == 6
    run_script(["--model_name_or_path", str(output_dir), "--validation_dir", str(validation), "--output_dir",
                str(tmp_path / "report")], script="evaluate.py")  # fmt: skip
    assert 0 <= json.loads((tmp_path / "report" / "metrics.json").read_text())["accuracy"] <= 1


def test_a_streamed_naflex_run_trains_on_two_processes(tmp_path):
    train, validation = make_shaped_folder(tmp_path / "train"), make_shaped_folder(tmp_path / "val", per_class=3)
    output_dir = tmp_path / "streamed"
    args = ["--output_dir", str(output_dir), "--train_dir", str(train), "--validation_dir", str(validation),
            "--max_num_patches", "32", "--streaming", "--max_steps", "2", "--config_overrides", TINY,
            "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]  # fmt: skip
    result = run_script(args, launcher=TWO_PROCESSES)
    assert result.stdout.count("eval: accuracy") == 1
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert AutoModelForImageClassification.from_pretrained(output_dir).config.max_num_patches == 32
