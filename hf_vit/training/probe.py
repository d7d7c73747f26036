"""Frozen-feature probes: how good a backbone's features are before any fine-tuning.

    parse_args(argv) -> (ModelArguments, DataArguments, ProbeArguments)
    probe(model_args, data_args, probe_args) -> results ({"accuracy", "method", the method's settings, ...})

The features of each split (what the classifier's head reads: `head_features`, or the pooled tokens of the last
`--blocks` blocks) are computed once, batched, and cached on disk under a key of the weights, the images and the
preprocessing, so that a second method on the same model and data reads them back. Then:

    linear     a linear head trained on the features (its learning rate and weight decay chosen on a part of the
               training split); the output directory is a whole checkpoint (frozen backbone + that head)
    knn        weighted k-nearest neighbours on cosine similarity (DINO's; k and temperature chosen by
               leave-one-out on the training split)
    logistic   scikit-learn's logistic regression on standardised features (its regularisation chosen by
               cross-validation on the training split)

Nothing is chosen on the evaluation split. `scripts/probe.py` and `hf-vit probe` are its command line.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.constants import HF_HOME
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import set_seed

from ..cards import write_model_card
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..data import DataArguments, evaluation_loader, is_multi_label, label_names, load_splits
from ..devices import inference_device, inference_precision, loader_settings
from ..guards import UsageError, check_output_dir, replaced_atomically, usage_errors
from .arguments import ModelArguments, check_model_source
from .building import build_classifier, build_image_processor, label_fields

METHODS = ("linear", "knn", "logistic")
RESULTS_FILE = "probe_results.json"
KNN_NEIGHBOURS = (1, 3, 5, 10, 20, 50, 100, 200)  # k tried by leave-one-out (those below the training split's size)
KNN_TEMPERATURES = (0.02, 0.07, 0.2, 1.0)  # DINO's 0.07 among them
LOGISTIC_CS = tuple(np.logspace(-4, 4, 9))  # inverse regularisation strengths tried by cross-validation
LINEAR_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
LINEAR_DECAYS = (0.0, 1e-4, 1e-2)
LINEAR_HELD_OUT = 0.2  # the share of the training split that chooses the linear probe's learning rate and decay


@dataclass
class ProbeArguments:
    """The probe: method, features, where its results go."""

    _argument_group_name = "probe"

    output_dir: str = field(metadata={"help": f"Where {RESULTS_FILE} (and the linear checkpoint) go."})
    method: str = field(default="linear", metadata={"help": f"One of {list(METHODS)}."})
    blocks: int = field(
        default=1,
        metadata={
            "help": "1: the features the classifier's head reads. N > 1 (knn, logistic; ViT, DeiT, hybrid): the "
            "normalised class token (or mean token) of each of the last N blocks, concatenated."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images per batch when computing features."})
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where features are cached (default: $HF_HOME/hf_vit/probe_features); 'none': no cache."},
    )
    linear_epochs: int = field(default=100, metadata={"help": "Epochs of the linear probe over the features."})
    seed: int = field(default=42, metadata={"help": "Seed (a random model's weights, the digits' split, ...)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write over a probe already there."})


START_HERE = ("--output_dir", "--method", "--model_name_or_path", "--train_dir")


def parse_args(argv=None):
    parser = grouped_parser((ModelArguments, DataArguments, ProbeArguments), START_HERE, __doc__.split("\n\n")[0])
    return tuple(parse_into_dataclasses(parser, argv))


def check_arguments(data_args: DataArguments, probe_args: ProbeArguments, family) -> None:
    if probe_args.method not in METHODS:
        raise ValueError(f"--method must be one of {list(METHODS)}, got {probe_args.method!r}")
    if probe_args.blocks < 1:
        raise ValueError(f"--blocks must be at least 1, got {probe_args.blocks}")
    if probe_args.blocks > 1 and probe_args.method == "linear":
        raise ValueError("--method linear saves a checkpoint whose head reads its own features: use --blocks 1")
    if probe_args.blocks > 1 and family.model_type == "hf_swin":
        raise ValueError("--blocks > 1 concatenates equal-width blocks (ViT, DeiT, hybrid); Swin's stages widen")
    if data_args.streaming:
        raise ValueError("A probe computes the features of whole splits: --streaming does not apply")
    check_output_dir(probe_args.output_dir, probe_args.overwrite_output_dir, False)


def block_features(model, pixel_values: torch.Tensor, blocks: int) -> torch.Tensor:
    """The last `blocks` blocks' outputs, each normalised by the final norm and pooled (its class token, else its
    mean token), concatenated: (B, C, H, W) -> (B, blocks * hidden_size)."""
    base = model.base_model
    hidden = base(pixel_values, output_hidden_states=True).hidden_states[-blocks:]
    prefix = base.num_prefix_tokens
    pooled = [
        base.layernorm(h)[:, 0] if model.config.class_token else base.layernorm(h)[:, prefix:].mean(1) for h in hidden
    ]
    return torch.cat(pooled, dim=-1)


def model_features(model, pixel_values: torch.Tensor, blocks: int) -> torch.Tensor:
    """The probe's features of a batch; a model without a pooled output is a ValueError."""
    features = model.head_features(pixel_values) if blocks == 1 else block_features(model, pixel_values, blocks)
    if features is None:
        raise ValueError(f"{type(model).__name__} has no pooled output to probe")
    return features.float()


# config fields that name the labels or the checkpoint, not what computes the features
LABEL_FIELDS = ("id2label", "label2id", "num_labels", "problem_type", "architectures", "_name_or_path")


def fingerprint(model, split, data_args: DataArguments, image_processor, blocks: int) -> str:
    """A key of everything the features depend on: the base model's weights (not the head's) and architecture (its
    config but the labels: pooling, say), the images and labels, the preprocessing."""
    digest = hashlib.sha256()
    architecture = {key: value for key, value in model.config.to_dict().items() if key not in LABEL_FIELDS}
    digest.update(json.dumps(architecture, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.base_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for value in split[data_args.image_column_name]:
        if value.get("bytes") is not None:
            digest.update(value["bytes"])
        else:
            stat = os.stat(value["path"])
            digest.update(f"{os.path.abspath(value['path'])}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps(list(split[data_args.label_column_name])).encode())
    processing = {key: value for key, value in image_processor.to_dict().items() if not key.startswith("_")}
    digest.update(json.dumps({"processor": processing, "blocks": blocks}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def cache_directory(probe_args: ProbeArguments) -> str | None:
    if probe_args.feature_cache_dir == "none":
        return None
    return probe_args.feature_cache_dir or os.path.join(HF_HOME, "hf_vit", "probe_features")


def split_features(
    model, split, name: str, image_processor, data_args, probe_args
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), labels (N,)) of `split`, read from the cache when they are there, else computed in batches
    (with a progress bar) and cached."""
    cache = cache_directory(probe_args)
    path = None
    if cache is not None:
        key = fingerprint(model, split, data_args, image_processor, probe_args.blocks)
        path = os.path.join(cache, f"{key}.safetensors")
        if os.path.isfile(path):
            print(f"{name} features read from the cache: {path}")
            saved = load_file(path)
            return saved["features"], saved["labels"]
    device = model.device
    loader = evaluation_loader(
        split,
        image_processor,
        model.config.num_channels,
        data_args,
        probe_args.batch_size,
        labelled=True,
        **loader_settings(device),
    )
    features, labels = [], []
    with torch.inference_mode(), inference_precision(device):
        for batch in tqdm(loader, desc=f"{name} features"):
            pixel_values = batch["pixel_values"].to(device, non_blocking=True)
            features.append(model_features(model, pixel_values, probe_args.blocks).cpu())
            labels.append(batch["labels"])
    features, labels = torch.cat(features), torch.cat(labels)
    if path is not None:
        os.makedirs(cache, exist_ok=True)
        with replaced_atomically(path) as temporary:
            save_file({"features": features.contiguous(), "labels": labels}, temporary)
    return features, labels


def knn_votes(neighbours, similarities, bank_labels, k: int, temperature: float, num_labels: int) -> torch.Tensor:
    """Class scores (N, num_labels) from each query's `k` nearest neighbours, each voting exp(similarity / T)."""
    weights = (similarities[:, :k] / temperature).exp()
    votes = F.one_hot(bank_labels[neighbours[:, :k]], num_labels).float()
    return (votes * weights[..., None]).sum(1)


def nearest(queries, bank, k: int, exclude_self: bool = False, chunk: int = 1024):
    """(indices, similarities) of the `k` most cosine-similar rows of `bank` for each query, in chunks;
    `exclude_self`: the queries are the bank, and a row is not its own neighbour (leave-one-out)."""
    indices, values = [], []
    for start in range(0, len(queries), chunk):
        similarity = queries[start : start + chunk] @ bank.T
        if exclude_self:
            rows = torch.arange(len(similarity))
            similarity[rows, rows + start] = -float("inf")
        top = similarity.topk(k, dim=1)
        indices.append(top.indices)
        values.append(top.values)
    return torch.cat(indices), torch.cat(values)


def knn_probe(train, validation, num_labels: int) -> dict:
    """Weighted kNN (Wu et al. 2018, DINO) on L2-normalised features; k and T by leave-one-out on the training
    split."""
    (train_x, train_y), (val_x, val_y) = train, validation
    bank, queries = F.normalize(train_x, dim=1), F.normalize(val_x, dim=1)
    if len(bank) < 2:  # one training picture: nothing to leave out, its one neighbour decides
        k, temperature, train_accuracy = 1, KNN_TEMPERATURES[0], None
    else:
        choices = [k for k in KNN_NEIGHBOURS if k < len(bank)]
        neighbours, similarities = nearest(bank, bank, max(choices), exclude_self=True)
        scores = {
            (k, t): float(
                (knn_votes(neighbours, similarities, train_y, k, t, num_labels).argmax(1) == train_y).float().mean()
            )
            for k in choices
            for t in KNN_TEMPERATURES
        }
        (k, temperature), train_accuracy = max(scores.items(), key=lambda item: item[1])
    neighbours, similarities = nearest(queries, bank, k)
    predictions = knn_votes(neighbours, similarities, train_y, k, temperature, num_labels).argmax(1)
    return dict(
        accuracy=float((predictions == val_y).float().mean()),
        k=k,
        temperature=temperature,
        leave_one_out_accuracy=train_accuracy,  # None: a single training picture
    )


def logistic_probe(train, validation, seed: int) -> dict:
    """Multinomial logistic regression on standardised features, C by 3-fold cross-validation on the training
    split (scikit-learn's LogisticRegressionCV)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    (train_x, train_y), (val_x, val_y) = [(x.numpy(), y.numpy()) for x, y in (train, validation)]
    scaler = StandardScaler().fit(train_x)
    folds = min(3, int(np.bincount(train_y).min()))
    if folds < 2:
        raise UsageError(
            f"--method logistic cross-validates on the training split: every class needs 2 images, one has "
            f"{int(np.bincount(train_y).min())}; use --method knn or linear"
        )
    classifier = LogisticRegressionCV(Cs=list(LOGISTIC_CS), cv=folds, max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(train_x), train_y)
    accuracy = float((classifier.predict(scaler.transform(val_x)) == val_y).mean())
    return dict(accuracy=accuracy, C=float(classifier.C_[0]), cross_validation_folds=folds)


def train_linear(x, y, num_labels: int, rate: float, decay: float, epochs: int, seed: int) -> torch.nn.Linear:
    """A linear layer trained with AdamW (cosine schedule, batches of 256) on standardised features `x`."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=rate, weight_decay=decay)
    steps = epochs * -(-len(x) // 256)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(256):
            loss = F.cross_entropy(head(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head


def linear_probe(train, validation, num_labels: int, epochs: int, seed: int):
    """A linear head on the features: learning rate and weight decay chosen on `LINEAR_HELD_OUT` of the training
    split, then trained on all of it. Returns (results, weight, bias), the standardisation folded into the weight and
    bias so that the head reads the raw features."""
    (train_x, train_y), (val_x, val_y) = train, validation
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    standard = (train_x - mean) / std
    order = torch.randperm(len(standard), generator=torch.Generator().manual_seed(seed))
    held_out, kept = order[: int(len(order) * LINEAR_HELD_OUT)], order[int(len(order) * LINEAR_HELD_OUT) :]
    if not len(held_out):  # too few pictures to hold any out: the grid's middle values, unchosen
        (rate, decay), held_out_accuracy = (LINEAR_RATES[len(LINEAR_RATES) // 2], LINEAR_DECAYS[1]), None
    else:
        scores = {}
        for rate in tqdm(LINEAR_RATES, desc="linear probe: learning rates"):
            for decay in LINEAR_DECAYS:
                head = train_linear(standard[kept], train_y[kept], num_labels, rate, decay, epochs, seed)
                with torch.no_grad():
                    predicted = head(standard[held_out]).argmax(1)
                    scores[rate, decay] = float((predicted == train_y[held_out]).float().mean())
        (rate, decay), held_out_accuracy = max(scores.items(), key=lambda item: item[1])
    head = train_linear(standard, train_y, num_labels, rate, decay, epochs, seed)
    weight = head.weight.detach() / std
    bias = head.bias.detach() - weight @ mean
    accuracy = float(((val_x @ weight.T + bias).argmax(1) == val_y).float().mean())
    results = dict(
        accuracy=accuracy,
        learning_rate=rate,
        weight_decay=decay,
        epochs=epochs,
        held_out_accuracy=held_out_accuracy,
    )
    return results, weight, bias


def probe(model_args: ModelArguments, data_args: DataArguments, probe_args: ProbeArguments) -> dict:
    """Compute (or read back) the features of both splits, run the probe, write `RESULTS_FILE` (and for `linear` the
    checkpoint with its card). Returns the results. Bad input is a `UsageError` before any feature is computed."""
    with usage_errors():
        source = check_model_source(model_args, data_args.image_size)
        if data_args.max_num_patches is not None or getattr(source.config, "max_num_patches", None):
            raise ValueError("The probes read fixed-size pictures; NaFlex patches (max_num_patches) are not probed")
        check_arguments(data_args, probe_args, source.family)
        set_seed(probe_args.seed)
        splits = load_splits(data_args, seed=probe_args.seed)
        feature = splits["train"].features[data_args.label_column_name]
        if is_multi_label(feature):
            raise ValueError("The probes classify single-label data; the label column holds lists of classes")
        labels = label_names(feature)
        size = {} if source.from_checkpoint or data_args.image_size is None else {"image_size": data_args.image_size}
        config = source.with_fields(**label_fields(labels), **size)
    model = build_classifier(model_args, source, config, data_args.image_size).eval().requires_grad_(False)
    model.to(inference_device())  # the features on the accelerator when there is one; the probes on the CPU
    image_processor = build_image_processor(model_args, model)
    train, validation = (
        split_features(model, splits[name], name, image_processor, data_args, probe_args)
        for name in ("train", "validation")
    )
    if probe_args.method == "knn":
        results = knn_probe(train, validation, len(labels))
    elif probe_args.method == "logistic":
        results = logistic_probe(train, validation, probe_args.seed)
    else:
        results, weight, bias = linear_probe(train, validation, len(labels), probe_args.linear_epochs, probe_args.seed)
    started_from = model_args.model_name_or_path or f"a randomly initialised {source.family.model_type}"
    results = dict(
        results,
        method=probe_args.method,
        blocks=probe_args.blocks,
        model=started_from,
        num_features=train[0].shape[1],
        train_images=len(train[0]),
        eval_images=len(validation[0]),
    )
    os.makedirs(probe_args.output_dir, exist_ok=True)
    if probe_args.method == "linear":
        model.set_linear_head(weight, bias)
        model.save_pretrained(probe_args.output_dir)
        image_processor.save_pretrained(probe_args.output_dir)
        settings = "\n".join(f"- {name}: {value}" for name, value in results.items())
        write_model_card(
            probe_args.output_dir,
            model,
            source.family.card_template,
            source=f"a linear probe on the frozen features of {started_from}",
            hyperparameters=f"Only the head was trained, on frozen features (`hf-vit probe`):\n\n{settings}",
        )
    with (
        replaced_atomically(os.path.join(probe_args.output_dir, RESULTS_FILE)) as path,
        open(path, "w", encoding="utf-8") as file,
    ):
        json.dump(dict(results, arguments=asdict(probe_args)), file, indent=2, allow_nan=False)  # valid JSON or none
    print(
        f"{probe_args.method} probe: accuracy {results['accuracy']:.2%} on {results['eval_images']} images "
        f"({results['num_features']} features) -> {probe_args.output_dir}"
    )
    return results


main = command(parse_args, probe)


if __name__ == "__main__":
    raise SystemExit(main())
