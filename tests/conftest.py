"""Test setup: a loopback Hub and a private cache, fixed before huggingface_hub is first imported.

huggingface_hub reads HF_ENDPOINT when it is imported, so the server starts here, at collection time.
"""

import os
import sys
import tempfile
from pathlib import Path

from hub_server import HubServer

HUB_TOKEN = "hf_loopback_write_token"
HUB = HubServer(token=HUB_TOKEN).start()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_vit_tests_home_")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import hf_vit  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def hub():
    return HUB


# A 2-layer, 32 px, patch-8 ViT encoder: fast enough to build dozens of times.
TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)
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
