"""The practitioner's loop around training: frozen-feature probes, multi-label data and class weights, the
evaluation report, prediction over a folder, and the Gradio demo driven in a real (headless) Chromium."""

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Image, List
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification, pipeline

from hf_vit import HfSwinConfig, HfSwinForImageClassification, HfViTConfig, HfViTForImageClassification, HfViTModel
from hf_vit.guards import UsageError
from hf_vit.inference.attention import attention_heatmaps
from hf_vit.inference.evaluation import calibration, evaluate_checkpoint
from hf_vit.inference.evaluation import parse_args as evaluate_args
from hf_vit.inference.predict import parse_args as predict_args
from hf_vit.inference.predict import predict
from hf_vit.training.finetune import finetune
from hf_vit.training.finetune import parse_args as finetune_args
from hf_vit.training.probe import knn_probe, probe
from hf_vit.training.probe import parse_args as probe_args
from hf_vit.training.regularisation import BatchMixer, balanced_class_weights, weighted_loss
from hf_vit_lessons.attention import attention_rollout
from hf_vit_lessons.digit_grids import make_digit_grids

from conftest import REPO_ROOT, TINY_VIT

TINY = "--config_overrides", ",".join(f"{key}={value}" for key, value in TINY_VIT.items())
DIGITS_SUBSET = ("--max_train_samples", "200", "--max_eval_samples", "60")
QUIET = ("--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained briefly on the digits, and its run's own evaluation."""
    output = tmp_path_factory.mktemp("trained") / "vit"
    args = ["--output_dir", str(output), *TINY, *DIGITS_SUBSET, *QUIET, "--max_steps", "30", "--ema_decay", "0"]
    metrics = finetune(*finetune_args(args))
    return output, metrics


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of pictures of every kind: RGB, grayscale, RGBA, sizes from 9 to 60 px, one unreadable file."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / "colour.png")
    PILImage.fromarray(rng.integers(0, 255, (20, 60, 4), dtype=np.uint8), "RGBA").save(folder / "transparent.png")
    PILImage.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8), "L").save(folder / "gray.jpg")
    (folder / "nested").mkdir()
    PILImage.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).save(folder / "nested" / "colour.png")
    (folder / "broken.png").write_bytes(b"not a picture")
    return folder


# --- probes -------------------------------------------------------------------------------------------------------


def run_probe(tmp_path, name, *flags):
    args = ["--output_dir", str(tmp_path / name), *DIGITS_SUBSET, "--feature_cache_dir", str(tmp_path / "cache")]
    return probe(*probe_args([*args, *flags]))


def test_probes_share_cached_features_and_the_linear_probe_is_a_checkpoint_that_scores_what_it_reports(
    tmp_path, capsys
):
    knn = run_probe(tmp_path, "knn", "--method", "knn", *TINY)
    assert "train features read from the cache" not in capsys.readouterr().out
    assert knn["k"] in (1, 3, 5, 10, 20, 50, 100) and 0 < knn["accuracy"] <= 1
    logistic = run_probe(tmp_path, "logistic", "--method", "logistic", *TINY)
    assert "train features read from the cache" in capsys.readouterr().out  # the same random model: the same features
    run_probe(tmp_path, "mean", "--method", "knn", TINY[0], TINY[1] + ",pooling='mean'")
    assert "train features read from the cache" not in capsys.readouterr().out  # the same weights, other features
    assert logistic["C"] > 0 and logistic["num_features"] == 32
    linear = run_probe(tmp_path, "linear", "--method", "linear", "--linear_epochs", "5", *TINY)
    assert json.loads((tmp_path / "linear" / "probe_results.json").read_text())["accuracy"] == linear["accuracy"]
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "linear").eval()
    assert model.config.id2label[3] == "3"
    report = evaluate_checkpoint(*evaluate_args(["--model_name_or_path", str(tmp_path / "linear"), "--output_dir",
                                                 str(tmp_path / "report"), "--max_eval_samples", "60"]))  # fmt: skip
    assert report["accuracy"] == pytest.approx(linear["accuracy"], abs=1e-6)
    classifier = pipeline("image-classification", model=str(tmp_path / "linear"))
    assert len(classifier(PILImage.new("L", (8, 8)), top_k=3)) == 3
    assert "linear probe on the frozen features" in (tmp_path / "linear" / "README.md").read_text()


def test_a_probe_of_a_trained_checkpoint_and_of_several_blocks(tmp_path, trained):
    checkpoint, _ = trained
    results = run_probe(tmp_path, "knn", "--method", "knn", "--model_name_or_path", str(checkpoint), "--blocks", "2")
    assert results["num_features"] == 2 * TINY_VIT["hidden_size"] and results["model"] == str(checkpoint)


def test_a_deit_linear_probe_sets_both_heads(tmp_path):
    overrides = ",".join(f"{key}={value}" for key, value in TINY_VIT.items())
    linear = run_probe(tmp_path, "deit", "--model_type", "hf_deit", "--config_overrides", overrides, "--linear_epochs",
                       "3")  # fmt: skip
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "deit")
    torch.testing.assert_close(model.classifier.weight, model.distillation_classifier.weight)
    report = evaluate_checkpoint(*evaluate_args(["--model_name_or_path", str(tmp_path / "deit"), "--output_dir",
                                                 str(tmp_path / "report"), "--max_eval_samples", "60"]))  # fmt: skip
    assert report["accuracy"] == pytest.approx(linear["accuracy"], abs=1e-6)


def test_knn_chooses_k_and_temperature_on_the_training_split_only():
    generator = torch.Generator().manual_seed(0)
    train_y = torch.arange(60) % 3
    train_x = F.one_hot(train_y, 3).float() + 0.3 * torch.randn(60, 3, generator=generator)
    val_x = torch.randn(20, 3, generator=generator)
    chosen = {
        (result["k"], result["temperature"])
        for result in (
            knn_probe((train_x, train_y), (val_x, labels), 3) for labels in (torch.zeros(20), torch.ones(20))
        )
    }
    assert len(chosen) == 1  # the evaluation labels never change the choice


@pytest.mark.parametrize("flags, message", [
    (("--method", "svm"), r"--method must be one of \['linear', 'knn', 'logistic'\]"),
    (("--method", "linear", "--blocks", "2"), "use --blocks 1"),
    (("--method", "knn", "--model_type", "hf_swin", "--blocks", "2"), "Swin's stages widen"),
])  # fmt: skip
def test_probe_arguments_that_cannot_work_are_named(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        run_probe(tmp_path, "bad", *flags)
    assert not (tmp_path / "bad").exists()


# --- multi-label data and class weights ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_grids(tmp_path_factory):
    return make_digit_grids(str(tmp_path_factory.mktemp("grids")), train_images=96, validation_images=32)


def test_multi_label_imagefolder_trains_with_bce_reports_map_and_pipeline_gives_sigmoids(tmp_path, digit_grids):
    output = tmp_path / "grids"
    args = ["--output_dir", str(output), "--train_dir", digit_grids["train"], "--validation_dir",
            digit_grids["validation"], "--label_column_name", "labels", *TINY, *QUIET, "--max_steps", "6",
            "--class_weights", "balanced"]  # fmt: skip
    metrics = finetune(*finetune_args(args))
    assert {"eval_mAP", "eval_micro_f1", "eval_macro_f1"} <= set(metrics) and 0 < metrics["eval_mAP"] <= 1
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    assert model.config.problem_type == "multi_label_classification" and model.config.num_labels == 10
    picture = PILImage.open(f"{digit_grids['validation']}/00000.png")
    scores = {entry["label"]: entry["score"] for entry in pipeline("image-classification", model=str(output))(
        picture, top_k=10)}  # fmt: skip
    assert sum(scores.values()) != pytest.approx(1.0) and all(0 < score < 1 for score in scores.values())
    report = evaluate_checkpoint(*evaluate_args(["--model_name_or_path", str(output), "--output_dir",
                                                 str(tmp_path / "report"), "--train_dir", digit_grids["train"],
                                                 "--validation_dir", digit_grids["validation"],
                                                 "--label_column_name", "labels"]))  # fmt: skip
    assert report["mAP"] == pytest.approx(metrics["eval_mAP"], abs=1e-4)
    assert "eval mAP" in (output / "README.md").read_text()
    assert (tmp_path / "report" / "reliability_diagram.png").is_file()


def test_a_hub_style_sequence_of_class_labels_column_trains_multi_label(tmp_path):
    names = ["cat", "dog", "bird"]
    features = Features({"image": Image(), "tags": List(ClassLabel(names=names))})
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("validation", 8)):
        rows = {"image": [PILImage.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(count)],
                "tags": [sorted({int(i) for i in rng.integers(0, 3, 2)}) for _ in range(count)]}  # fmt: skip
        (tmp_path / "data").mkdir(exist_ok=True)
        Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / f"{split}.parquet")
    args = ["--output_dir", str(tmp_path / "run"), "--dataset_name", str(tmp_path / "data"), "--label_column_name",
            "tags", *TINY, *QUIET, "--max_steps", "2"]  # fmt: skip
    metrics = finetune(*finetune_args(args))
    assert "eval_mAP" in metrics
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "run").config.id2label == dict(enumerate(names))


def test_multi_label_classes_only_the_evaluation_split_has_are_named(tmp_path, digit_grids):
    validation = tmp_path / "validation"
    shutil.copytree(digit_grids["validation"], validation)
    lines = (validation / "metadata.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"file_name": "00000.png", "labels": ["7", "eleven"]})
    (validation / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--output_dir", str(tmp_path / "run"), "--train_dir", digit_grids["train"], "--validation_dir",
            str(validation), "--label_column_name", "labels", *TINY, *QUIET]  # fmt: skip
    with pytest.raises(UsageError, match=r"classes no training image has: \['eleven'\]"):
        finetune(*finetune_args(args))
    assert not (tmp_path / "run").exists()


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


def test_mixup_and_smoothing_mix_multi_hot_targets():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    pixels, mixed = BatchMixer(3, mixup_alpha=1.0, label_smoothing=0.3)(torch.randn(2, 3, 4, 4), targets)
    lam = mixed[0, 0] - 0.1  # smoothing: t * 0.7 + 0.1
    expected = (targets * lam / 0.7 + targets.roll(1, 0) * (1 - lam / 0.7)) * 0.7 + 0.1
    torch.testing.assert_close(mixed, expected)


def test_class_weights_and_a_teacher_are_refused_together(tmp_path):
    args = ["--output_dir", str(tmp_path / "run"), "--model_type", "hf_deit", "--teacher_name_or_path",
            str(tmp_path), "--class_weights", "balanced"]  # fmt: skip
    with pytest.raises(UsageError, match="--class_weights and --teacher_name_or_path do not combine"):
        finetune(*finetune_args(args))


# --- the evaluation report -------------------------------------------------------------------------------------


def test_the_report_matches_the_runs_own_evaluation_and_draws_its_pictures(tmp_path, trained):
    checkpoint, metrics = trained
    flags = ["--model_name_or_path", str(checkpoint), "--max_train_samples", "200", "--max_eval_samples", "60"]
    report = evaluate_checkpoint(*evaluate_args([*flags, "--output_dir", str(tmp_path / "plain")]))
    assert report["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert report["top5_accuracy"] == pytest.approx(metrics["eval_top5_accuracy"], abs=1e-6)
    assert set(report["per_class"]) == {str(d) for d in range(10)}
    assert sum(entry["support"] for entry in report["per_class"].values()) == 60
    assert 0 <= report["expected_calibration_error"] <= 1 and 0 <= report["macro_f1"] <= 1
    for picture in ("confusion_matrix.png", "reliability_diagram.png", "mistakes.png"):
        assert PILImage.open(tmp_path / "plain" / picture).size[0] > 300
    tta = evaluate_checkpoint(*evaluate_args([*flags, "--output_dir", str(tmp_path / "tta"), "--tta", "flip_crops"]))
    assert tta["tta"]["views"] == 10 and tta["accuracy"] == report["accuracy"]
    assert tta["tta"]["gain"] == pytest.approx(tta["tta"]["accuracy"] - report["accuracy"])


def test_calibration_error_is_zero_when_confidence_is_accuracy():
    confidences = np.repeat([0.25, 0.75], 400)
    correct = np.concatenate([np.arange(400) % 4 == 0, np.arange(400) % 4 != 0])
    assert calibration(confidences, correct)[0] == pytest.approx(0.0)
    assert calibration(np.full(10, 0.9), np.zeros(10, bool))[0] == pytest.approx(0.9)


def test_a_checkpoint_without_a_head_is_refused_in_one_line(tmp_path):
    HfViTModel(HfViTConfig(**TINY_VIT)).save_pretrained(tmp_path / "base")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "evaluate.py"),
            "--model_name_or_path",
            str(tmp_path / "base"),
            "--output_dir",
            str(tmp_path / "report"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "has no trained head" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "report").exists()


# --- prediction over a folder ----------------------------------------------------------------------------------


def test_predict_a_folder_of_every_kind_of_picture_like_the_pipeline(tmp_path, trained, pictures, caplog):
    checkpoint, _ = trained
    output = tmp_path / "predictions.csv"
    args = ["--model_name_or_path", str(checkpoint), "--inputs", str(pictures), "--output_file", str(output),
            "--top_k", "3", "--attention_maps", str(tmp_path / "maps"), "--batch_size", "2"]  # fmt: skip
    result = predict(*predict_args(args))
    assert result["predicted"] == 4 and [path for path, _ in result["skipped"]] == [str(pictures / "broken.png")]
    rows = list(csv.DictReader(output.open()))
    names = ("colour.png", "gray.jpg", "transparent.png", "nested/colour.png")
    assert [row["path"] for row in rows] == [str(pictures / name) for name in names]
    classifier = pipeline("image-classification", model=str(checkpoint))
    for row in rows:
        expected = classifier(row["path"], top_k=3)  # the pipeline reads the file as every job does
        assert row["label_1"] == expected[0]["label"]
        assert float(row["score_1"]) == pytest.approx(expected[0]["score"], abs=2e-3)
    maps = sorted(path.name for path in (tmp_path / "maps").iterdir())
    assert maps == ["colour.png.png", "gray.jpg.png", "nested__colour.png.png", "transparent.png.png"]
    gray_side = PILImage.open(pictures / "gray.jpg").width
    enlarged = PILImage.open(tmp_path / "maps" / "gray.jpg.png").size
    assert enlarged[0] >= 224 and enlarged[0] % gray_side == 0 and enlarged[0] == enlarged[1]  # by a whole factor

    jsonl = tmp_path / "predictions.jsonl"
    predict(*predict_args(["--model_name_or_path", str(checkpoint), "--inputs", f"{pictures}/**/*.png",
                           "--output_file", str(jsonl), "--top_k", "20"]))  # fmt: skip
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 3 and len(lines[0]["labels"]) == 10 and sum(lines[0]["scores"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("flags, message", [
    (("--output_file", "out.txt"), r"must end in one of \['.csv', '.jsonl'\]"),
    (("--inputs", "missing/"), "'missing/': no such file or directory"),
])  # fmt: skip
def test_predict_refuses_bad_arguments_before_writing(tmp_path, trained, pictures, flags, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint, _ = trained
    args = {"--model_name_or_path": str(checkpoint), "--inputs": str(pictures), "--output_file": "out.csv"}
    args.update(dict(zip(flags[::2], flags[1::2])))
    with pytest.raises(UsageError, match=message):
        predict(*predict_args([item for pair in args.items() for item in pair]))
    assert not list(tmp_path.iterdir())


def test_predict_will_not_overwrite_a_table(tmp_path, trained, pictures):
    (tmp_path / "out.csv").write_text("a finished table")
    args = [
        "--model_name_or_path",
        str(trained[0]),
        "--inputs",
        str(pictures),
        "--output_file",
        str(tmp_path / "out.csv"),
    ]
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        predict(*predict_args(args))
    assert (tmp_path / "out.csv").read_text() == "a finished table"


def test_attention_maps_come_from_the_sdpa_forward_and_match_eager_rollout():
    torch.manual_seed(0)
    model = HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=3)).eval()
    model.set_attn_implementation("sdpa")
    pixels = torch.randn(2, 3, 32, 32)
    logits, heat = attention_heatmaps(model, pixels)
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(logits, model(pixels).logits)
    model.set_attn_implementation("eager")
    for index in range(2):
        expected = attention_rollout(model, pixels[index : index + 1])[1]
        torch.testing.assert_close(heat[index], expected, atol=1e-6, rtol=0)

    swin = HfSwinForImageClassification(HfSwinConfig.from_preset("swin-cifar-patch2-window4-32", num_labels=3)).eval()
    _, heat = attention_heatmaps(swin, torch.randn(2, 3, 32, 48))  # a 4 x 6 last stage: two windows of 4 x 4, padded
    assert heat.shape == (2, 4, 6) and torch.all(heat >= 0)


# --- the demo, in a real browser -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


def chromium_driver():
    """Headless Chromium from the system's packages; none is a failure that says what to install."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("The demo's browser test needs Chromium and its driver: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_the_demo_classifies_an_uploaded_picture_in_a_real_browser(trained, pictures):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from hf_vit.inference.demo import ELEMENT_IDS, build_demo

    checkpoint, _ = trained
    picture = pictures / "colour.png"
    expected = pipeline("image-classification", model=str(checkpoint))(PILImage.open(picture).convert("RGB"))[0]
    demo = build_demo(str(checkpoint), top_k=3, examples=[str(picture)])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser = chromium_driver()
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(
            conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{ELEMENT_IDS['picture']} input[type=file]"))
        )
        upload.send_keys(str(picture))
        wait.until(conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{ELEMENT_IDS['picture']} img")))
        browser.find_element(By.CSS_SELECTOR, f"#{ELEMENT_IDS['button']}").click()
        wait.until(conditions.presence_of_element_located((By.CSS_SELECTOR, f"#{ELEMENT_IDS['overlay']} img")))
        wait.until(lambda page: "%" in page.find_element(By.CSS_SELECTOR, f"#{ELEMENT_IDS['labels']}").text)
        shown = browser.find_element(By.CSS_SELECTOR, f"#{ELEMENT_IDS['labels']}").text.split("\n")
        assert shown[1] == expected["label"]  # "prediction", then the top label as the page shows it
    finally:
        browser.quit()
        demo.close()


def test_the_demo_script_serves_the_app(trained):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "demo.py"),
            "--model_name_or_path",
            str(trained[0]),
            "--port",
            str(port),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, page = time.time() + 120, None
        while page is None and time.time() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None and "gradio" in page.lower(), server.stdout.read().decode() if server.poll() else ""
    finally:
        server.terminate()
        server.wait(30)


# --- the scripts and the one command ---------------------------------------------------------------------------


def test_the_scripts_run_end_to_end_and_are_subcommands(tmp_path, trained, pictures):
    checkpoint = str(trained[0])
    runs = {
        "probe.py": ["--method", "knn", "--output_dir", str(tmp_path / "probe"), *TINY, *DIGITS_SUBSET],
        "evaluate.py": [
            "--model_name_or_path",
            checkpoint,
            "--output_dir",
            str(tmp_path / "eval"),
            "--tta",
            "flip",
            *DIGITS_SUBSET,
        ],  # fmt: skip
        "predict.py": [
            "--model_name_or_path",
            checkpoint,
            "--inputs",
            str(pictures),
            "--output_file",
            str(tmp_path / "predictions.csv"),
        ],  # fmt: skip
    }
    for script, args in runs.items():
        result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / script), *args], capture_output=True,
                                text=True)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "probe" / "probe_results.json").is_file() and (tmp_path / "eval" / "metrics.json").is_file()
    listing = subprocess.run(["hf-vit", "--help"], capture_output=True, text=True).stdout
    assert all(job in listing for job in ("probe", "evaluate", "predict", "demo"))


# --- edge cases of the metrics, the probes and multi-label data -------------------------------------------------


def test_multi_label_macro_f1_averages_the_classes_present_and_survives_a_split_without_positives():
    from transformers import EvalPrediction

    from hf_vit.data.metrics import compute_metrics

    # class 2 has no positive in the split
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    perfect = np.where(targets > 0, 5.0, -5.0)
    metrics = compute_metrics(EvalPrediction(predictions=perfect, label_ids=targets))
    assert metrics["macro_f1"] == 1.0 and metrics["mAP"] == 1.0 and metrics["classes_present"] == 2
    empty = compute_metrics(EvalPrediction(predictions=perfect, label_ids=np.zeros_like(targets)))
    assert empty["classes_present"] == 0 and empty["macro_f1"] == 0.0


@pytest.mark.parametrize("method", ["knn", "linear", "logistic"])
def test_probes_on_a_handful_of_pictures_give_valid_json_or_one_line(tmp_path, method):
    flags = ["--method", method, "--max_train_samples", "1" if method == "knn" else "4", "--max_eval_samples", "8"]
    args = ["--output_dir", str(tmp_path / "probe"), *TINY, *flags]
    if method == "logistic":  # one picture per class at most: nothing to cross-validate
        with pytest.raises(UsageError, match="every class needs 2 images"):
            probe(*probe_args(args))
        return
    results = probe(*probe_args(args))
    written = json.loads((tmp_path / "probe" / "probe_results.json").read_text())  # strict JSON: no NaN
    assert written["accuracy"] == results["accuracy"] and 0 <= results["accuracy"] <= 1


def test_untagged_rows_and_unicode_digit_class_names_train_multi_label(tmp_path):
    folder = tmp_path / "tagged"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file_name,tags"]
    for i in range(12):
        PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png," + ["①;cat", "cat", "", "dog;①"][i % 4])  # every fourth image untagged
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["--output_dir", str(tmp_path / "run"), "--train_dir", str(folder), "--label_column_name", "tags",
            "--label_separator", ";", "--max_steps", "2", *TINY, *QUIET]  # fmt: skip
    finetune(*finetune_args(args))
    config = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert sorted(config["id2label"].values()) == sorted(["cat", "dog", "①"])


def test_the_unused_parameter_probe_of_a_multi_label_model_feeds_it_targets():
    from hf_vit.training.distributed import unused_parameters

    config = HfViTConfig(**TINY_VIT, num_labels=3, problem_type="multi_label_classification")
    assert unused_parameters(HfViTForImageClassification(config)) == []


def test_multi_label_data_trains_on_two_processes(tmp_path, digit_grids):
    """The data-parallel start asks the model which parameters one step leaves unused: with multi-hot targets, as
    a BCE loss takes them (class ids made it fail before the first step)."""
    from conftest import TWO_PROCESSES
    from test_finetune import run_script

    args = ["--output_dir", str(tmp_path / "ddp"), "--train_dir", digit_grids["train"], "--validation_dir",
            digit_grids["validation"], "--label_column_name", "labels", *TINY, *QUIET, "--max_steps", "2",
            "--per_device_train_batch_size", "8"]  # fmt: skip
    result = run_script(args, launcher=TWO_PROCESSES)
    assert result.stdout.count("eval: mAP") == 1 and (tmp_path / "ddp" / "model.safetensors").is_file()
