"""Test setup: a loopback Hub and a private cache, fixed before huggingface_hub is first imported.

huggingface_hub reads HF_ENDPOINT when it is imported, so the server starts here, at collection time.
"""

import contextlib
import io
import logging
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

from hub_server import HubServer

HUB_TOKEN = "hf_loopback_write_token"
HUB = HubServer(token=HUB_TOKEN).start()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_vit_tests_home_")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402
from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification  # noqa: E402

import hf_vit  # noqa: E402
from hf_vit.models.configuration_vit import DINOV3, EVA02  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
SCRIPTS = REPO_ROOT / "scripts"
CONVERT = str(SCRIPTS / "convert_checkpoint.py")
CONFIGS = SCRIPTS / "accelerate"  # the shipped `accelerate launch` configurations


@pytest.fixture(scope="session")
def hub():
    return HUB


# A 2-layer, 32 px, patch-8 ViT encoder: fast enough to build dozens of times.
TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)
TINY_CLASSIFIER = {**TINY_VIT, "num_labels": 3}
# ViT-Tiny's width on two blocks: the smallest shape the parity tests' timm and transformers models share.
SMALL_VIT = dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768, num_labels=10)


# `accelerate launch` of two data-parallel processes (CPU processes over gloo where there is no GPU)
TWO_PROCESSES = (
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
)


@pytest.fixture
def tiny_vit_config():
    return hf_vit.HfViTConfig(**TINY_VIT, num_labels=5)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter noticeable random values, so parity checks cannot pass on near-zero activations."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def assert_same_logits(ours, reference_logits, pixels, **kwargs):
    with torch.no_grad():
        expected = reference_logits(pixels)
        assert expected.std() > 0.1
        torch.testing.assert_close(ours(pixels, **kwargs).logits, expected, atol=1e-4, rtol=0)


def subprocess_convert(args, env=None):
    result = subprocess.run(
        [sys.executable, CONVERT, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def save_timm(tmp_path, name, architecture, std=0.2, **model_args):
    reference = randomize(timm.create_model(architecture, num_classes=10, **model_args), std=std)
    save_for_hf(reference, str(tmp_path / name), model_args=model_args, safe_serialization=True)
    return reference, str(tmp_path / name)


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


TINY = "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64"


def make_resnet_teacher(path, labels, image_size=48):
    """A transformers CNN teacher with its own size and ImageNet normalisation."""
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=1.0).save_pretrained(path)
    return path


def random_pictures(shapes, seed: int = 0) -> list[Image.Image]:
    """RGB pictures of random pixels, one of each (height, width) in `shapes`."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def make_imagefolder(root, classes=("cat", "dog"), per_class=12, size=(20, 24), corrupt=None):
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((*size, 3), 40 + 60 * index, dtype=np.uint8) + rng.integers(
                0, 40, (*size, 3), dtype=np.uint8
            )
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    if corrupt is not None:
        (root / classes[0] / corrupt).write_bytes(b"this is not a png")
    return root


FAST = ["--max_train_samples", "128", "--max_eval_samples", "64", "--per_device_train_batch_size", "64",
        "--config_overrides", TINY, "--disable_tqdm", "true"]  # fmt: skip


def run_script(args, *, launcher=(sys.executable,), env=None, expect_success=True, script="finetune.py"):
    """Run scripts/<script> with `args`, as `launcher` would (returns a CompletedProcess). A run expected to fail,
    with the plain launcher, runs the script file in this process (`runpy`, its own `__main__`): a refusal comes
    before any work, and a Python start per refused case is most of what it costs. Runs that train, and the
    launcher's own behaviour, go through a real process."""
    if launcher == (sys.executable,) and env is None:
        result = run_script_in_process(script, args)
    else:
        result = subprocess.run(
            [*launcher, str(SCRIPTS / script), *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, **(env or {})},
        )
    if expect_success:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def run_script_in_process(script: str, args) -> subprocess.CompletedProcess:
    """scripts/<script> run as `__main__` in this process: its exit code, and what it printed (an exception that
    escapes becomes exit code 1 and its traceback, as Python would print it)."""
    path, out, err = str(SCRIPTS / script), io.StringIO(), io.StringIO()
    argv, code = [path, *map(str, args)], 0
    with mock_argv(argv), logs_to(err), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except Exception:
            code = 1
            traceback.print_exc(file=err)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def logs_to(stream):
    """The log handlers that write to stderr (transformers' own, set up before) write to `stream` meanwhile, and
    so do records that would reach no handler in a process of their own (logging's last resort: warnings and up;
    pytest's capture handlers stand in its way here)."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict))]
    handlers = {
        handler
        for logger in loggers
        for handler in logger.handlers
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__)
    }
    saved = {handler: handler.setStream(stream) for handler in handlers}
    last_resort = logging.StreamHandler(stream)
    last_resort.setLevel(logging.WARNING)
    logging.getLogger().addHandler(last_resort)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(last_resort)
        for handler, old in saved.items():
            handler.setStream(old)


@contextlib.contextmanager
def mock_argv(argv):
    """sys.argv as a script started with `argv` sees it (restored after)."""
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


def launcher(config: str, *flags: str) -> tuple:
    return (sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), *flags)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# a tiny ViT's fields as --config_overrides, a few hundred digits, and no files or bars a test does not look at
TINY_VIT_FLAGS = "--config_overrides", ",".join(f"{key}={value}" for key, value in TINY_VIT.items())
DIGITS_SUBSET = ("--max_train_samples", "200", "--max_eval_samples", "60")


QUIET = ("--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny ViT trained briefly on the digits, and its run's own evaluation."""
    output = tmp_path_factory.mktemp("trained") / "vit"
    args = ["--output_dir", str(output), *TINY_VIT_FLAGS, *DIGITS_SUBSET, *QUIET, "--max_steps", "30",
            "--ema_decay", "0"]  # fmt: skip
    from hf_vit.training.finetune import finetune, parse_args

    metrics = finetune(*parse_args(args))
    return output, metrics


@pytest.fixture(scope="session")
def pictures(tmp_path_factory):
    """A folder of pictures of every kind: RGB, grayscale, RGBA, sizes from 9 to 60 px, one unreadable file."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / "colour.png")
    Image.fromarray(rng.integers(0, 255, (20, 60, 4), dtype=np.uint8), "RGBA").save(folder / "transparent.png")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8), "L").save(folder / "gray.jpg")
    (folder / "nested").mkdir()
    Image.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).save(folder / "nested" / "colour.png")
    (folder / "broken.png").write_bytes(b"not a picture")
    return folder


# every family's smallest classifier, for the suites that check all of them
TINY_SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)


TINY_RESNET = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")


def family_classifier(family: str):
    """A small classifier of `family` (3 classes, 32 px)."""
    match family:
        case "hf_vit":
            return hf_vit.HfViTForImageClassification(hf_vit.HfViTConfig(**TINY_VIT, num_labels=3))
        case "hf_vit dinov3":
            return hf_vit.HfViTForImageClassification(hf_vit.HfViTConfig(**TINY_VIT, **DINOV3, num_labels=3))
        case "hf_vit eva02":
            eva = {**EVA02, "rope_reference_grid": [4, 4]}
            return hf_vit.HfViTForImageClassification(hf_vit.HfViTConfig(**TINY_VIT, **eva, num_labels=3))
        case "hf_deit":
            return hf_vit.HfDeiTForImageClassification(hf_vit.HfDeiTConfig(**TINY_VIT, num_labels=3))
        case "hf_vit_hybrid":
            hybrid = {**TINY_VIT, "backbone_config": TINY_RESNET.to_dict() | {"out_features": ["stage2"]}}
            return hf_vit.HfViTHybridForImageClassification(hf_vit.HfViTHybridConfig(**hybrid, num_labels=3))
        case "hf_swin":
            return hf_vit.HfSwinForImageClassification(hf_vit.HfSwinConfig(**TINY_SWIN, num_labels=3))
    raise KeyError(family)


def training_inputs(family: str, batch_size: int = 4) -> dict:
    """A batch for `family_classifier(family)`: 32 px pictures, 3 classes (and teacher logits for DeiT)."""
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "labels": torch.randint(0, 3, (batch_size,), generator=generator),
    }
    if family == "hf_deit":  # DeiT trains on its teacher's logits too
        inputs["teacher_logits"] = torch.randn(batch_size, 3, generator=generator)
    return inputs


@pytest.fixture
def tiny_deit_config():
    return hf_vit.HfDeiTConfig(**TINY_VIT, num_labels=5)


# the hybrid's smallest encoder on a two-stage basic-block ResNet (64 px -> an 8x8 grid at stage 2)
HYBRID_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3)
HYBRID_RESNET = dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")


def tiny_hybrid_config(**overrides) -> hf_vit.HfViTHybridConfig:
    return hf_vit.HfViTHybridConfig(
        **{
            **HYBRID_ENCODER,
            "image_size": 64,
            "backbone_config": {**HYBRID_RESNET, "out_features": ["stage2"]},
            **overrides,
        }
    )
