"""Export to ONNX and torch.export for every family: onnxruntime against PyTorch at two batch sizes and two image
sizes (dynamic axes), the script, and the options that cannot be exported."""

import json
import subprocess
import sys

import onnx
import pytest
import torch

import hf_vit
from hf_vit import (
    HfViTConfig,
    HfViTForImageClassification,
)
from hf_vit.guards import UsageError
from hf_vit.interop.export import (
    PROGRAM_FILE,
    check_exportable,
    check_with_onnxruntime,
    export_checkpoint,
    export_model,
)
from hf_vit.models.configuration_vit import DINOV3
from hf_vit.processors import make_image_processor, naflex_image_processor

from conftest import REPO_ROOT, TINY_CLASSIFIER, TINY_VIT, random_pictures, randomize, run_script

VIT = {**TINY_VIT, "num_labels": 3}


MODELS = {
    # the later-ViT options together: registers, LayerScale, qk-norm, grid-only positions, CLS + mean pooling
    "hf_vit": lambda: hf_vit.HfViTForImageClassification(
        hf_vit.HfViTConfig(
            **VIT,
            num_register_tokens=2,
            layer_scale_init_value=0.1,
            qk_norm=True,
            prefix_position_embeddings=False,
            pooling="cls_mean",
        )
    ),
    "hf_deit": lambda: hf_vit.HfDeiTForImageClassification(hf_vit.HfDeiTConfig(**VIT)),
    "hf_vit_hybrid": lambda: hf_vit.HfViTHybridForImageClassification(
        hf_vit.HfViTHybridConfig.from_preset(
            "vit-hybrid-resnet-tiny-32",
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    ),
    # one stage of two blocks (regular and shifted windows): exported for every side from 4 px
    "hf_swin": lambda: hf_vit.HfSwinForImageClassification(
        hf_vit.HfSwinConfig(
            image_size=16, patch_size=2, window_size=4, embed_dim=16, depths=[2], num_heads=[2], num_labels=3
        )
    ),
}


def saved(model, directory):
    randomize(model, std=0.1).save_pretrained(directory)
    make_image_processor(model.config.image_size).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("model_type", list(MODELS))
def test_every_family_exports_with_dynamic_batch_and_size_and_matches_pytorch(tmp_path, model_type):
    model = MODELS[model_type]()
    merging = 3 if model_type == "hf_deit" else 0  # DeiT's graph merges tokens (ToMe): the merging is exported too
    report = export_checkpoint(str(saved(model, tmp_path / "model")), str(tmp_path / "onnx"), token_merging=merging)
    assert len(report["max_abs_difference"]) == 4 and report["token_merging"] == merging  # 2 batch x 2 image sizes
    assert max(report["max_abs_difference"].values()) <= 1e-4
    assert report["outputs"] == ["logits"] and set(report["dynamic_axes"]) == {"0", "2", "3"}
    dims = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [bool(dim.dim_param) for dim in dims] == [True, False, True, True]  # batch, channels fixed, height, width
    assert (tmp_path / "onnx" / "preprocessor_config.json").is_file()
    # the torch.export program serves a third size, as the model does (Swin: sides no window divides)
    step = report["size_step"][0]
    size = (model.config.image_size + 3 * step,) * 2 if model_type != "hf_swin" else (27, 21)
    pixels = torch.randn(2, 3, *size)
    program = torch.export.load(str(tmp_path / "onnx" / PROGRAM_FILE))
    kwargs = {} if model_type == "hf_swin" else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        plain = expected = model.eval()(pixels, **kwargs).logits
        if merging:
            model.config.token_merging = merging
            expected = model(pixels, **kwargs).logits
            assert (expected - plain).abs().max() > 1e-3  # merging changes the logits
    torch.testing.assert_close(program.module()(pixels), expected, atol=1e-4, rtol=0)


def test_a_base_model_exports_its_hidden_states_and_the_script_reports(tmp_path):
    encoder = hf_vit.HfViTModel(hf_vit.HfViTConfig(**{**VIT, "pooling": "map"}))
    result = run_script(
        [
            "--model_name_or_path",
            str(saved(encoder, tmp_path / "encoder")),
            "--output_dir",
            str(tmp_path / "onnx"),
            "--check_sizes",
            "32",
            "24x40",
        ],
        script="export.py",
    )
    assert "outputs ['last_hidden_state', 'pooler_output']" in result.stdout
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert list(report["max_abs_difference"]) == ["1 x 32 x 32", "3 x 32 x 32", "1 x 24 x 40", "3 x 24 x 40"]


def test_what_cannot_be_exported_is_named_and_nothing_is_written(tmp_path):
    model = MODELS["hf_vit"]()
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(
        ValueError, match=r"attn_implementation='flex_attention' cannot be exported: load the model with 'sdpa'"
    ):
        check_exportable(model.eval())
    model.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match=r"the model is in training mode"):
        check_exportable(model.train())
    source = saved(MODELS["hf_swin"](), tmp_path / "swin")
    result = run_script(
        ["--model_name_or_path", str(source), "--output_dir", str(tmp_path / "out"), "--check_sizes", "3x20"],
        script="export.py",
        expect_success=False,
    )
    assert result.returncode == 2 and "--check_sizes 3x20: this export takes sides of at least 4" in result.stderr
    with pytest.raises(UsageError, match=r"this export takes 16x16 \(static sizes\)"):
        with hf_vit.cli.usage_errors():
            export_checkpoint(str(source), str(tmp_path / "out"), dynamic_image_size=False, sizes=["24"])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # 10 s; the processor built from config.json is also tested through conversion
def test_export_takes_a_checkpoint_saved_without_its_processor(tmp_path, caplog):
    randomize(HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER))).save_pretrained(tmp_path / "model")
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


def test_a_naflex_checkpoint_exports_its_patch_input_with_a_dynamic_patch_count(tmp_path):
    """One graph for every budget: onnxruntime matches PyTorch on square, tall and wide grids at 32 and 16 patches,
    and on what the checkpoint's own processor gives for real pictures at a third budget; rotary models too."""
    import onnxruntime

    # timm's NaFlexViT options: factorized, aspect-preserving positions resized antialiased, MAP over the grid
    naflexvit = dict(factorized_positions=True, position_aspect_preserving=True, interpolation_antialias=True)
    grid_map = dict(class_token=False, num_register_tokens=1, pooling="map", pooling_prefix_tokens=False)
    config = HfViTConfig(**VIT, **naflexvit, **grid_map, max_num_patches=32)
    model = randomize(HfViTForImageClassification(config), std=0.1)
    model.save_pretrained(tmp_path / "naflex")
    naflex_image_processor(8, 32).save_pretrained(tmp_path / "naflex")
    report = export_checkpoint(str(tmp_path / "naflex"), str(tmp_path / "onnx"))
    assert report["inputs"] == ["pixel_values", "pixel_attention_mask", "spatial_shapes"]
    assert set(report["max_abs_difference"]) == {"1 x 32 patches", "3 x 32 patches", "1 x 16 patches", "3 x 16 patches"}
    assert {"0", "1"} <= set(report["dynamic_axes"])  # the batch and the patch count
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = naflex_image_processor(8, 32)(random_pictures(((60, 60), (90, 30))), max_num_patches=48,
                                           return_tensors="pt")  # fmt: skip
    (logits,) = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model.eval()(**inputs).logits, atol=1e-4, rtol=0)
    rotary = randomize(HfViTForImageClassification(HfViTConfig(**VIT, **DINOV3, max_num_patches=32))).eval()
    forward, _ = export_model(rotary, str(tmp_path / "rotary"), max_num_patches=32)
    assert max(check_with_onnxruntime(forward, str(tmp_path / "rotary" / "model.onnx"), [32, 16]).values()) <= 1e-4
