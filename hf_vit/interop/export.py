"""hf_vit checkpoints as ONNX models and `torch.export` programs, checked against PyTorch with onnxruntime.

    export_checkpoint(model_name_or_path, output_dir)  -> report: files, dynamic axes, the largest differences

Every family exports with a dynamic batch. Image height and width are dynamic too where the graph can follow
them: ViT, DeiT and the hybrid resample their position embeddings inside the graph (any multiple of the patch
size, or of the backbone's stride); Swin takes every size its eager model takes from a small minimum up (36 px for
Swin-T), each stage's map padded to whole windows, and windows shrunk on small maps, inside the graph. A NaFlex
checkpoint (its processor cuts pictures into patches) exports its patch input instead: `pixel_values` (B, N, p * p
* C), `pixel_attention_mask` (B, N) and `spatial_shapes` (B, 2), with a dynamic patch count N, so one graph serves
every budget. `--quantize` adds an int8 or fp16 copy (`quantization`). onnx, onnxscript and onnxruntime are
imported when an export runs (`pip install hf_vit[export]`).
"""

import argparse
import inspect
import json
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from ..checkpoints import TOKEN_MERGING_HELP, load_checkpoint, set_token_merging
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..guards import OVERWRITE_HELP, check_local_path, check_output_dir, usage_errors
from ..models.configuration_utils import to_2tuple
from ..processors import checkpoint_image_processor, is_naflex
from .quantization import PRECISIONS, QUANTIZED_FILES, calibration_pictures, compare_exports, quantize_export

ONNX_FILE, PROGRAM_FILE, REPORT_FILE = "model.onnx", "model.pt2", "export_report.json"
TOLERANCE = 1e-4  # the largest |onnxruntime - PyTorch| an export may show


class ExportedForward(torch.nn.Module):
    """What the exported graph computes: (B, C, H, W) pixel values -> logits (a classifier) or (last_hidden_state,
    pooler_output) (a base model), at other sizes too (`interpolate_pos_encoding`) where the model resamples."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.resamples = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        self.classifies = hasattr(model, "classifier")
        self.output_names = ["logits"] if self.classifies else ["last_hidden_state", "pooler_output"]

    input_names = ("pixel_values",)

    def forward(self, pixel_values):
        kwargs = {"interpolate_pos_encoding": True} if self.resamples else {}
        return self.outputs(self.model(pixel_values, return_dict=True, **kwargs))

    def outputs(self, output):
        return output.logits if self.classifies else (output.last_hidden_state, output.pooler_output)


class ExportedNaFlexForward(ExportedForward):
    """The graph of a NaFlex checkpoint: patches (B, N, p * p * C), their mask (B, N) and each picture's grid (B, 2)
    -> the same outputs."""

    input_names = ("pixel_values", "pixel_attention_mask", "spatial_shapes")

    def forward(self, pixel_values, pixel_attention_mask, spatial_shapes):
        output = self.model(
            pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes, return_dict=True
        )
        return self.outputs(output)


def load_model(model_name_or_path: str, trust_remote_code: bool = False):
    """The checkpoint's classifier (or its base model, for a checkpoint without a head), in eval mode, with SDPA or
    eager attention (the kernels torch.export can trace)."""
    check_local_path(model_name_or_path, "--model_name_or_path")
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    architecture = (config.architectures or [""])[0]
    auto_class = AutoModelForImageClassification if architecture.endswith("ForImageClassification") else AutoModel
    return load_checkpoint(auto_class, model_name_or_path, trust_remote_code=trust_remote_code).eval()


def check_exportable(model) -> None:
    """Options that cannot be exported, named: an attention kernel outside PyTorch (flash, flex), a model in training
    mode (stochastic depth and dropout would be frozen into the graph)."""
    kernel = model.config._attn_implementation
    if kernel not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation={kernel!r} cannot be exported: load the model with 'sdpa' or 'eager'")
    if model.training:
        raise ValueError(
            "the model is in training mode (dropout, stochastic depth): call model.eval() before exporting"
        )


def grid_within(budget: int, ratio: float) -> tuple[int, int]:
    """(rows, columns) of about `ratio` rows per column, at most `budget` patches."""
    columns = max(1, int((budget / ratio) ** 0.5))
    return min(budget // columns, max(1, round(ratio * columns))), columns


def naflex_example(model, batch_size: int, budget: int) -> dict:
    """Random NaFlex inputs: `batch_size` pictures of square, tall (3:1) and wide (1:3) patch grids in turn, each
    within `budget` patches and padded to it."""
    patch, channels = to_2tuple(model.config.patch_size)[0], model.config.num_channels
    spatial_shapes = torch.tensor([grid_within(budget, (1, 3, 1 / 3)[i % 3]) for i in range(batch_size)])
    present = torch.arange(budget)[None] < spatial_shapes.prod(-1)[:, None]
    patches = torch.randn(batch_size, budget, patch * patch * channels) * present[..., None]
    # the dtypes transformers' Siglip2ImageProcessor gives
    return dict(pixel_values=patches, pixel_attention_mask=present.to(torch.int32), spatial_shapes=spatial_shapes)


def is_swin(model) -> bool:
    return getattr(model.config, "window_size", None) is not None


def size_step(model) -> tuple[int, int]:
    """(h, w) the exported image sides are multiples of: the patch size (ViT, DeiT), one pixel (the hybrid's CNN;
    Swin, which pads every stage's map as its eager forward does)."""
    if is_swin(model):
        return 1, 1
    return tuple(model.base_model.patch_embeddings.input_multiple)


def smallest_swin_side(config) -> int:
    """The smallest image side a Swin export takes: its last stage's map at least 2 wide, as torch.export can tell
    from the side alone (each patch merging halves the map, rounding up)."""
    side = config.patch_size
    while True:
        size = side // config.patch_size
        for _ in config.depths[1:]:
            size = (size + 1) // 2
        if size >= 2:
            return side
        side += 1


def example_size(model, dynamic_image_size: bool = True) -> tuple[int, int]:
    """The traced image size: the config's, rounded down to a multiple of the export step and at least two steps
    (torch.export fixes a dimension traced at one step to that size). Swin is traced where every stage's map is
    padded and holds several windows (2 * window + 1 at the last stage; one side a half-stride shorter), so that no
    branch of the general case is fixed in the graph."""
    config = model.config
    if is_swin(model) and dynamic_image_size:
        side = (2 * config.window_size + 1) * config.total_stride
        return side, side - config.total_stride // 2
    step_h, step_w = size_step(model)
    height, width = to_2tuple(config.image_size)
    return max(2 * step_h, height // step_h * step_h), max(2 * step_w, width // step_w * step_w)


def dynamic_shapes(model, dynamic_image_size: bool) -> dict:
    """torch.export's dynamic dimensions: the batch, and the sides as multiples of the step (a step of one pixel:
    Swin, from its smallest side up; the hybrid's CNN, any side the CNN takes, its range found by torch.export)."""
    step_h, step_w = size_step(model)
    axes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic_image_size:
        for axis, step, name in ((2, step_h, "rows"), (3, step_w, "columns")):
            if is_swin(model):
                axes[axis] = torch.export.Dim(name, min=smallest_swin_side(model.config), max=4096)
            elif step == 1:
                axes[axis] = torch.export.Dim.AUTO
            else:
                axes[axis] = step * torch.export.Dim(name, min=1, max=4096 // step)
    return {"pixel_values": axes}


def dynamic_axes(program) -> dict:
    """{axis: "symbol in [low, high]"} of the program's input: what sizes the exported graph takes."""
    shape = program.graph_signature.user_inputs and next(
        node.meta["val"].shape
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs
    )
    axes = {}
    for axis, size in enumerate(shape):
        if isinstance(size, torch.SymInt):
            symbols = size.node.expr.free_symbols
            ranges = [program.range_constraints[symbol] for symbol in symbols if symbol in program.range_constraints]
            bounds = (
                f" ({', '.join(f'{symbol} in [{r.lower}, {r.upper}]' for symbol, r in zip(symbols, ranges))})"
                if ranges
                else ""
            )
            axes[str(axis)] = f"{size.node.expr}{bounds}"
    return axes


def export_model(model, output_dir: str, dynamic_image_size: bool = True, max_num_patches: int | None = None):
    """Write `model.pt2` (torch.export) and `model.onnx` (torch.onnx's dynamo exporter) to `output_dir`; with
    `max_num_patches`, the NaFlex patch input traced at that budget (the patch count dynamic unless not
    `dynamic_image_size`). Returns (the exported forward, the exported program)."""
    naflex = max_num_patches is not None
    check_exportable(model)
    if naflex:
        forward = ExportedNaFlexForward(model).eval()
        example = naflex_example(model, 2, max_num_patches)
        batch = torch.export.Dim("batch", min=1, max=4096)
        patches = {1: torch.export.Dim("patches", min=2, max=65536)} if dynamic_image_size else {}
        shapes = {
            "pixel_values": {0: batch, **patches},
            "pixel_attention_mask": {0: batch, **patches},
            "spatial_shapes": {0: batch},
        }
    else:
        forward = ExportedForward(model).eval()
        height, width = example_size(model, dynamic_image_size)
        example = dict(pixel_values=torch.randn(2, model.config.num_channels, height, width))
        shapes = dynamic_shapes(model, dynamic_image_size)
    arguments = tuple(example[name] for name in forward.input_names)
    with torch.no_grad():
        program = torch.export.export(forward, arguments, dynamic_shapes=shapes, strict=False)
    os.makedirs(output_dir, exist_ok=True)
    torch.export.save(program, os.path.join(output_dir, PROGRAM_FILE))
    onnx_program = torch.onnx.export(
        program,
        arguments,
        input_names=list(forward.input_names),
        output_names=forward.output_names,
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(os.path.join(output_dir, ONNX_FILE))
    return forward, program


def check_cases(forward, sizes, batch_sizes=(1, 3)) -> dict:
    """{"B x H x W" (or "B x N patches"): the inputs} of random pixels (or NaFlex patches of square, tall and wide
    grids) at every batch size and checked size (a NaFlex export's sizes are patch budgets)."""
    torch.manual_seed(0)
    cases, model = {}, forward.model
    for size in sizes:
        for batch_size in batch_sizes:
            if isinstance(forward, ExportedNaFlexForward):
                cases[f"{batch_size} x {size} patches"] = naflex_example(model, batch_size, size)
            else:
                pixels = torch.randn(batch_size, model.config.num_channels, *size)
                cases[f"{batch_size} x {size[0]} x {size[1]}"] = dict(pixel_values=pixels)
    return cases


def check_with_onnxruntime(forward, onnx_path: str, sizes, batch_sizes=(1, 3), tolerance: float = TOLERANCE) -> dict:
    """Run the ONNX model with onnxruntime on the CPU and PyTorch on random inputs of every (batch, size)
    (`check_cases`); returns {case: largest difference} and raises a ValueError when one exceeds `tolerance`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    differences = {}
    for case, inputs in check_cases(forward, sizes, batch_sizes).items():
        with torch.no_grad():
            expected = forward(*(inputs[name] for name in forward.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {name: inputs[name].numpy() for name in forward.input_names})
        differences[case] = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
    worst = max(differences, key=differences.get)
    if differences[worst] > tolerance:
        raise ValueError(
            f"onnxruntime differs from PyTorch by {differences[worst]:.2e} at {worst} (tolerance {tolerance:g})"
        )
    return differences


def check_budgets(budgets, max_num_patches: int, dynamic: bool) -> list[int]:
    """The patch budgets a NaFlex export is checked at: `budgets`, or the traced one and, with a dynamic patch count,
    half of it."""
    if not budgets:
        return [max_num_patches, max(2, max_num_patches // 2)] if dynamic else [max_num_patches]
    checked = []
    for budget in budgets:
        if not str(budget).isdigit() or int(budget) < 2 or (not dynamic and int(budget) != max_num_patches):
            allowed = "patch budgets of at least 2" if dynamic else f"{max_num_patches} patches (a static count)"
            raise ValueError(f"--check_sizes {budget}: this NaFlex export takes {allowed}")
        checked.append(int(budget))
    return checked


def check_sizes(model, sizes, dynamic_image_size: bool) -> list[tuple[int, int]]:
    """The (h, w) sizes to check: `sizes` (each a side or "HxW"), every one a multiple of the export step, or the
    traced size and, with dynamic sides, one step more."""
    step_h, step_w = size_step(model)
    traced = example_size(model, dynamic_image_size)
    smallest = smallest_swin_side(model.config) if is_swin(model) else 1
    if not sizes:
        return [traced, (traced[0] + step_h, traced[1] + step_w)] if dynamic_image_size else [traced]
    checked = []
    for size in sizes:
        parts = str(size).lower().split("x")
        if len(parts) > 2 or not all(part.isdigit() for part in parts):
            raise ValueError(f"--check_sizes {size}: expected a side (224) or HEIGHTxWIDTH (224x320)")
        height, width = int(parts[0]), int(parts[-1])
        outside = height % step_h or width % step_w or min(height, width) < smallest
        if outside or (not dynamic_image_size and (height, width) != traced):
            allowed = f"multiples of {step_h}x{step_w}" if step_h > 1 else f"sides of at least {smallest}"
            allowed = allowed if dynamic_image_size else f"{traced[0]}x{traced[1]} (static sizes)"
            raise ValueError(f"--check_sizes {size}: this export takes {allowed}")
        checked.append((height, width))
    return checked


def check_quantization(quantize: str | None, calibration_dir: str | None) -> None:
    if quantize is not None and quantize not in PRECISIONS:
        raise ValueError(f"--quantize must be one of {list(PRECISIONS)}, got {quantize!r}")
    if calibration_dir is not None:
        if quantize != "int8":
            raise ValueError(f"--calibration_dir calibrates --quantize int8; got --quantize {quantize}")
        if not os.path.isdir(calibration_dir):
            raise ValueError(f"--calibration_dir {calibration_dir!r}: no such directory")


def quantized_copy(forward, output_dir: str, precision: str, calibration, labels, sizes) -> dict:
    """Write the int8 or fp16 copy of the export beside it and compare the two in onnxruntime: on the calibration
    pictures, or without them on the random inputs the export was checked on. The report's `quantization` entry."""
    fp32_path, path = os.path.join(output_dir, ONNX_FILE), os.path.join(output_dir, QUANTIZED_FILES[precision])
    method = quantize_export(fp32_path, path, precision, calibration)
    if calibration is None:
        inputs = [
            {name: value.numpy() for name, value in case.items()} for case in check_cases(forward, sizes).values()
        ]
        compared_on = "the random inputs of the export check"
    else:
        inputs, compared_on = calibration, "the calibration pictures"
    fp32_bytes, quantized_bytes = os.path.getsize(fp32_path), os.path.getsize(path)
    return dict(
        precision=precision,
        method=method,
        file=QUANTIZED_FILES[precision],
        size_mb=quantized_bytes / 1e6,
        fp32_size_mb=fp32_bytes / 1e6,
        size_ratio=quantized_bytes / fp32_bytes,
        compared_on=compared_on,
        **compare_exports(fp32_path, path, inputs, labels),
    )


def export_checkpoint(
    model_name_or_path: str,
    output_dir: str,
    dynamic_image_size: bool = True,
    sizes=None,
    trust_remote_code: bool = False,
    overwrite_output_dir: bool = False,
    token_merging: int = 0,
    quantize: str | None = None,
    calibration_dir: str | None = None,
) -> dict:
    """Export a checkpoint (directory or Hub id) to `output_dir`: model.onnx, model.pt2, its image processor, and
    export_report.json (dynamic axes, onnxruntime's largest difference per checked size). Bad input (a `UsageError`:
    the checkpoint, the sizes, an `output_dir` that holds files without `overwrite_output_dir`) is found before
    anything is written; an export that does not match PyTorch raises a ValueError. `token_merging`: the graph merges
    that many tokens per block (ToMe). `quantize` ("int8", "fp16") adds a copy in that precision (int8: static,
    calibrated on `calibration_dir`'s pictures, or dynamic without them), compared with the fp32 export in the
    report."""
    with usage_errors():
        check_quantization(quantize, calibration_dir)
        check_output_dir(output_dir, overwrite_output_dir)
        model = load_model(model_name_or_path, trust_remote_code)
        set_token_merging(model, token_merging)
        processor = checkpoint_image_processor(model_name_or_path, model.config, trust_remote_code)
        budget = processor.max_num_patches if is_naflex(processor) else None
        if budget is None:
            sizes = check_sizes(model, sizes, dynamic_image_size)
        else:
            sizes = check_budgets(sizes, budget, dynamic_image_size)
        calibration, labels = (
            calibration_pictures(calibration_dir, processor, model.config.num_channels, model.config.id2label)
            if calibration_dir
            else (None, None)
        )
    forward, program = export_model(model, output_dir, dynamic_image_size, budget)
    differences = check_with_onnxruntime(forward, os.path.join(output_dir, ONNX_FILE), sizes)
    processor.save_pretrained(output_dir)
    files = [ONNX_FILE, PROGRAM_FILE]
    quantization = None
    if quantize:
        quantization = quantized_copy(forward, output_dir, quantize, calibration, labels, sizes)
        files.append(quantization["file"])
    report = dict(
        source=model_name_or_path,
        model_type=model.config.model_type,
        token_merging=token_merging,
        inputs=list(forward.input_names),
        outputs=forward.output_names,
        dynamic_axes=dynamic_axes(program),
        **({"size_step": list(size_step(model))} if budget is None else {"max_num_patches": budget}),
        max_abs_difference=differences,
        files=files,
        **({"quantization": quantization} if quantization else {}),
    )
    with open(os.path.join(output_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


COMMAND_LINE = """Export an hf_vit checkpoint to ONNX (model.onnx) and torch.export (model.pt2), checked with
onnxruntime.

    python scripts/export.py --model_name_or_path runs/digits-vit --output_dir runs/digits-vit-onnx
    python scripts/export.py --model_name_or_path swin-t --output_dir swin-t-onnx --check_sizes 224 448
    python scripts/export.py --model_name_or_path runs/digits-vit --output_dir out --static_image_size

Every export has a dynamic batch; height and width are dynamic too (ViT, DeiT, hybrid: multiples of the patch
size, or any size the CNN takes; Swin: any side from a small minimum, 36 px for Swin-T) unless
--static_image_size. A NaFlex checkpoint exports its patch input (pixel_values, pixel_attention_mask,
spatial_shapes) with a dynamic patch count; its --check_sizes are patch budgets. onnxruntime must match PyTorch
within 1e-4 at two batch sizes and every checked size, or the export fails. export_report.json records the
dynamic axes and the differences."""


@dataclass
class ExportArguments:
    """The checkpoint to export, where the files go, and the sizes onnxruntime is checked at."""

    _argument_group_name = "export"

    model_name_or_path: str = field(metadata={"help": "An hf_vit checkpoint: a directory or a Hub id."})
    output_dir: str = field(metadata={"help": "Where model.onnx, model.pt2 and the report go."})
    static_image_size: bool = field(default=False, metadata={"help": "Export for the traced image size only."})
    check_sizes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Image sizes (a side or HxW) onnxruntime is checked at (default: the traced size and one more); "
            "for a NaFlex checkpoint, patch budgets (default: its own and half of it)."
        },
    )
    token_merging: int = field(default=0, metadata={"help": TOKEN_MERGING_HELP})
    quantize: str | None = field(
        default=None,
        metadata={
            "help": f"Also write an {' or '.join(PRECISIONS)} copy ({', '.join(QUANTIZED_FILES.values())}): int8 for "
            "CPUs (static, calibrated on --calibration_dir; dynamic without it), fp16 for GPUs."
        },
    )
    calibration_dir: str | None = field(
        default=None,
        metadata={
            "help": "Pictures that calibrate --quantize int8 (at most 256 read; in folders named as the model's "
            "classes, the report gives accuracies too)."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


START_HERE = ("--model_name_or_path", "--output_dir")


def parse_args(argv=None):
    parser = grouped_parser((ExportArguments,), START_HERE, COMMAND_LINE)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the examples keep their lines
    return tuple(parse_into_dataclasses(parser, argv))


def export(args: ExportArguments) -> dict:
    """`export_checkpoint` with the command line's arguments, and its line."""
    report = export_checkpoint(
        args.model_name_or_path,
        args.output_dir,
        dynamic_image_size=not args.static_image_size,
        sizes=args.check_sizes,
        trust_remote_code=args.trust_remote_code,
        overwrite_output_dir=args.overwrite_output_dir,
        token_merging=args.token_merging,
        quantize=args.quantize,
        calibration_dir=args.calibration_dir,
    )
    worst = max(report["max_abs_difference"].values())
    print(
        f"{args.model_name_or_path} -> {args.output_dir}/{{{', '.join(report['files'])}}}: {report['model_type']}, "
        f"outputs {report['outputs']}, dynamic axes {report['dynamic_axes']}; onnxruntime vs PyTorch at most "
        f"{worst:.1e} over {list(report['max_abs_difference'])}"
    )
    if "quantization" in report:
        print(quantization_line(report["quantization"]))
    return report


def quantization_line(quantization: dict) -> str:
    """The quantized copy in one line: its method, size, and how close it is to the fp32 export."""
    agreement = quantization.get("top1_agreement")
    accuracy = quantization.get("accuracy")
    return (
        f"{quantization['file']}: {quantization['method']}; {quantization['size_mb']:.1f} MB, "
        f"{quantization['size_ratio']:.0%} of fp32; against fp32 on {quantization['pictures']} of "
        f"{quantization['compared_on']}: "
        + (f"top-1 agreement {agreement:.1%}, " if agreement is not None else "")
        + (f"accuracy {accuracy:.2%} (fp32 {quantization['fp32_accuracy']:.2%}), " if accuracy is not None else "")
        + f"largest difference {quantization['max_abs_difference']:.2e}"
    )


main = command(parse_args, export)
