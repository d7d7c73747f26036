"""Swin: window geometry, masks, odd sizes, the backbone, relative position tables, compilation, and parity with
transformers and timm."""

import copy
import json

import pytest
import timm
import torch
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table
from transformers import (
    AutoBackbone,
    AutoModelForImageClassification,
    SwinConfig,
    SwinForImageClassification,
)

from hf_vit import (
    HfSwinBackbone,
    HfSwinConfig,
    HfSwinForImageClassification,
    HfSwinModel,
)
from hf_vit.interop.convert import convert_checkpoint
from hf_vit.interop.key_maps import TIMM_SWIN_RULES, TRANSFORMERS_SWIN_RULES, load_converted_state_dict, rename_keys
from hf_vit.models.modeling_swin import (
    MASKED,
    relative_position_index,
    resize_relative_position_bias_table,
    shifted_window_mask,
    window_order,
    window_partition,
    window_reverse,
)

from conftest import (
    HUB_TOKEN,
    assert_same_logits,
    randomize,
    save_timm,
    subprocess_convert,
)

TINY_SWIN = dict(
    image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4, num_labels=3
)


def test_swin_compiles_with_torch_compile_defaults():
    # dynamo's default shape handling is what once failed (a symbolic shift size); aot_eager traces as inductor
    # does without generating code, at a tenth of the time
    model = randomize(HfSwinForImageClassification(HfSwinConfig(**TINY_SWIN)))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels).logits
        compiled = torch.compile(model, backend="aot_eager")
        torch.testing.assert_close(compiled(pixels).logits, expected, rtol=1e-4, atol=1e-4)


def test_resizing_the_relative_position_bias_table_stays_on_its_device():
    """A fake CUDA table (no GPU needed): mixing in a CPU tensor is the error a model on a GPU would meet."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        table = torch.empty(49, 3, device="cuda")
        resized = resize_relative_position_bias_table(table, 4, 6)
    assert resized.device.type == "cuda" and resized.shape == (121, 3)


SMALL_SWIN = dict(
    image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=4, num_labels=5
)


# Large enough to mean something, small enough that float32 rounding over 12 blocks stays far below 1e-4.
PARITY_STD = 0.1


@pytest.fixture
def tiny_swin_config():
    return HfSwinConfig(**SMALL_SWIN, drop_path_rate=0.0)


def test_window_partition_and_reverse_round_trip_and_shift_cyclically():
    hidden = torch.randn(2, 8, 12, 3)
    for shift in (0, 2):
        windows = window_partition(hidden, 4, shift)
        assert windows.shape == (2, 6, 16, 3)
        torch.testing.assert_close(window_reverse(windows, 8, 12, 4, shift), hidden, rtol=0, atol=0)
    shifted = torch.roll(hidden, shifts=(-2, -2), dims=(1, 2))
    torch.testing.assert_close(window_partition(hidden, 4, 2), window_partition(shifted, 4, 0), rtol=0, atol=0)
    # Window 1 (second window of the first row) holds rows 0-3, columns 4-7, row-major.
    torch.testing.assert_close(window_partition(hidden, 4)[:, 1], hidden[:, :4, 4:8].reshape(2, 16, 3), rtol=0, atol=0)


def test_shift_mask_blocks_exactly_the_pairs_from_different_regions():
    height, width, window, shift = 8, 8, 4, 2
    mask = shifted_window_mask(height, width, window, shift, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)

    # Region of each pixel of the shifted map, from the definition: three bands per axis.
    def band(i, size):
        return 0 if i < size - window else (1 if i < size - shift else 2)

    regions = torch.tensor([[band(r, height) * 3 + band(c, width) for c in range(width)] for r in range(height)])
    windows = window_partition(regions.view(1, height, width, 1), window).view(4, 16)
    expected = torch.where(windows[:, :, None] == windows[:, None, :], 0.0, MASKED)
    torch.testing.assert_close(mask, expected, rtol=0, atol=0)
    assert (mask[0] == 0).all()  # the top-left window holds one region
    assert len(windows[3].unique()) == 4  # the bottom-right window holds four
    assert (mask != 0).sum() > 0 and (mask.diagonal(dim1=1, dim2=2) == 0).all()


def test_relative_position_index_matches_a_hand_built_case():
    cpu = torch.device("cpu")
    # 2x2 window, 3x3 table: index = (dy + 1) * 3 + (dx + 1) for the offset from key to query.
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert relative_position_index(2, 2, cpu).view(4, 4).tolist() == expected.tolist()
    # A 2x2 window reading a 3x3-window (5x5) table uses its central offsets: (dy + 2) * 5 + (dx + 2).
    central = torch.tensor([[12, 11, 7, 6], [13, 12, 8, 7], [17, 16, 12, 11], [18, 17, 13, 12]])
    assert relative_position_index(2, 3, cpu).view(4, 4).tolist() == central.tolist()


def test_outputs_hidden_states_at_strides_4_8_16_and_attentions(tiny_swin_config):
    tiny_swin_config._attn_implementation = "eager"
    model = HfSwinModel(tiny_swin_config).eval()
    out = model(torch.randn(2, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 16, 64)
    assert out.pooler_output.shape == (2, 64)
    assert [tuple(h.shape) for h in out.reshaped_hidden_states] == [
        (2, 16, 16, 16),
        (2, 16, 16, 16),
        (2, 32, 8, 8),
        (2, 64, 4, 4),
    ]
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 256, 16), (2, 256, 16), (2, 64, 32), (2, 16, 64)]
    # Stage 1: 16 windows of 4x4 and 1 head; the last stage (4x4 map) is a single window.
    assert out.attentions[0].shape == (2 * 16, 1, 16, 16) and out.attentions[-1].shape == (2, 4, 16, 16)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(32, 1, 16))


@pytest.mark.parametrize("size", [(230, 190), (96, 96), (448, 320)])
def test_odd_sizes_run_and_eager_equals_sdpa(size):
    config = HfSwinConfig(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], num_labels=3, drop_path_rate=0.0)
    eager = randomize(HfSwinForImageClassification(copy.deepcopy(config)), std=PARITY_STD)
    eager.set_attn_implementation("eager")
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    pixels = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = eager(pixels, output_hidden_states=True)
        torch.testing.assert_close(sdpa(pixels).logits, out.logits, atol=1e-4, rtol=0)
    height, width = -(-size[0] // 4), -(-size[1] // 4)
    for stage_map in out.hidden_states[1:]:
        assert stage_map.shape[1] == height * width
        height, width = -(-height // 2), -(-width // 2)
    assert out.logits.shape == (1, 3)


def test_masks_and_indices_are_cached_per_resolution_and_never_saved(tiny_swin_config, tmp_path):
    model = HfSwinForImageClassification(tiny_swin_config).eval()
    pixels = torch.randn(1, 3, 64, 64)
    model(pixels)
    builds = window_order.cache_info().misses, shifted_window_mask.cache_info().misses
    model(pixels)
    assert (window_order.cache_info().misses, shifted_window_mask.cache_info().misses) == builds
    model(torch.randn(1, 3, 96, 80))
    assert shifted_window_mask.cache_info().misses > builds[1]
    assert not [key for key in model.state_dict() if "index" in key or "mask" in key]
    # A mask first built under inference mode must still serve training.
    window_order.cache_clear()
    shifted_window_mask.cache_clear()
    relative_position_index.cache_clear()
    with torch.inference_mode():
        model(pixels)
    model.train()
    model(pixels, labels=torch.tensor([1])).loss.backward()


def test_backbone_returns_normalised_maps_at_strides_4_8_16_32(tmp_path, hub):
    config = HfSwinConfig(
        embed_dim=16,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 2, 4],
        out_features=["stem", "stage1", "stage2", "stage3", "stage4"],
    )
    backbone = AutoBackbone.from_config(config)
    assert type(backbone) is HfSwinBackbone
    assert backbone.channels == [16, 16, 32, 64, 128]
    pixels = torch.randn(2, 3, 128, 96)
    maps = backbone(pixels).feature_maps
    assert [tuple(m.shape) for m in maps] == [
        (2, 16, 32, 24),
        (2, 16, 32, 24),
        (2, 32, 16, 12),
        (2, 64, 8, 6),
        (2, 128, 4, 3),
    ]
    assert all(m.is_contiguous() for m in maps)
    torch.testing.assert_close(maps[-1].mean(1), torch.zeros(2, 4, 3), atol=1e-5, rtol=0)  # LayerNorm over channels
    backbone.save_pretrained(tmp_path / "backbone")
    config_json = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert config_json["auto_map"]["AutoBackbone"] == "modeling_swin.HfSwinBackbone"
    local = HfSwinBackbone.from_pretrained(tmp_path / "backbone", out_features=["stage2", "stage4"])
    assert [m.shape[1] for m in local(torch.randn(1, 3, 64, 64)).feature_maps] == [32, 128]
    # AutoBackbone.from_pretrained takes Hub ids (transformers 5 sends a local path to the Hub's repo_exists).
    backbone.push_to_hub("user/swin-backbone", token=HUB_TOKEN)
    from_hub = AutoBackbone.from_pretrained("user/swin-backbone", cache_dir=tmp_path / "cache").eval()
    torch.testing.assert_close(from_hub(pixels).feature_maps[-1], backbone.eval()(pixels).feature_maps[-1])


def test_invalid_configs_name_the_field():
    with pytest.raises(ValueError, match="depths and num_heads"):
        HfSwinConfig(depths=[2, 2], num_heads=[3, 6, 12])
    with pytest.raises(ValueError, match=r"num_heads\[1\] = 5 must divide"):
        HfSwinConfig(depths=[2, 2], num_heads=[3, 5])
    with pytest.raises(ValueError, match="window_size must be positive"):
        HfSwinConfig(window_size=0)
    with pytest.raises(
        ValueError, match=r"image_size 200 must be a multiple of patch_size \* 2\*\*\(stages - 1\) = 32"
    ):
        HfSwinConfig(image_size=200)
    with pytest.raises(ValueError, match="out_features must be a subset"):
        HfSwinConfig(out_features=["stage9"])
    with pytest.raises(ValueError, match="channels"):
        HfSwinModel(HfSwinConfig(**SMALL_SWIN))(torch.randn(1, 1, 64, 64))


def transformers_swin(attn_implementation, **overrides):
    config = SwinConfig(num_labels=10, attn_implementation=attn_implementation, **overrides)
    return randomize(SwinForImageClassification(config), std=PARITY_STD)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("size", [224, 448])
def test_transformers_swin_tiny_parity(attn_implementation, size):
    # A fresh reference per size: transformers' Swin keeps the window/shift clamp of the smallest size it has run.
    reference = transformers_swin(attn_implementation, image_size=size)
    ours = HfSwinForImageClassification(HfSwinConfig(num_labels=10, attn_implementation=attn_implementation)).eval()
    load_converted_state_dict(ours, rename_keys(reference.state_dict(), TRANSFORMERS_SWIN_RULES, base="swin"))
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(pixels).logits
        assert expected.std() > 0.5
        torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)


def test_legacy_transformers_swin_key_names_are_accepted():
    reference = transformers_swin("eager", depths=[2, 2, 2, 2])
    legacy = {}
    for key, tensor in reference.state_dict().items():
        for new, old in (
            ("q_proj", "self.query"),
            ("k_proj", "self.key"),
            ("v_proj", "self.value"),
            ("o_proj", "output.dense"),
            ("relative_position_bias.relative_position_bias_table", "self.relative_position_bias_table"),
        ):
            key = key.replace(f"attention.{new}", f"attention.{old}")
        legacy[key.replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")] = tensor
    legacy["swin.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(49 * 49)
    assert "swin.encoder.layers.0.blocks.0.attention.self.query.weight" in legacy
    ours = HfSwinForImageClassification(HfSwinConfig(num_labels=10, depths=[2, 2, 2, 2])).eval()
    load_converted_state_dict(ours, rename_keys(legacy, TRANSFORMERS_SWIN_RULES, base="swin"))
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels).logits, atol=1e-4, rtol=0)


def test_timm_swin_tiny_parity_at_224_and_448():
    ours = HfSwinForImageClassification(HfSwinConfig(num_labels=10)).eval()
    for size in (224, 448):
        reference = randomize(
            timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, img_size=size), std=PARITY_STD
        )
        load_converted_state_dict(ours, rename_keys(reference.state_dict(), TIMM_SWIN_RULES, base="swin"))
        pixels = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = reference(pixels)
            assert expected.std() > 0.5
            torch.testing.assert_close(ours(pixels).logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("window_size, new_window_size", [(7, 12), (7, 5), (4, 14), (12, 7)])
def test_relative_position_tables_resize_as_timm_does(window_size, new_window_size):
    table = torch.randn((2 * window_size - 1) ** 2, 3)
    expected = resize_rel_pos_bias_table(
        table, (new_window_size,) * 2, ((2 * new_window_size - 1) ** 2, 3), (window_size,) * 2
    )
    torch.testing.assert_close(resize_relative_position_bias_table(table, window_size, new_window_size), expected)


def test_a_converted_swin_moves_to_384_px_and_12_px_windows_like_timm(tmp_path):
    reference, source = save_timm(
        tmp_path,
        "swin",
        "swin_tiny_patch4_window7_224",
        std=0.1,
        embed_dim=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
    )
    subprocess_convert(
        ["--source", source, "--output_dir", str(tmp_path / "out"), "--image_size", "384", "--window_size", "12"]
    )
    converted = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert (converted.config.image_size, converted.config.window_size) == (384, 12)
    assert converted.swin.stages[3].blocks[1].attention.relative_position_bias_table.shape == (23 * 23, 8)
    reference.set_input_size(img_size=(384, 384), window_size=12)
    assert_same_logits(converted, reference, torch.randn(2, 3, 384, 384))
    with pytest.raises(ValueError, match="window_size must be a positive integer, got 0"):
        converted.set_window_size(0)
    _, vit_source = save_timm(tmp_path, "vit", "vit_tiny_patch16_224", depth=1)
    with pytest.raises(ValueError, match="window_size applies to hf_swin models; .* converts to hf_vit"):
        convert_checkpoint(vit_source, str(tmp_path / "vit_out"), window_size=12)
    assert not (tmp_path / "vit_out").exists()
