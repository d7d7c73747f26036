"""Reading a checkpoint for any job (`hf_vit.checkpoints`): weights that do not fit the model, a folder without
weights, a truncated file and a mistyped local path are refused in one line, before any training."""

import json
import shutil

import pytest
from transformers import AutoModelForImageClassification

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.checkpoints import load_checkpoint
from hf_vit.guards import UsageError
from hf_vit.models.configuration_utils import CheckpointMismatchError

from conftest import FAST, TINY_VIT, run_script


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoints") / "vit"
    HfViTForImageClassification(HfViTConfig(**TINY_VIT, num_labels=10)).save_pretrained(path)
    return path


def test_vit_weights_under_a_deit_config_are_refused_not_trained_from_random(tmp_path, saved_vit):
    shutil.copytree(saved_vit, tmp_path / "deit")
    config = json.loads((tmp_path / "deit" / "config.json").read_text())
    config.update(model_type="hf_deit", architectures=["HfDeiTForImageClassification"])
    (tmp_path / "deit" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"missing or misshapen deit\.embeddings.*unexpected vit\."):
        load_checkpoint(AutoModelForImageClassification, str(tmp_path / "deit"), new_heads=True)
    result = run_script(["--model_name_or_path", str(tmp_path / "deit"), "--output_dir", str(tmp_path / "run"),
                         *FAST[:4], "--num_train_epochs", "1"], expect_success=False)  # fmt: skip
    assert result.returncode == 2 and "does not fit HfDeiTForImageClassification" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_new_head_may_be_missing_only_when_the_run_starts_it_afresh(saved_vit, tmp_path):
    from hf_vit import HfViTModel

    HfViTModel(HfViTConfig(**TINY_VIT)).save_pretrained(tmp_path / "base")
    model = load_checkpoint(AutoModelForImageClassification, str(tmp_path / "base"), new_heads=True)
    assert type(model).__name__ == "HfViTForImageClassification"
    with pytest.raises(CheckpointMismatchError, match="has no trained head"):
        load_checkpoint(AutoModelForImageClassification, str(tmp_path / "base"))
    assert load_checkpoint(AutoModelForImageClassification, str(saved_vit)).config.num_labels == 10


def test_no_weights_a_truncated_file_and_a_mistyped_path_are_one_line_errors(tmp_path, saved_vit, monkeypatch):
    shutil.copytree(saved_vit, tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").unlink()
    shutil.copytree(saved_vit, tmp_path / "cut")
    weights = (tmp_path / "cut" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(UsageError, match="no file named model.safetensors"):
        load_checkpoint(AutoModelForImageClassification, str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="Cannot read the weights of .*truncated"):
        load_checkpoint(AutoModelForImageClassification, str(tmp_path / "cut"))
    monkeypatch.chdir(tmp_path)  # "cut/model" looks like a Hub id, but "cut" is a folder here: a mistyped path
    with pytest.raises(FileNotFoundError, match="'cut/model': no such file"):
        load_checkpoint(AutoModelForImageClassification, "cut/model")
