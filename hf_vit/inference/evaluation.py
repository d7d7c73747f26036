"""An evaluation report of a classifier checkpoint, to read and to look at.

    parse_args(argv) -> (EvaluateArguments, DataArguments)
    evaluate_checkpoint(evaluate_args, data_args) -> metrics (also written to metrics.json)

On any data source the jobs take (default: the digits' evaluation split, the one `finetune` evaluates on), with the
images prepared as `finetune` evaluates them, so that the accuracy is the training run's own:

    metrics.json              accuracy (top-5 with more than five classes), per-class precision / recall / F1 /
                              support, macro F1, expected calibration error; multi-label: mAP, micro / macro F1,
                              per-class average precision; with --tta the same under test-time augmentation and the gain
    confusion_matrix.png      (single-label) counts, coloured by the share of each true class
    reliability_diagram.png   confidence against accuracy in bins, the gap that the calibration error averages
    mistakes.png              the most confident mistakes, each with its true and predicted classes

`scripts/evaluate.py` and `hf-vit evaluate` are its command line.
"""

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checkpoints import TOKEN_MERGING_HELP
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..data import DataArguments, evaluation_loader, is_multi_label, label_names, load_splits
from ..data.metrics import multi_label_metrics
from ..devices import batch_inputs, inference_precision, loader_settings
from ..figures import new_figure, save_figure
from ..guards import check_output_dir, replaced_atomically, usage_errors
from ..processors import is_naflex
from .classifier import class_scores, load_classifier

METRICS_FILE = "metrics.json"
PICTURES = ("confusion_matrix.png", "reliability_diagram.png", "mistakes.png")
TTA_CHOICES = ("flip", "crops", "flip_crops")
CALIBRATION_BINS = 15
CROP_ZOOM = 1 / 0.875  # the crops TTA enlarges the evaluated image by this much, then takes the corners


@dataclass
class EvaluateArguments:
    """The checkpoint to evaluate and where its report goes."""

    _argument_group_name = "evaluation"

    model_name_or_path: str = field(metadata={"help": "An image-classification checkpoint (directory or Hub id)."})
    output_dir: str = field(metadata={"help": f"Where {METRICS_FILE} and the pictures go."})
    tta: str | None = field(
        default=None,
        metadata={
            "help": f"Test-time augmentation, reported beside the plain figures: one of {list(TTA_CHOICES)} "
            "(crops: the image and its four corners at 1/0.875 zoom)."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images per batch."})
    num_mistakes: int = field(default=16, metadata={"help": "Mistakes shown in mistakes.png."})
    seed: int = field(default=42, metadata={"help": "The seed that split the data (finetune's --seed; default 42)."})
    token_merging: int = field(default=0, metadata={"help": TOKEN_MERGING_HELP})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write over a report already there."})


START_HERE = ("--model_name_or_path", "--output_dir", "--tta")


def parse_args(argv=None):
    parser = grouped_parser((EvaluateArguments, DataArguments), START_HERE, __doc__.split("\n\n")[0])
    return tuple(parse_into_dataclasses(parser, argv))


def tta_views(pixel_values: torch.Tensor, tta: str | None) -> list[torch.Tensor]:
    """The views of a (B, C, H, W) batch a TTA averages over: the batch itself, its mirror image (`flip`), its four
    corners after enlarging it by `CROP_ZOOM` (`crops`), or both (`flip_crops`)."""
    views = [pixel_values]
    height, width = pixel_values.shape[-2:]
    if tta in ("crops", "flip_crops"):
        large = F.interpolate(pixel_values, scale_factor=CROP_ZOOM, mode="bilinear", align_corners=False)
        big_h, big_w = large.shape[-2:]
        corners = [(top, left) for top in (0, big_h - height) for left in (0, big_w - width)]
        views += [large[..., top : top + height, left : left + width] for top, left in corners]
    if tta in ("flip", "flip_crops"):
        views += [view.flip(-1) for view in views]
    return views


def predict_split(model, loader, tta: str | None) -> dict:
    """{"scores": (N, C) plain, "tta_scores": (N, C) averaged over the views (with `tta`), "labels"}, computed on the
    model's device (`devices`), returned on the CPU."""
    scores, tta_scores, labels = [], [], []
    with torch.inference_mode(), inference_precision(model.device):
        for batch in tqdm(loader, desc="evaluating"):
            inputs = batch_inputs(batch, model.device)
            pixel_values = inputs.pop("pixel_values")
            views = [class_scores(model, model(view, **inputs).logits) for view in tta_views(pixel_values, tta)]
            scores.append(views[0].cpu())
            tta_scores.append(torch.stack(views).mean(0).cpu())
            labels.append(batch["labels"])
    return dict(scores=torch.cat(scores), tta_scores=torch.cat(tta_scores), labels=torch.cat(labels))


def calibration(confidences: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS):
    """(expected calibration error, per non-empty bin (bin, mean confidence, accuracy, count)) over `bins`
    equal-width confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    table = [
        (b, confidences[which == b].mean(), correct[which == b].mean(), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]
    error = sum(count * abs(confidence - accuracy) for _, confidence, accuracy, count in table) / len(confidences)
    return float(error), table


def single_label_metrics(scores: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    predictions, truth = scores.argmax(1).numpy(), labels.numpy()
    metrics = {"accuracy": float((predictions == truth).mean())}
    if len(names) > 5:
        metrics["top5_accuracy"] = float((scores.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean())
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predictions, labels=range(len(names)), zero_division=0
    )
    # over the classes in the split or predicted (sklearn's own): a class absent from both has no F1 to average
    macro_f1 = f1_score(truth, predictions, average="macro", zero_division=0)
    metrics["macro_f1"] = float(macro_f1)
    metrics["expected_calibration_error"] = calibration(scores.max(1).values.numpy(), predictions == truth)[0]
    metrics["per_class"] = {
        name: dict(precision=float(p), recall=float(r), f1=float(f), support=int(s))
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    }
    return metrics


def multi_label_report(scores: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict:
    from sklearn.metrics import average_precision_score

    metrics = multi_label_metrics(torch.logit(scores.double().clamp(1e-12, 1 - 1e-12)).numpy(), targets.numpy())
    truth = targets.numpy() > 0.5
    metrics["expected_calibration_error"] = calibration(scores.numpy().ravel(), truth.ravel())[0]
    metrics["per_class"] = {
        name: dict(
            average_precision=float(average_precision_score(truth[:, c], scores[:, c])) if truth[:, c].any() else None,
            support=int(truth[:, c].sum()),
        )
        for c, name in enumerate(names)
    }
    return metrics


def report(scores, labels, names, multi_label: bool) -> dict:
    return multi_label_report(scores, labels, names) if multi_label else single_label_metrics(scores, labels, names)


def data_labels_as_model_ids(split, column: str, model) -> tuple[list[str], list[int]]:
    """The model's label names, and for each of the data's classes the model's id of it; a class the model does not
    know is a ValueError naming it."""
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    data_names = label_names(split.features[column])
    unknown = [name for name in data_names if name not in names]
    if unknown:
        raise ValueError(f"The data's classes {unknown[:10]} are not among the model's {names[:10]}")
    return names, [names.index(name) for name in data_names]


def draw_confusion_matrix(scores, labels, names, path: str) -> None:
    counts = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(counts, (labels.numpy(), scores.argmax(1).numpy()), 1)
    shares = counts / counts.sum(1, keepdims=True).clip(min=1)
    side = min(12, 2 + 0.45 * len(names))
    figure, axes = new_figure(figsize=(side + 1, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    if len(names) <= 30:
        axes.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0)
        axes.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color=colour)
    axes.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({int(counts.sum())} images)")
    save_figure(figure, path)


def draw_reliability_diagram(confidences, correct, path: str) -> None:
    error, table = calibration(confidences, correct)
    figure, axes = new_figure(figsize=(5, 5))
    width = 1 / CALIBRATION_BINS
    centres = [(b + 0.5) * width for b, *_ in table]
    axes.bar(centres, [accuracy for _, _, accuracy, _ in table], width=width * 0.9, alpha=0.8, label="accuracy")
    axes.plot(centres, [confidence for _, confidence, _, _ in table], "o", color="tab:red", label="mean confidence")
    axes.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    axes.set_title(f"reliability (expected calibration error {error:.3f})")
    axes.legend(loc="upper left")
    save_figure(figure, path)


def picture_seen(example: dict, image_processor) -> torch.Tensor:
    """The normalised (C, H, W) picture an evaluation example holds; NaFlex patches put back on their grid."""
    pixels = example["pixel_values"]
    if pixels.ndim == 3:
        return pixels
    height, width = example["spatial_shapes"].tolist()
    patch = image_processor.patch_size
    channels = pixels.shape[-1] // patch**2
    grid = pixels[: height * width].view(height, width, patch, patch, channels)
    return grid.permute(4, 0, 2, 1, 3).reshape(channels, height * patch, width * patch)


def draw_mistakes(split, picks: list[tuple[int, str]], image_processor, path: str) -> None:
    """A grid of the pictures of `split` (its evaluation transform attached) at `picks` ((index, caption)),
    denormalised from the tensors the model saw."""
    columns = min(4, max(1, len(picks)))
    rows = max(1, -(-len(picks) // columns))
    figure, axes = new_figure(rows, columns, figsize=(2.6 * columns, 3.2 * rows))  # room for two-line captions
    axes = np.atleast_1d(axes).ravel()
    pixels = {index: picture_seen(split[index], image_processor) for index, _ in picks}
    channels = len(image_processor.image_mean) if not pixels else next(iter(pixels.values())).shape[0]
    mean = torch.tensor(image_processor.image_mean[:channels]).view(-1, 1, 1)
    std = torch.tensor(image_processor.image_std[:channels]).view(-1, 1, 1)
    for ax in axes:
        ax.axis("off")
    for ax, (index, caption) in zip(axes, picks):
        image = (pixels[index] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if channels == 1 else image, cmap="gray" if channels == 1 else None)
        ax.set_title(caption, fontsize=8)
    if not picks:
        axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    save_figure(figure, path)


def confident_mistakes(scores, labels, names, multi_label: bool, count: int) -> list[tuple[int, str]]:
    """(index, caption) of the `count` most confident mistakes: single-label, the highest-scored wrong predictions;
    multi-label, the pictures with the largest gap between a score and its 0/1 truth."""
    if multi_label:
        gaps = (scores - labels).abs()
        worst = gaps.max(1).values.argsort(descending=True)[:count]
        picks = []
        for index in worst.tolist():
            if gaps[index].max() < 0.5:
                break
            missed = [names[c] for c in torch.nonzero((labels[index] > 0.5) & (scores[index] < 0.5)).flatten()]
            extra = [names[c] for c in torch.nonzero((labels[index] < 0.5) & (scores[index] >= 0.5)).flatten()]
            picks.append((index, f"missed {missed}\nwrongly {extra}"))
        return picks
    confidence, predicted = scores.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [
        (i, f"true {names[labels[i]]}, predicted\n{names[predicted[i]]} ({confidence[i]:.0%})") for i in order.tolist()
    ]


def evaluate_checkpoint(evaluate_args: EvaluateArguments, data_args: DataArguments) -> dict:
    """Evaluate, write metrics.json and the pictures; returns the metrics. Bad input (an output directory holding a
    report, a checkpoint without a head, classes the model does not know, an unknown --tta) is a `UsageError`
    before anything is written."""
    with usage_errors():
        if evaluate_args.tta not in (None, *TTA_CHOICES):
            raise ValueError(f"--tta must be one of {list(TTA_CHOICES)}, got {evaluate_args.tta!r}")
        for flag in ("image_size", "max_num_patches"):
            if getattr(data_args, flag) is not None:
                raise ValueError(f"--{flag} does not apply: the checkpoint's image processor sets the size")
        check_output_dir(evaluate_args.output_dir, evaluate_args.overwrite_output_dir, False)
        model, image_processor = load_classifier(
            evaluate_args.model_name_or_path, evaluate_args.trust_remote_code, evaluate_args.token_merging
        )
        if evaluate_args.tta is not None and is_naflex(image_processor):
            raise ValueError(
                f"--tta {evaluate_args.tta} takes fixed-size pictures; this checkpoint's are NaFlex patches"
            )
        split = load_splits(data_args, seed=evaluate_args.seed, evaluation_only=True)["validation"]
        multi_label = is_multi_label(split.features[data_args.label_column_name])
        if multi_label != (model.config.problem_type == "multi_label_classification"):
            kind = "multi-label" if multi_label else "single-label"
            raise ValueError(f"The data is {kind}; the model was not trained for {kind} data")
        names, model_ids = data_labels_as_model_ids(split, data_args.label_column_name, model)
    loader = evaluation_loader(
        split,
        image_processor,
        model.config.num_channels,
        data_args,
        evaluate_args.batch_size,
        labelled=True,
        **loader_settings(model.device),
    )
    predicted = predict_split(model, loader, evaluate_args.tta)
    labels = predicted["labels"]
    if multi_label:  # the data's class order -> the model's
        labels = torch.zeros(len(labels), len(names)).index_copy_(1, torch.tensor(model_ids), labels.float())
    else:
        labels = torch.tensor(model_ids)[labels]
    scores = predicted["scores"]
    metrics = dict(
        report(scores, labels, names, multi_label), images=len(labels), model=evaluate_args.model_name_or_path
    )
    headline = "mAP" if multi_label else "accuracy"
    if evaluate_args.tta is not None:
        with_tta = report(predicted["tta_scores"], labels, names, multi_label)
        metrics["tta"] = {
            "views": len(tta_views(torch.zeros(1, 1, 8, 8), evaluate_args.tta)),
            "method": evaluate_args.tta,
            headline: with_tta[headline],
            f"{headline}_without_tta": metrics[headline],
            "gain": with_tta[headline] - metrics[headline],
            "expected_calibration_error": with_tta["expected_calibration_error"],
        }

    output_dir = evaluate_args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    confusion, reliability, mistakes_path = (os.path.join(output_dir, name) for name in PICTURES)
    if multi_label:
        draw_reliability_diagram(scores.numpy().ravel(), (labels > 0.5).numpy().ravel(), reliability)
    else:
        draw_confusion_matrix(scores, labels, names, confusion)
        confidence, predictions = scores.max(1)
        draw_reliability_diagram(confidence.numpy(), (predictions == labels).numpy(), reliability)
    mistakes = confident_mistakes(scores, labels, names, multi_label, evaluate_args.num_mistakes)
    draw_mistakes(split, mistakes, image_processor, mistakes_path)
    with replaced_atomically(os.path.join(output_dir, METRICS_FILE)) as path, open(path, "w", encoding="utf-8") as file:
        json.dump(dict(metrics, arguments=asdict(evaluate_args)), file, indent=2)
    tta = ""
    if "tta" in metrics:
        tta = f"; with --tta {evaluate_args.tta}: {metrics['tta'][headline]:.2%} ({metrics['tta']['gain']:+.2%})"
    print(f"{headline} {metrics[headline]:.2%} on {len(labels)} images{tta} -> {output_dir}")
    return metrics


main = command(parse_args, evaluate_checkpoint)


if __name__ == "__main__":
    raise SystemExit(main())
