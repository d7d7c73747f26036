"""Model cards (`hf_vit.cards`): valid Hub metadata, one accuracy per epoch, curves linked, local sources named by
their folder."""

from huggingface_hub import ModelCard
from PIL import Image

from hf_vit import HfViTConfig, HfViTForImageClassification
from hf_vit.cards import render_model_card
from hf_vit.training.finetune import finetune, parse_args

from conftest import TINY, TINY_CLASSIFIER, make_imagefolder


def test_the_card_is_valid_hub_metadata_with_one_accuracy_per_epoch_and_links_the_curves(tmp_path):
    output_dir = tmp_path / "run"
    train = make_imagefolder(tmp_path / "train", per_class=6)
    args = ["--output_dir", str(output_dir), "--train_dir", str(train), "--num_train_epochs", "2",
            "--config_overrides", TINY, "--disable_tqdm", "true", "--save_strategy", "no",
            "--train_val_split", "0.25"]  # fmt: skip
    metrics = finetune(*parse_args(args))
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets is None  # a local folder is no Hub dataset id
    (result,) = card.data.eval_results
    assert (result.task_type, result.metric_type) == ("image-classification", "accuracy")
    assert result.metric_value == round(metrics["eval_accuracy"], 4) and result.dataset_name == "imagefolder train"
    assert "eval accuracy at epochs 1, 2: " in card.text  # the final evaluate() repeats epoch 2; listed once
    assert "optimizer: adamw_torch_fused" in card.text or "optimizer: adamw_torch" in card.text
    assert "OptimizerNames" not in card.text and "SchedulerType" not in card.text
    assert "](training_curves.png)" in card.text
    with Image.open(output_dir / "training_curves.png") as picture:
        assert picture.size[0] > 800

    on_hub = ModelCard(
        render_model_card(
            HfViTForImageClassification(HfViTConfig(num_labels=3)),
            "hf_vit.md",
            dataset="beans",
            dataset_id="AI-Lab-Makerere/beans",
        )
    )
    assert on_hub.data.datasets == ["AI-Lab-Makerere/beans"] and on_hub.data.eval_results is None


def test_a_card_names_a_local_source_checkpoint_by_its_folder_only(tmp_path):
    model = HfViTForImageClassification(HfViTConfig(**TINY_CLASSIFIER))
    model.config._name_or_path = str(tmp_path / "private" / "runs" / "my-vit")
    card = render_model_card(model, "hf_vit.md")
    assert "my-vit" in card and str(tmp_path) not in card
    model.config._name_or_path = "someone/vit-base"
    assert "fine-tuned from someone/vit-base" in render_model_card(model, "hf_vit.md")
