"""Auto classes, safetensors, remote code, image processor, pipeline() and the local evaluate metrics."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from hf_vit import HfViTForImageClassification, HfViTModel
from hf_vit.data.metrics import load_metric
from hf_vit.processors import make_image_processor

from conftest import REPO_ROOT, randomize


def blocking(*packages: str) -> str:
    """Python code after which `packages` (and their submodules) look not installed: every finder says it has
    none of them, so imports fail and availability probes (`importlib.util.find_spec`) answer None."""
    return textwrap.dedent(
        f"""
        import sys
        class Hide:
            def __init__(self, finder):
                self.finder = finder
            def __getattr__(self, name):  # find_distributions, invalidate_caches, ...
                return getattr(self.finder, name)
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {packages!r}:
                    return None
                return self.finder.find_spec(name, path, target)
        sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
        """
    )


def run_without(packages, code: str, cwd, args=()) -> subprocess.CompletedProcess:
    script = blocking(*packages) + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_without_hf_vit(code: str, cwd) -> subprocess.CompletedProcess:
    return run_without(["hf_vit"], code, cwd)


def assert_loads_as_remote_code(model, directory, pixels) -> None:
    """Save `model` to `directory`, load it with `trust_remote_code=True` in a Python that cannot import hf_vit,
    and get the same logits on `pixels`."""
    model.eval().save_pretrained(directory)
    expected = directory.parent / f"{directory.name}_expected.pt"
    torch.save({"pixels": pixels, "logits": model(pixels).logits.detach()}, expected)
    run_without_hf_vit(
        f"""
        import torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
        expected = torch.load({str(expected)!r})
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.testing.assert_close(model(expected["pixels"]).logits, expected["logits"])
        """,
        cwd=directory.parent,
    )


@pytest.fixture
def saved_classifier(tmp_path, tiny_vit_config):
    tiny_vit_config.id2label = {i: f"class_{i}" for i in range(5)}
    tiny_vit_config.label2id = {v: k for k, v in tiny_vit_config.id2label.items()}
    model = randomize(HfViTForImageClassification(tiny_vit_config))
    model.save_pretrained(tmp_path / "model")
    make_image_processor(32).save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


def test_checkpoint_holds_safetensors_code_and_auto_map(saved_classifier):
    _, path = saved_classifier
    files = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert {"modeling_vit.py", "configuration_vit.py", "layers.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "hf_vit"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vit.HfViTConfig",
        "AutoModelForImageClassification": "modeling_vit.HfViTForImageClassification",
    }


def test_auto_classes_load_the_checkpoint(saved_classifier):
    model, path = saved_classifier
    pixels = torch.randn(2, 3, 32, 32)
    loaded = AutoModelForImageClassification.from_pretrained(path).eval()
    assert type(loaded) is HfViTForImageClassification
    torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits)
    base = AutoModel.from_pretrained(path).eval()
    assert type(base) is HfViTModel
    torch.testing.assert_close(base(pixels).pooler_output, model.vit(pixels).pooler_output)


def test_remote_code_loads_where_hf_vit_is_not_installed(saved_classifier, tmp_path):
    model, path = saved_classifier
    pixels = torch.randn(2, 3, 32, 32)
    torch.save({"pixels": pixels, "logits": model(pixels).logits.detach()}, tmp_path / "expected.pt")
    result = run_without_hf_vit(
        f"""
        import torch
        from transformers import AutoModelForImageClassification
        try:
            import hf_vit
            raise SystemExit("hf_vit should not be importable here")
        except ImportError:
            pass
        model = AutoModelForImageClassification.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.testing.assert_close(model(expected["pixels"]).logits, expected["logits"])
        print("remote", type(model).__name__)
        """,
        cwd=tmp_path,
    )
    assert "remote HfViTForImageClassification" in result.stdout


def test_image_processor_and_pipeline_work_on_pil_images(saved_classifier):
    model, path = saved_classifier
    processor = AutoImageProcessor.from_pretrained(path)
    assert processor.size == {"height": 32, "width": 32}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    classifier = pipeline("image-classification", model=str(path), top_k=5)
    predictions = classifier(images)
    expected = torch.softmax(model(pixels).logits, -1)
    for prediction, probabilities in zip(predictions, expected):
        assert {p["label"] for p in prediction} == {f"class_{i}" for i in range(5)}
        best = prediction[0]
        assert best["label"] == f"class_{probabilities.argmax().item()}"
        assert best["score"] == pytest.approx(probabilities.max().item(), abs=1e-4)


def test_local_metrics_load_without_the_hub():
    accuracy = load_metric("accuracy")
    four_classes = np.eye(4)[[0, 1, 2, 2]]
    assert accuracy.compute(predictions=four_classes, references=[0, 1, 1, 2]) == {"accuracy": 0.75}
    scores = [[6.0, 5, 4, 3, 2, 1, 0]] * 2  # classes 0-4 are the top five
    assert accuracy.compute(predictions=scores, references=[0, 6]) == {"accuracy": 0.5, "top5_accuracy": 0.5}
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        load_metric("f1")


@pytest.mark.parametrize("script", ["finetune.py", "convert_checkpoint.py"])
def test_main_scripts_need_neither_timm_nor_matplotlib(script, tmp_path):
    result = run_without(
        ["timm", "matplotlib"],
        f"""
        import runpy, sys
        sys.argv = [{script!r}, "--help"]
        try:
            runpy.run_path({str(REPO_ROOT / "scripts" / script)!r}, run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        assert "timm" not in sys.modules and "matplotlib" not in sys.modules
        """,
        cwd=tmp_path,
    )
    assert "--output_dir" in result.stdout
