"""The configurations (`hf_vit.models.configuration_*`): bad values named at construction, the presets, AutoConfig."""

import pytest
from transformers import AutoConfig

from hf_vit import VIT_PRESETS, HfViTConfig


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
        (dict(image_size=225), "image_size"),
        (dict(patch_size=0), "patch_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(intermediate_size=0), "intermediate_size"),
        (dict(pooling="max"), "pooling"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(drop_path_rate=-0.1), "drop_path_rate"),
        (dict(patch_embedding_type="linear"), "patch_embedding_type"),
        (dict(image_size=[224, 0]), "image_size"),
        (dict(position_interpolation="nearest"), "position_interpolation"),
        (dict(factorized_positions=True), "prefix_position_embeddings=False"),
        (dict(pooling_prefix_tokens=False), "pooling_prefix_tokens"),
        (dict(absolute_position_embeddings=False, rope="dinov3", factorized_positions=True), "factorized_positions"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        HfViTConfig(**fields)


def test_presets_match_the_named_architectures():
    small = HfViTConfig.from_preset("vit-small-patch16-224")
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads) == (384, 12, 6)
    assert small.grid_size == (14, 14)
    seed_model = HfViTConfig.from_preset("vit-cifar-patch4-32", num_labels=10)
    assert (seed_model.image_size, seed_model.patch_size, seed_model.hidden_size) == (32, 4, 128)
    assert (seed_model.num_attention_heads, seed_model.num_hidden_layers, seed_model.intermediate_size) == (4, 4, 512)
    assert seed_model.grid_size == (8, 8) and seed_model.num_labels == 10
    assert set(VIT_PRESETS) >= {"vit-tiny-patch16-224", "vit-base-patch16-224", "vit-large-patch16-224"}
    with pytest.raises(ValueError, match="Unknown preset 'vit-huge'"):
        HfViTConfig.from_preset("vit-huge")


def test_auto_config_round_trip(tmp_path):
    config = AutoConfig.for_model("hf_vit", hidden_size=64, num_attention_heads=4, pooling="mean", num_labels=3)
    assert isinstance(config, HfViTConfig)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HfViTConfig)
    assert (loaded.hidden_size, loaded.pooling, loaded.num_labels) == (64, "mean", 3)
