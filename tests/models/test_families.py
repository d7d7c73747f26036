"""What every family must do, checked on each (as transformers' `ModelTesterMixin` and timm's `tests/test_models.py`
do): a checkpoint that carries its code and loads through every Auto class, also where hf_vit is not installed;
pipelines; eager and SDPA attention that agree; gradient checkpointing that changes no gradient; a training step
in bf16 autocast that compiles as one graph once, and one in fp16 with a scaler."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

import hf_vit
from hf_vit.processors import make_image_processor

from conftest import family_classifier, randomize, run_without_hf_vit, training_inputs

# every family, and the ViT with the options that change its attention most (rotary positions, registers)
VARIANTS = ["hf_vit", "hf_vit dinov3", "hf_vit eva02", "hf_deit", "hf_vit_hybrid", "hf_swin"]
FAMILIES = sorted(hf_vit.FAMILIES)


@pytest.mark.parametrize("family", VARIANTS)
def test_the_training_step_of_every_family_compiles_in_one_graph_once(family):
    model = family_classifier(family).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # a graph break raises
    inputs = training_inputs(family)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(**inputs).loss
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters() if p.requires_grad)
    # the second step runs the first step's graph: nothing the first step changed (a config field) recompiles it
    with torch._dynamo.config.patch(error_on_recompile=True), torch.autocast("cpu", dtype=torch.bfloat16):
        compiled(**training_inputs(family)).loss.backward()


@pytest.mark.parametrize("family", VARIANTS)
def test_every_family_trains_in_fp16_autocast_with_a_scaler(family):
    # CPU autocast takes fp16 where torch allows it; the GradScaler is what --fp16 adds on a GPU
    torch.manual_seed(0)
    model = family_classifier(family).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        output = model(**training_inputs(family))
    assert output.logits.dtype == torch.float16 and output.loss.dtype == torch.float32
    scaler.scale(output.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(p.isfinite().all() for p in model.parameters())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Every family's small classifier (random weights, named classes) saved with an image processor, and the
    pictures and logits it gives; {family: (model, folder)}."""
    root = tmp_path_factory.mktemp("families")
    saved = {}
    for family in FAMILIES:
        model = randomize(family_classifier(family), std=0.05)
        model.config.id2label = {i: f"class_{i}" for i in range(3)}
        model.config.label2id = {name: i for i, name in model.config.id2label.items()}
        model.save_pretrained(root / family)
        make_image_processor(32).save_pretrained(root / family)
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.save({"pixels": pixels, "logits": model(pixels).logits.detach()}, root / f"{family}.pt")
        saved[family] = (model, root / family)
    return saved


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_carries_its_code_and_loads_through_every_auto_class(checkpoints, family):
    model, folder = checkpoints[family]
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_utils.py", "layers.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModelForImageClassification"} <= set(auto_map)
    pixels = torch.randn(2, 3, 32, 32)
    assert type(AutoConfig.from_pretrained(folder)) is type(model.config)
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(loaded) is type(model)
    torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits)
    base = AutoModel.from_pretrained(folder).eval()
    assert type(base) is hf_vit.FAMILIES[family].base_model_class
    torch.testing.assert_close(base(pixels).pooler_output, model.base_model(pixels).pooler_output)
    # (transformers' AutoBackbone.from_pretrained takes Hub ids only: it asks the Hub whether the repo exists)
    backbone = hf_vit.FAMILIES[family].backbone_class.from_pretrained(folder).eval()
    maps = backbone(pixels).feature_maps
    assert maps and all(m.ndim == 4 and m.shape[0] == 2 for m in maps)


def test_every_familys_checkpoint_loads_as_remote_code_where_hf_vit_is_not_installed(checkpoints):
    families = {family: str(folder) for family, (_, folder) in checkpoints.items()}
    result = run_without_hf_vit(
        f"""
        import pathlib, torch
        from transformers import AutoModelForImageClassification
        try:
            import hf_vit
            raise SystemExit("hf_vit should not be importable here")
        except ImportError:
            pass
        for family, folder in {families!r}.items():
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
            expected = torch.load(pathlib.Path(folder).parent / f"{{family}}.pt")
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            torch.testing.assert_close(model(expected["pixels"]).logits, expected["logits"])
            print("remote", type(model).__name__)
        """,
        cwd=next(iter(checkpoints.values()))[1].parent,
    )
    assert result.stdout.count("remote ") == len(FAMILIES), result.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_pipelines_classify_and_extract_features_from_pil_pictures(checkpoints, family):
    model, folder = checkpoints[family]
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = make_image_processor(32)(pictures, return_tensors="pt")["pixel_values"]
    expected = torch.softmax(model(pixels).logits, -1)
    for prediction, probabilities in zip(
        pipeline("image-classification", model=str(folder), top_k=3)(pictures), expected
    ):
        assert {p["label"] for p in prediction} == {f"class_{i}" for i in range(3)}
        assert prediction[0]["label"] == f"class_{probabilities.argmax().item()}"
        assert prediction[0]["score"] == pytest.approx(probabilities.max().item(), abs=1e-4)
    extractor = pipeline("image-feature-extraction", model=str(folder))
    features = np.asarray(extractor(pictures[0], return_tensors=False))
    assert features.shape == (1, *model.base_model(pixels[:1]).last_hidden_state.shape[1:])
    assert extractor(pictures[0], pool=True, return_tensors=True).shape[-1] == model.config.hidden_size


@pytest.mark.parametrize("family", VARIANTS)
def test_eager_and_sdpa_agree_and_only_eager_returns_attention_maps(family):
    model = randomize(family_classifier(family), std=0.05)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sdpa = model(pixels).logits
        with pytest.raises(ValueError, match="attn_implementation='eager'"):
            model(pixels, output_attentions=True)
        model.set_attn_implementation("eager")
        eager = model(pixels, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa, atol=1e-5, rtol=1e-5)
    blocks = sum(model.config.depths) if family == "hf_swin" else model.config.num_hidden_layers
    assert len(eager.attentions) == blocks


@pytest.mark.parametrize("family", VARIANTS)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    reference = randomize(family_classifier(family), std=0.05).train()
    checkpointed = family_classifier(family).train()
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.gradient_checkpointing_enable()
    inputs = training_inputs(family)
    for model in (reference, checkpointed):
        torch.manual_seed(0)
        model(**inputs).loss.backward()
    for (name, a), b in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
