"""int8 and fp16 copies of an ONNX export, and how far they are from it.

    quantize_export(onnx_path, output_path, precision, calibration=None) -> the method used
    calibration_pictures(directory, processor, num_channels, id2label) -> (model inputs, labels or None)
    compare_exports(reference_path, other_path, inputs, labels=None) -> agreement, differences, accuracies

int8 quantizes the weights of the linear layers (the blocks' QKV, projection and MLP MatMuls): static QDQ
quantization calibrated on pictures when there are some (activation ranges measured on them), dynamic quantization
(activations quantized per batch at run time) when there are none. What loses accuracy stays in fp32: the patch
embedding (a Conv), the head (the MatMuls or Gemms whose output reaches a graph output through elementwise ops
only), the attention's products of two activations, softmax and LayerNorm. fp16 converts every weight and
operation but keeps fp32 inputs and outputs (for GPUs; onnxruntime's CPU kernels run it too, slowly).
"""

import os

import numpy as np
import torch

from ..data import build_transforms, collate, decode_image, image_files, model_inputs

PRECISIONS = ("int8", "fp16")
QUANTIZED_FILES = {"int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
MAX_CALIBRATION_PICTURES = 256  # activation ranges settle long before; each picture costs a forward pass
# ops a head's output passes through on its way to a graph output (DeiT averages its two heads)
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast", "Flatten"}


def full_precision_nodes(model) -> list[str]:
    """The MatMul / Gemm nodes of an ONNX model kept out of int8: those with no weight (an initializer) as their
    second input (attention scores and mixing), and the heads, whose outputs reach a graph output through
    `ELEMENTWISE` ops only."""
    weights = {initializer.name for initializer in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    kept = {
        node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and node.input[1] not in weights
    }
    pending = [output.name for output in model.graph.output]
    seen = set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            kept.add(node.name)
        elif node.op_type in ELEMENTWISE:
            pending.extend(node.input)
    return sorted(kept)


def quantize_export(onnx_path: str, output_path: str, precision: str, calibration: list[dict] | None = None) -> str:
    """Write `output_path`, an int8 or fp16 copy of the ONNX model at `onnx_path`; int8 is static (QDQ, calibrated on
    `calibration`, a list of input dicts) or, without calibration inputs, dynamic. Returns the method's name."""
    import onnx

    model = onnx.load(onnx_path)
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(model, keep_io_types=True), output_path)
        return "fp16 weights and operations, fp32 inputs and outputs"
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    options = dict(weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    options["nodes_to_exclude"] = full_precision_nodes(model)
    if not calibration:
        quantize_dynamic(onnx_path, output_path, **options)
        return "dynamic int8 (no calibration pictures: activations quantized at run time)"

    class CalibrationPictures(CalibrationDataReader):
        def __init__(self, inputs: list[dict]):
            self.inputs = iter(inputs)

        def get_next(self):
            return next(self.inputs, None)

    quantize_static(
        onnx_path,
        output_path,
        CalibrationPictures(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        per_channel=True,
        **options,
    )
    return f"static int8 QDQ (linear layers; activations calibrated on {len(calibration)} pictures)"


def calibration_pictures(directory: str, image_processor, num_channels: int, id2label: dict | None) -> tuple:
    """The pictures under `directory` (at most `MAX_CALIBRATION_PICTURES`, spread evenly over its sorted files, so over
    all its class folders), read as every job reads them and prepared as the checkpoint evaluates them: a list of
    one-picture input dicts (numpy), and their labels when every picture sits in a folder named as one of the
    model's classes (an imagefolder of its labels), else None. A folder without readable pictures is a ValueError
    naming it."""
    transform = build_transforms(image_processor, num_channels, train=False)
    label_ids = {name: int(index) for index, name in (id2label or {}).items()}
    paths = list(image_files(directory))
    paths = paths[:: -(-len(paths) // MAX_CALIBRATION_PICTURES) or 1]
    inputs, labels = [], []
    for path in paths:
        picture = decode_image({"path": path, "bytes": None}, num_channels)
        batch = collate([model_inputs(transform(picture))])
        inputs.append({name: value.numpy() for name, value in batch.items()})
        labels.append(label_ids.get(os.path.basename(os.path.dirname(path))))
    if not inputs:
        raise ValueError(f"--calibration_dir {directory!r} holds no pictures")
    return inputs, (None if None in labels else labels)


def compare_exports(reference_path: str, other_path: str, inputs: list[dict], labels=None) -> dict:
    """Run two ONNX files (the fp32 export and a copy) in onnxruntime on the same inputs: how often their top-1
    classes agree, their largest output difference, and with `labels` each one's accuracy."""
    import onnxruntime

    sessions = [
        onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]) for path in (reference_path, other_path)
    ]
    outputs = [np.concatenate([session.run(None, feed)[0] for feed in inputs]) for session in sessions]
    reference, other = (torch.from_numpy(output).float() for output in outputs)
    comparison = dict(pictures=len(inputs), max_abs_difference=float((reference - other).abs().max()))
    if reference.ndim == 2:  # logits: classes to compare
        comparison["top1_agreement"] = float((reference.argmax(-1) == other.argmax(-1)).float().mean())
        if labels is not None:
            truth = torch.tensor(labels)
            comparison["fp32_accuracy"] = float((reference.argmax(-1) == truth).float().mean())
            comparison["accuracy"] = float((other.argmax(-1) == truth).float().mean())
    return comparison
