"""int8 and fp16 copies of an export (`export.py --quantize`): what stays in fp32, calibration on pictures read
through the checkpoint's processor, the report's comparison with the fp32 export, and refusals."""

import json

import numpy as np
import onnx
import pytest

import hf_vit
from hf_vit.guards import UsageError
from hf_vit.interop.export import export_checkpoint
from hf_vit.interop.quantization import compare_exports, full_precision_nodes, quantize_export
from hf_vit.processors import make_image_processor

from conftest import TINY_VIT, make_imagefolder, randomize, run_script


def saved_deit(directory):
    """A small distilled DeiT (two heads, averaged) that knows the classes cat and dog."""
    config = hf_vit.HfDeiTConfig(**{**TINY_VIT, "hidden_size": 64}, id2label={0: "cat", 1: "dog"})
    randomize(hf_vit.HfDeiTForImageClassification(config), std=0.05).save_pretrained(directory)
    make_image_processor(32).save_pretrained(directory)
    return str(directory)


def test_int8_calibrated_on_an_imagefolder_keeps_the_heads_and_attention_in_fp32(tmp_path):
    pictures = make_imagefolder(tmp_path / "pictures", per_class=6)
    result = run_script(
        [
            "--model_name_or_path",
            saved_deit(tmp_path / "deit"),
            "--output_dir",
            str(tmp_path / "onnx"),
            "--quantize",
            "int8",
            "--calibration_dir",
            str(pictures),
        ],  # fmt: skip
        script="export.py",
    )
    assert "model_int8.onnx: static int8 QDQ" in result.stdout and "on 12 of the calibration pictures" in result.stdout
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    quantization = report["quantization"]
    assert report["files"][-1] == "model_int8.onnx" and quantization["pictures"] == 12
    assert 0 < quantization["size_ratio"] < 1 and quantization["top1_agreement"] >= 0.9
    assert quantization["fp32_accuracy"] >= 0 and abs(quantization["accuracy"] - quantization["fp32_accuracy"]) <= 0.1

    fp32 = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    kept = full_precision_nodes(fp32)
    matmuls = [node for node in fp32.graph.node if node.op_type in ("MatMul", "Gemm")]
    weights = {initializer.name for initializer in fp32.graph.initializer}
    heads = [node.name for node in matmuls[-2:]]  # the class and distillation heads, last in the graph
    assert set(heads) <= set(kept)
    assert {node.name for node in matmuls if node.input[1] not in weights} <= set(kept)  # attention's products
    assert len(kept) < len(matmuls)  # the blocks' linear layers are quantized
    quantized = onnx.load(str(tmp_path / "onnx" / "model_int8.onnx"))
    producers = {output: node.op_type for node in quantized.graph.node for output in node.output}
    for node in quantized.graph.node:
        if node.name in heads or node.op_type == "Conv":  # full precision: no dequantized input
            assert all(producers.get(name) != "DequantizeLinear" for name in node.input), node.name
    assert sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node) > 0


def test_dynamic_int8_and_fp16_are_compared_on_the_check_inputs(tmp_path):
    report = export_checkpoint(saved_deit(tmp_path / "deit"), str(tmp_path / "int8"), quantize="int8", sizes=["32"])
    assert report["quantization"]["method"].startswith("dynamic int8")
    assert report["quantization"]["compared_on"] == "the random inputs of the export check"
    assert report["quantization"]["pictures"] == 2 and "accuracy" not in report["quantization"]
    fp32, fp16 = str(tmp_path / "int8" / "model.onnx"), str(tmp_path / "model_fp16.onnx")
    quantize_export(fp32, fp16, "fp16")
    inputs = [{"pixel_values": np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)}]
    assert compare_exports(fp32, fp16, inputs)["max_abs_difference"] < 1e-2
    weights = onnx.load(fp16).graph.initializer
    assert {weight.data_type for weight in weights if len(weight.dims) == 2} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(quantize="int4"), r"--quantize must be one of \['int8', 'fp16'\]"),
        (dict(quantize="fp16", calibration_dir="."), "--calibration_dir calibrates --quantize int8"),
        (dict(quantize="int8", calibration_dir="missing"), "'missing': no such directory"),
    ],
)
def test_bad_quantization_options_are_refused_before_writing(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        export_checkpoint(str(tmp_path / "absent"), str(tmp_path / "onnx"), **options)
    assert not (tmp_path / "onnx").exists()
