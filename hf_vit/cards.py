"""Model cards rendered from the templates in `model_cards/` (each family names its own in the registry), with
Hub metadata (model-index with the task, dataset and accuracy) and the training-curves picture they link to."""

import os
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCard

from .figures import new_figure, save_plot
from .guards import looks_like_local_path, replaced_atomically

CURVES_FILE = "training_curves.png"

# model_cards/ sits beside the package in a source checkout (and editable installs); wheels carry it inside.
TEMPLATE_DIRS = [Path(__file__).parent / "model_cards", Path(__file__).parent.parent / "model_cards"]


def read_template(name: str) -> str:
    for directory in TEMPLATE_DIRS:
        if (directory / name).is_file():
            return (directory / name).read_text(encoding="utf-8")
    raise FileNotFoundError(f"No model card template {name} in {[str(d) for d in TEMPLATE_DIRS]}")


def public_name(name_or_path: str) -> str:
    """A checkpoint as a card may name it: a Hub id as it is, a local path by its folder's name only (a card can be
    pushed, and the rest of a local path says only where its author keeps files)."""
    if looks_like_local_path(name_or_path):
        return f"a local checkpoint `{os.path.basename(os.path.normpath(name_or_path))}`"
    return name_or_path


def _name(option) -> str:
    """An option as the user wrote it: `adamw_torch_fused`, not `OptimizerNames.ADAMW_TORCH_FUSED`."""
    return getattr(option, "value", option)


# The metric a classifier's card and curves show: accuracy, or mean average precision for multi-label data.
HEADLINE_METRICS = {"eval_accuracy": "accuracy", "eval_mAP": "mAP"}


def headline_metric(log_history) -> str:
    """The eval metric of `HEADLINE_METRICS` the run logged ("eval_accuracy" when it logged neither)."""
    logged = {key for entry in log_history or [] for key in entry}
    return next((key for key in HEADLINE_METRICS if key in logged), "eval_accuracy")


def evaluations_by_epoch(log_history, metric: str | None = None) -> list[dict]:
    """The eval log entries holding `metric` (default: the headline metric), one per epoch (the last one wins: the
    final `evaluate()` repeats the last epoch's)."""
    metric = metric or headline_metric(log_history)
    by_epoch = {entry.get("epoch"): entry for entry in log_history or [] if metric in entry}
    return list(by_epoch.values())


def plot_training_curves(log_history, path: str) -> None:
    """Loss (training and evaluation), the evaluation's headline metric (for classifiers: accuracy, or mAP) and
    learning rate against the epoch, in one PNG."""
    train = [entry for entry in log_history if "loss" in entry and "epoch" in entry]
    evals = evaluations_by_epoch(log_history, "eval_loss")
    metric = headline_metric(log_history)
    accuracies = evaluations_by_epoch(log_history, metric)
    figure, all_axes = new_figure(1, 3 if accuracies else 2, figsize=(13 if accuracies else 9, 3.8))
    loss_axes, lr_axes = all_axes[0], all_axes[-1]
    loss_axes.plot([e["epoch"] for e in train], [e["loss"] for e in train], marker="o", markersize=3, label="training")
    loss_axes.plot(
        [e["epoch"] for e in evals], [e["eval_loss"] for e in evals], marker="o", markersize=3, label="evaluation"
    )
    if accuracies:
        name = HEADLINE_METRICS[metric]
        all_axes[1].plot([e["epoch"] for e in accuracies], [e[metric] for e in accuracies], marker="o", markersize=3)
        all_axes[1].set(xlabel="epoch", ylabel=name, title=f"evaluation {name}", ylim=(0, 1))
    lr_axes.plot(
        [e["epoch"] for e in train if "learning_rate" in e], [e["learning_rate"] for e in train if "learning_rate" in e]
    )
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    lr_axes.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    save_plot(figure, path, *all_axes)


def training_summary(training_args, log_history, recipe=None) -> str:
    """The hyperparameters that shaped the run, and the recipe's choices with their reasons, as a Markdown list."""
    if training_args is None:
        return "Not trained by hf_vit: converted weights, see the source above."
    world = training_args.world_size
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    lines = [
        f"- epochs: {training_args.num_train_epochs:g}",
        f"- global batch size: {batch} ({world} process{'es' if world > 1 else ''})",
        f"- optimizer: {_name(training_args.optim)}, learning rate {training_args.learning_rate:g}, weight decay "
        f"{training_args.weight_decay:g}, {_name(training_args.lr_scheduler_type)} schedule, warmup "
        f"{training_args.warmup_steps:g}",
        f"- seed: {training_args.seed}",
    ]
    if getattr(training_args, "backbone_learning_rate", None) is not None:
        lines.insert(3, f"- backbone learning rate: {training_args.backbone_learning_rate:g}")
    if recipe:  # its title line, then one line per ingredient
        lines.append(f"- {recipe[0]}\n" + "\n".join(f"  - {line}" for line in recipe[1:]))
    metric = headline_metric(log_history)
    evals = evaluations_by_epoch(log_history, metric)
    if evals:
        epochs = ", ".join(f"{entry['epoch']:g}" for entry in evals)
        curve = ", ".join(f"{entry[metric]:.3f}" for entry in evals)
        lines.append(f"- eval {HEADLINE_METRICS[metric]} at epochs {epochs}: {curve}")
    return "\n".join(lines)


def render_model_card(
    model,
    template: str,
    dataset=None,
    dataset_id=None,
    training_args=None,
    log_history=None,
    load_id=None,
    source=None,
    recipe=None,
    curves=None,
    extra_fields=None,
    hyperparameters=None,
) -> str:
    """The card of `model` from the template file named `template` (`Family.card_template`).

    `dataset` names the data for people; `dataset_id`, a Hub dataset id, is listed in the metadata (a local path
    is not: the Hub would take it for an id). `curves`: a picture file beside the card to show. `extra_fields`:
    more `${name}` values for the template. `hyperparameters`: how the model was made, in Markdown (default: the
    training run's, from `training_args`).
    """
    config = model.config
    metric = headline_metric(log_history)
    evals = evaluations_by_epoch(log_history, metric)
    evaluations = evaluations_by_epoch(log_history, "eval_loss")
    labels = list((config.id2label or {}).values())
    fields = {key: value for key, value in config.to_dict().items() if isinstance(value, (int, float, str, list))}
    started_from = getattr(config, "_name_or_path", "")  # set by from_pretrained, empty for fresh models
    title = load_id or (training_args.hub_model_id or training_args.output_dir if training_args else started_from)
    model_name = os.path.basename(str(title or config.model_type).rstrip("/"))
    hyperparameters = hyperparameters or training_summary(training_args, log_history, recipe)
    if curves:
        shown = f"loss, evaluation {HEADLINE_METRICS[metric]}, learning rate"
        hyperparameters += f"\n\n![training curves: {shown}]({curves})"
    fields.update(
        model_name=model_name,
        num_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        labels=", ".join(map(str, labels[:20])) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else ""),
        dataset=dataset or "unknown",
        metric_name=HEADLINE_METRICS[metric],
        eval_metric=f"{evals[-1][metric]:.4f}" if evals else "not evaluated",
        source=source or (f"fine-tuned from {public_name(started_from)}" if started_from else "trained from scratch"),
        hyperparameters=hyperparameters,
        load_id=load_id or "path/to/this/checkpoint",
        eval_loss=f"{evaluations[-1]['eval_loss']:.4f}" if evaluations else "not evaluated",
        input_size=input_size(config),
        **(extra_fields or {}),
    )
    backbone_config = getattr(config, "backbone_config", None)
    if backbone_config is not None:
        fields.update(backbone_type=backbone_config.model_type, backbone_stage=backbone_config.out_features[0])
    card = ModelCard(Template(read_template(template)).safe_substitute(fields))
    card.data.model_name = model_name
    if dataset_id:
        card.data.datasets = [dataset_id]
    if evals:
        card.data.metrics = [HEADLINE_METRICS[metric]]
        card.data.eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_id or "custom",
                dataset_name=dataset or dataset_id or "unknown",
                metric_type=HEADLINE_METRICS[metric],
                metric_name=HEADLINE_METRICS[metric],
                metric_value=round(evals[-1][metric], 4),
            )
        ]
    return card.content


def input_size(config) -> str:
    """What the model is given, for people: its image size, or a NaFlex checkpoint's patch budget."""
    budget = getattr(config, "max_num_patches", None)
    if budget:
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        return f"each picture at its own aspect ratio, within {budget} patches of {patch} px (NaFlex)"
    return f"{config.image_size} px"


def write_model_card(output_dir, model, template: str, **kwargs) -> str:
    """Render the card of `model` from `template` into `output_dir/README.md` (atomically) and return its path."""
    path = os.path.join(output_dir, "README.md")
    card = render_model_card(model, template, **kwargs)
    with replaced_atomically(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        f.write(card)
    return path
