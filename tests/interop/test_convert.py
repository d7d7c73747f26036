"""Converting transformers and timm checkpoints (saved here from random weights) into hf_vit, with logit parity,
through the function and the script."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_vit import HfDeiTForImageClassification, HfSwinForImageClassification, HfViTForImageClassification
from hf_vit.interop.convert import convert_checkpoint, read_source
from hf_vit.models.configuration_utils import CheckpointMismatchError

from conftest import (
    HUB_TOKEN,
    REPO_ROOT,
    SMALL_VIT,
    assert_same_logits,
    make_imagefolder,
    randomize,
    run_script,
    save_timm,
    subprocess_convert,
)


def test_convert_names_a_missing_local_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="source './does_not_exist': no such file or directory"):
        read_source("./does_not_exist")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "convert_checkpoint.py"),
            "--source",
            "./does_not_exist",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "convert_checkpoint.py: error: source './does_not_exist': no such file or directory"
    assert not (tmp_path / "out").exists()


SMALL = SMALL_VIT


SWIN_SMALL = dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], num_labels=10)


LABELS = {i: f"kind_{i}" for i in range(10)}


def save_transformers(model, path):
    model.config.id2label, model.config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    model.save_pretrained(path)
    ViTImageProcessor(
        size={"height": 224, "width": 224}, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]
    ).save_pretrained(path)
    return path


def test_transformers_vit_converts_through_the_script_with_processor_card_and_labels(tmp_path):
    reference = randomize(ViTForImageClassification(ViTConfig(**SMALL)))
    source = save_transformers(reference, tmp_path / "source")
    result = subprocess_convert(["--source", str(source), "--output_dir", str(tmp_path / "out")])
    assert "hf_vit" in result.stdout
    converted = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert type(converted) is HfViTForImageClassification
    assert converted.config.id2label[3] == "kind_3"
    pixels = torch.randn(2, 3, 224, 224)
    assert_same_logits(converted, lambda x: reference(x).logits, pixels)
    pixels = torch.randn(2, 3, 288, 256)
    assert_same_logits(
        converted, lambda x: reference(x, interpolate_pos_encoding=True).logits, pixels, interpolate_pos_encoding=True
    )
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert list(processor.image_mean) == [0.1, 0.2, 0.3] and processor.size == {"height": 224, "width": 224}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "converted from a local checkpoint `source`" in card and str(tmp_path) not in card and "hf_vit" in card
    assert (tmp_path / "out" / "modeling_vit.py").exists()


def test_transformers_distilled_deit_converts_with_both_heads(tmp_path):
    reference = randomize(DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL)))
    converted = convert_checkpoint(str(save_transformers(reference, tmp_path / "deit")), str(tmp_path / "out"))
    assert type(converted) is HfDeiTForImageClassification
    assert_same_logits(converted, lambda x: reference(x).logits, torch.randn(2, 3, 224, 224))


def test_transformers_swin_converts(tmp_path):
    reference = randomize(SwinForImageClassification(SwinConfig(**SWIN_SMALL)), std=0.1)
    convert_checkpoint(str(save_transformers(reference, tmp_path / "swin")), str(tmp_path / "out"))
    converted = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert type(converted) is HfSwinForImageClassification and converted.config.window_size == 7
    assert_same_logits(converted, lambda x: reference(x).logits, torch.randn(2, 3, 224, 224))


@pytest.mark.parametrize(
    "model_args", [dict(global_pool="token"), dict(global_pool="avg", class_token=False, fc_norm=True)]
)
def test_timm_vit_converts_with_and_without_class_token(tmp_path, model_args):
    reference, source = save_timm(tmp_path, "vit", "vit_tiny_patch16_224", depth=2, dynamic_img_size=True, **model_args)
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and "pretrained_cfg" in config
    converted = convert_checkpoint(source, str(tmp_path / "out"))
    assert converted.config.class_token == model_args.get("class_token", True)
    assert_same_logits(converted, reference, torch.randn(2, 3, 224, 224))
    assert_same_logits(converted, reference, torch.randn(2, 3, 288, 320), interpolate_pos_encoding=True)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert processor.crop_size == {"height": 224, "width": 224} and processor.size == {"shortest_edge": 248}  # crop 0.9
    assert processor.resample == 3 and list(processor.image_mean) == [0.5, 0.5, 0.5]


def test_timm_distilled_deit_and_swin_convert(tmp_path):
    reference, source = save_timm(tmp_path, "deit", "deit_small_distilled_patch16_224", depth=2)
    converted = convert_checkpoint(source, str(tmp_path / "deit_out"))
    assert type(converted) is HfDeiTForImageClassification
    assert_same_logits(converted, reference, torch.randn(2, 3, 224, 224))
    reference, source = save_timm(tmp_path, "swin", "swin_tiny_patch4_window7_224", std=0.1)
    converted = convert_checkpoint(source, str(tmp_path / "swin_out"))
    assert type(converted) is HfSwinForImageClassification
    assert_same_logits(converted, reference, torch.randn(2, 3, 224, 224))


def test_pickled_weights_load_with_weights_only_and_safetensors_win(tmp_path):
    reference, source = save_timm(tmp_path, "vit", "vit_tiny_patch16_224", depth=2)
    torch.save(
        {k: torch.zeros_like(v) for k, v in reference.state_dict().items()}, tmp_path / "vit" / "pytorch_model.bin"
    )
    assert_same_logits(convert_checkpoint(source, str(tmp_path / "a")), reference, torch.randn(1, 3, 224, 224))
    (tmp_path / "vit" / "model.safetensors").unlink()
    zeros = convert_checkpoint(source, str(tmp_path / "b"))
    assert all((p == 0).all() for p in zeros.parameters())


def test_bad_sources_fail_loudly(tmp_path):
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10}))
    save_file({"fc.weight": torch.zeros(10, 512)}, tmp_path / "unknown" / "model.safetensors")
    with pytest.raises(ValueError, match=r"resnet18.*\(ResNet\) is not a model hf_vit converts"):
        convert_checkpoint(str(tmp_path / "unknown"), str(tmp_path / "out"))
    reference, source = save_timm(tmp_path, "vit", "vit_tiny_patch16_224", depth=2)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("blocks.1.mlp")}
    state["blocks.0.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "vit" / "model.safetensors")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"missing keys \(4\): vit\.encoder\.layers\.1\.mlp\.fc1\.bias.*"
        r"unexpected keys \(1\): vit\.encoder\.layers\.0\.extra\.weight",
    ):
        convert_checkpoint(source, str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="push_to_hub needs hub_model_id"):
        convert_checkpoint(str(tmp_path / "unknown"), str(tmp_path / "out3"), push_to_hub=True)
    assert not (tmp_path / "out3").exists()


def test_converted_checkpoint_fine_tunes_on_new_labels_and_size_and_goes_through_the_hub(tmp_path, hub):
    _, source = save_timm(tmp_path, "vit", "vit_tiny_patch16_224", depth=1)
    subprocess_convert(
        [
            "--source",
            source,
            "--output_dir",
            str(tmp_path / "converted"),
            "--push_to_hub",
            "--hub_model_id",
            "user/converted-vit",
        ],
        env={"HF_TOKEN": HUB_TOKEN},
    )
    assert {"model.safetensors", "preprocessor_config.json", "README.md", "modeling_vit.py"} <= set(
        hub.repos["user/converted-vit"].files()
    )
    images = make_imagefolder(tmp_path / "images", per_class=8)
    out = tmp_path / "tuned"
    run_script(
        [
            "--model_name_or_path",
            "user/converted-vit",
            "--train_dir",
            str(images),
            "--image_size",
            "64",
            "--output_dir",
            str(out),
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "8",
            "--disable_tqdm",
            "true",
            "--save_strategy",
            "no",
        ]
    )
    tuned = AutoModelForImageClassification.from_pretrained(out)
    assert tuned.config.image_size == 64 and tuned.config.num_labels == 2
    assert tuned.vit.embeddings.position_embeddings.shape == (1, 1 + 16, 192)
    assert AutoImageProcessor.from_pretrained(out).crop_size == {"height": 64, "width": 64}


def test_the_convert_help_lists_every_source_the_registry_converts():
    from hf_vit.interop.convert import command_line_description, sources

    text = command_line_description()
    for source in [*sources("transformers"), *sources("timm"), "clip (its vision tower)", "siglip2 (its vision tower)"]:
        assert source in text, source
