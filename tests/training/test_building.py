"""From arguments to a model (`hf_vit.training.building`): a shape-changing override of a checkpoint refused, a new
head for other labels."""

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_vit import (
    HfViTConfig,
    HfViTForImageClassification,
)
from hf_vit.guards import UsageError
from hf_vit.training.finetune import finetune, parse_args

from conftest import TINY_CLASSIFIER, make_imagefolder, randomize


def test_a_shape_changing_override_of_a_checkpoint_is_refused_naming_image_size(tmp_path, capsys):
    HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER)).save_pretrained(tmp_path / "checkpoint")
    train = make_imagefolder(tmp_path / "train", per_class=4)
    for override, named in (("image_size=64", "--image_size"), ("patch_size=4", "patch_size=4")):
        args = ["--output_dir", str(tmp_path / "out"), "--train_dir", str(train),
                "--model_name_or_path", str(tmp_path / "checkpoint"), "--config_overrides", override]  # fmt: skip
        with pytest.raises(UsageError, match="would start weights of the checkpoint .* at random") as error:
            finetune(*parse_args(args))
        assert named in str(error.value) and "position_embeddings" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_with_other_labels_of_the_same_count_gets_a_new_head(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    config = HfViTConfig(
        **{**TINY_CLASSIFIER, "image_size": 24, "patch_size": 4, "num_labels": 2},
        id2label={0: "apple", 1: "pear"},
        label2id={"apple": 0, "pear": 1},
    )
    randomize(HfViTForImageClassification(config), std=1.0).save_pretrained(checkpoint)
    old_head = AutoModelForImageClassification.from_pretrained(checkpoint).classifier.weight.detach().clone()
    train = make_imagefolder(tmp_path / "train", per_class=4)  # cat, dog
    args = ["--output_dir", str(tmp_path / "out"), "--train_dir", str(train),
            "--model_name_or_path", str(checkpoint), "--max_steps", "1", "--save_strategy", "no",
            "--disable_tqdm", "true", "--recipe", "plain", "--learning_rate", "1e-9"]  # fmt: skip
    finetune(*parse_args(args))
    printed = capsys.readouterr().out
    assert (
        "The checkpoint's head classifies ['apple', 'pear'], the data has ['cat', 'dog']: the head starts afresh"
        in printed
    )
    assert "after 1 steps" in printed  # the closing line counts what ran
    tuned = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert tuned.config.id2label == {0: "cat", 1: "dog"}
    assert not torch.allclose(tuned.classifier.weight, old_head, atol=1e-3)
    assert tuned.classifier.weight.abs().max() < 0.1  # a new head's truncated normal, not the randomised one
