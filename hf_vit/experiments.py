"""The article's comparisons as functions the scripts (and tests) call.

    compare_recipes(...) -> rows   the article's ViT: naive recipe vs DeiT recipe vs DeiT recipe + a CNN teacher
"""

import csv
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import ResNetConfig, ResNetForImageClassification  # noqa: E402

from .data import DIGITS, DataArguments, collate, load_splits, make_image_processor, set_transforms  # noqa: E402
from .finetune import finetune, parse_args  # noqa: E402
from .training import FinetuneTrainingArguments, ImageClassificationTrainer, compute_metrics  # noqa: E402


def train_cnn_teacher(output_dir: str, data_args: DataArguments, epochs: int, batch_size: int, seed: int) -> dict:
    """A small transformers ResNet trained on the same data and saved with its image processor."""
    splits = load_splits(data_args, seed=seed)
    labels = splits["train"].features[data_args.label_column_name].names
    config = ResNetConfig(
        embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    processor = make_image_processor(data_args.image_size or 32)
    set_transforms(splits, processor, 3, data_args)
    args = FinetuneTrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=batch_size, seed=seed,
        save_strategy="no", disable_tqdm=False,
    )  # fmt: skip
    trainer = ImageClassificationTrainer(
        model=ResNetForImageClassification(config), args=args, train_dataset=splits["train"],
        eval_dataset=splits["validation"], data_collator=collate, compute_metrics=compute_metrics,
        processing_class=processor,
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return trainer.evaluate()


def eval_curve(output_dir: str) -> list[float]:
    """Eval accuracy after each epoch (the closing evaluation repeats the last epoch and is not counted twice)."""
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        by_epoch = {entry["epoch"]: entry["eval_accuracy"] for entry in json.load(f)["log_history"] if "eval_accuracy" in entry}
    return list(by_epoch.values())


def compare_recipes(output_dir: str, epochs: int = 15, batch_size: int = 32, learning_rate: float = 1e-3,
                    dataset_name: str | None = None, max_train_samples: int | None = None, seed: int = 42) -> list[dict]:  # fmt: skip
    """Train the article's ViT (32 px, patch 4, d_model 128) three ways on the same data, epochs and peak lr.

    - naive: Adam-style AdamW without weight decay, constant learning rate, no augmentation beyond resizing;
    - deit: `--recipe deit` (RandAugment, Mixup/CutMix, label smoothing, random erasing, stochastic depth, repeated
      augmentation, EMA, weight decay, cosine schedule with warmup) on hf_deit, both heads learning the labels;
    - deit + teacher: the same with hard distillation from a small CNN trained first.

    DeiT's linear learning-rate rule (5e-4 x batch / 512) is meant for 300 epochs on ImageNet; every run here uses
    the same peak `learning_rate` so that only the recipe differs. Writes results.json / results.csv / a plot.
    """
    os.makedirs(output_dir, exist_ok=True)
    common = ["--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(batch_size), "--seed",
              str(seed), "--learning_rate", str(learning_rate), "--save_strategy", "no", "--image_size", "32"]  # fmt: skip
    if dataset_name:
        common += ["--dataset_name", dataset_name]
    if max_train_samples:
        common += ["--max_train_samples", str(max_train_samples)]
    teacher_dir = os.path.join(output_dir, "cnn_teacher")
    data_args = parse_args(["--output_dir", teacher_dir, *common])[1]
    start = time.perf_counter()
    teacher_metrics = train_cnn_teacher(teacher_dir, data_args, epochs, batch_size, seed)
    rows = [dict(run="CNN teacher (ResNet, 3 stages)", eval_accuracy=teacher_metrics["eval_accuracy"],
                 epochs=epochs, seconds=round(time.perf_counter() - start, 1))]  # fmt: skip
    curves = {}
    runs = {
        "ViT, naive recipe": ["--model_type", "hf_vit", "--weight_decay", "0", "--lr_scheduler_type", "constant",
                              "--warmup_steps", "0", "--crop_scale_min", "1.0", "--hflip_prob", "0"],
        "DeiT recipe": ["--model_type", "hf_deit", "--recipe", "deit", "--config_overrides", "distillation_type=none"],
        "DeiT recipe + hard distillation": ["--model_type", "hf_deit", "--recipe", "deit",
                                            "--teacher_name_or_path", teacher_dir],
    }  # fmt: skip
    for name, extra in runs.items():
        run_dir = os.path.join(output_dir, name.lower().replace(",", "").replace("+ ", "").replace(" ", "_"))
        start = time.perf_counter()
        metrics = finetune(*parse_args(["--output_dir", run_dir, *common, *extra]))
        curves[name] = eval_curve(run_dir)
        rows.append(dict(run=name, eval_accuracy=metrics["eval_accuracy"], best_eval_accuracy=max(curves[name]),
                         epochs=epochs, seconds=round(time.perf_counter() - start, 1)))  # fmt: skip
    save_results(rows, curves, output_dir, f"{dataset_name or DIGITS}: the article's ViT, {epochs} epochs")
    return rows


def save_results(rows: list[dict], curves: dict[str, list[float]], output_dir: str, title: str) -> None:
    """results.json, results.csv, a Markdown table printed to stdout, and eval_curves.png."""
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump({"title": title, "rows": rows, "curves": curves}, f, indent=2)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{title}\n")
    print(markdown_table(rows, columns))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    axes.set(xlabel="epoch", ylabel="eval accuracy", title=title, ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, "eval_curves.png"), dpi=120)
    plt.close(figure)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)
