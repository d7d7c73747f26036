"""Recipes: which ingredient each recipe picks for which data size and source, and that explicit flags win."""

import dataclasses

import pytest

from hf_vit.cli import parse_config_overrides
from hf_vit.training.arguments import FinetuneTrainingArguments
from hf_vit.training.finetune import parse_args
from hf_vit.training.recipes import (
    DEIT_REGULARISERS,
    DISTILLATION_RAND_AUGMENT,
    INGREDIENTS,
    PLAIN,
    RunFacts,
    regularisation_strength,
    resolve_recipe,
)
from hf_vit.training.trainer import ImageClassificationTrainer

from conftest import TINY, run_script

DIGITS = RunFacts(
    num_train_images=1437,
    num_labels=10,
    image_size=32,
    model_type="hf_vit",
    from_checkpoint=False,
    has_teacher=False,
    num_train_epochs=15,
    global_batch_size=16,
    flips_keep_labels=False,
)


IMAGENET = dataclasses.replace(
    DIGITS,
    num_train_images=1_281_167,
    num_train_epochs=300,
    global_batch_size=1024,
    image_size=224,
    num_labels=1000,
    flips_keep_labels=True,
)


def resolve(recipe: str, facts: RunFacts, *flags: str):
    model_args, _, training_args, recipe_args, _ = parse_args(["--output_dir", "unused", "--recipe", recipe, *flags])
    return resolve_recipe(recipe_args, training_args, parse_config_overrides(model_args.config_overrides), facts)


def test_regularisation_strength_grows_with_the_images_seen():
    sizes = [(400, 15), (1437, 15), (1437, 60), (50_000, 20), (50_000, 300), (1_281_167, 300)]
    strengths = [
        regularisation_strength(dataclasses.replace(DIGITS, num_train_images=n, num_train_epochs=e)) for n, e in sizes
    ]
    assert strengths[:2] == [0.0, 0.0] and strengths[-1] == 1.0
    assert strengths == sorted(strengths) and 0 < strengths[2] < strengths[3] < strengths[4] < 1


def test_deit_at_imagenet_scale_is_deits_table_9():
    ingredients = resolve("deit", IMAGENET)
    for name, (_, value) in DEIT_REGULARISERS.items():
        assert getattr(ingredients, name) == value, name
    assert ingredients.repeated_augmentation == 3 and ingredients.learning_rate == pytest.approx(
        1e-3
    )  # 5e-4 x 1024 / 512
    assert ingredients.ema_decay == pytest.approx(1 - 15 / (1252 * 300)) and ingredients.hflip_prob == 0.5
    assert ingredients.warmup_steps == 0.02  # 5 of 300 epochs, in whole percents


def test_deit_on_small_data_keeps_its_regularisers_off_and_a_usable_learning_rate():
    ingredients = resolve("deit", DIGITS)
    assert all(getattr(ingredients, name) == off for name, (off, _) in DEIT_REGULARISERS.items())
    assert ingredients.crop_scale_min == 1.0 and ingredients.mixup_alpha == 0.0  # no crop, no Mixup
    assert ingredients.repeated_augmentation == 1 and ingredients.hflip_prob == 0.0
    assert ingredients.learning_rate == 5e-4  # DeiT's linear rule alone would give 5e-4 x 16 / 512 = 1.6e-5
    assert ingredients.warmup_steps == 0.1 and "steadied the first epochs" in ingredients.reasons["warmup_steps"]
    assert "at strength 0.00" in ingredients.reasons["mixup_alpha"] and ingredients.position_embedding_init is None


@pytest.mark.parametrize("recipe", ["auto", "deit"])
def test_a_student_from_scratch_with_a_teacher_starts_at_sincos_with_randaugment(recipe):
    student = dataclasses.replace(DIGITS, model_type="hf_deit", has_teacher=True)
    ingredients = resolve(recipe, student)
    assert (
        ingredients.position_embedding_init == "sincos"
        and ingredients.rand_augment_magnitude == DISTILLATION_RAND_AUGMENT
    )
    assert ingredients.patch_embedding_init == "xavier"  # MAE's start beside the table
    convolutional = resolve(recipe, dataclasses.replace(student, patch_projection=False))  # a conv stem, a hybrid
    assert (convolutional.position_embedding_init, convolutional.patch_embedding_init) == ("sincos", None)
    assert "no linear patch projection" in convolutional.reasons["patch_embedding_init"]
    assert "the teacher labels each augmented view" in ingredients.reasons["rand_augment_magnitude"]
    assert ingredients.mixup_alpha == 0.0 and ingredients.crop_scale_min == 1.0  # the other regularisers stay off
    longer = dataclasses.replace(student, num_train_images=50_000, num_train_epochs=300)
    ingredients = resolve(recipe, longer)
    assert ingredients.position_embedding_init == "sincos"
    assert ingredients.rand_augment_magnitude == round(9 * regularisation_strength(longer)) > DISTILLATION_RAND_AUGMENT
    # the model's own start and DeiT's RandAugment at its strength: without a teacher, at DeiT's budget, from a
    # checkpoint (its weights are loaded), for a model without learned position embeddings (Swin)
    for facts in (
        DIGITS,
        dataclasses.replace(IMAGENET, model_type="hf_deit", has_teacher=True),
        dataclasses.replace(student, from_checkpoint=True),
        dataclasses.replace(student, model_type="hf_swin", position_embeddings=False),
    ):
        ingredients = resolve(recipe, facts)
        assert ingredients.position_embedding_init is None and ingredients.patch_embedding_init is None, facts
        assert ingredients.rand_augment_magnitude == round(9 * regularisation_strength(facts)), facts
    plain = resolve("plain", student)
    assert (plain.position_embedding_init, plain.patch_embedding_init, plain.rand_augment_magnitude) == (None, None, 0)


def test_deit_warms_up_longer_the_less_it_regularises():
    sizes = [(1437, 15), (1437, 20), (1437, 60), (50_000, 100), (1_281_167, 300)]
    warmups = [
        resolve("deit", dataclasses.replace(DIGITS, num_train_images=n, num_train_epochs=e)).warmup_steps
        for n, e in sizes
    ]
    assert warmups[:2] == [0.1, 0.1] and warmups[-1] == 0.02 and warmups == sorted(warmups, reverse=True)
    assert warmups[2] < 0.1 and warmups[3] > 0.02  # (1437, 20) is the quick start: strength 0.03, still 10 %
    assert resolve("deit", dataclasses.replace(DIGITS, from_checkpoint=True)).warmup_steps == 0.05


@pytest.mark.parametrize(
    "facts", [DIGITS, IMAGENET, dataclasses.replace(DIGITS, model_type="hf_deit", has_teacher=True)]
)
def test_auto_from_scratch_is_deit_scaled_to_the_run(facts):
    assert resolve("auto", facts) == resolve("deit", facts)


def test_auto_keeps_rate_and_layers_from_a_checkpoint():
    scratch, tuned = resolve("auto", DIGITS), resolve("auto", dataclasses.replace(DIGITS, from_checkpoint=True))
    assert scratch.warmup_steps == 0.1 and scratch.learning_rate == 5e-4 and scratch.ema_decay > 0.98
    assert (tuned.learning_rate, tuned.layer_decay, tuned.warmup_steps) == (5e-4, 1.0, 0.05)
    assert "fine-tuning study" in tuned.reasons["layer_decay"] and "lost 20 points" in tuned.reasons["learning_rate"]
    assert resolve("auto", IMAGENET, "--layer_decay", "0.65").layer_decay == 0.65
    middle = resolve(
        "auto", dataclasses.replace(DIGITS, num_train_images=50_000, num_train_epochs=100, flips_keep_labels=True)
    )
    assert (
        0 < middle.mixup_prob < 1
        and middle.mixup_alpha == 0.8
        and 0 < middle.rand_augment_magnitude < 9
        and middle.hflip_prob == 0.5
    )
    assert 0.08 < middle.crop_scale_min < 1.0


def test_finetune_recipe_is_deits_with_layer_decay_drop_path_half_the_rate_and_a_short_warmup():
    for facts in (DIGITS, IMAGENET):
        deit = resolve("deit", facts)
        tuned = resolve("finetune", dataclasses.replace(facts, from_checkpoint=True))
        assert (tuned.layer_decay, tuned.drop_path_rate, tuned.warmup_steps) == (0.75, 0.1, 0.05)
        assert tuned.learning_rate == deit.learning_rate / 2 and tuned.mixup_alpha == deit.mixup_alpha
        assert "BEiT / MAE" in tuned.reasons["layer_decay"]


def test_plain_recipe_is_the_plain_values():
    ingredients = resolve("plain", IMAGENET)
    assert {name: getattr(ingredients, name) for name in PLAIN} == PLAIN


EXPLICIT = dict(
    learning_rate="0.0123",
    weight_decay="0.3",
    warmup_steps="7",
    crop_scale_min="0.5",
    hflip_prob="0.25",
    rand_augment_magnitude="4",
    random_erasing_prob="0.1",
    mixup_alpha="0.3",
    cutmix_alpha="0.4",
    mixup_switch_prob="0.6",
    mixup_prob="0.7",
    label_smoothing="0.2",
    repeated_augmentation="2",
    ema_decay="0.9",
    drop_path_rate="0.05",
    layer_decay="0.8",
    position_embedding_init="trunc_normal",
    patch_embedding_init="trunc_normal",
)


@pytest.mark.parametrize("recipe", ["auto", "deit", "finetune", "plain"])
@pytest.mark.parametrize("facts", [DIGITS, IMAGENET], ids=["digits", "imagenet"])
def test_an_explicit_flag_always_wins(recipe, facts):
    assert set(EXPLICIT) == set(INGREDIENTS)
    for name, value in EXPLICIT.items():
        ingredients = resolve(recipe, facts, f"--{name}", value)
        expected = value if name.endswith("_embedding_init") else pytest.approx(float(value))
        assert getattr(ingredients, name) == expected and ingredients.reasons[name] == "given", name
    by_config = resolve(
        recipe,
        facts,
        "--config_overrides",
        "drop_path_rate=0.07,position_embedding_init=trunc_normal,patch_embedding_init=trunc_normal",
    )
    assert by_config.drop_path_rate == 0.07 and by_config.reasons["drop_path_rate"] == "given"
    for name in ("position_embedding_init", "patch_embedding_init"):
        assert getattr(by_config, name) == "trunc_normal" and by_config.reasons[name] == "given"
    assert resolve(recipe, facts, "--ema_decay", "0").ema_decay == 0  # 0 turns an ingredient off


def test_unknown_recipe_fails_before_any_data_is_read(tmp_path):
    result = run_script(
        ["--output_dir", str(tmp_path / "out"), "--recipe", "fast", "--config_overrides", TINY], expect_success=False
    )
    assert (
        result.returncode != 0
        and "Unknown --recipe 'fast'; choose one of ['auto', 'deit', 'finetune', 'plain']" in result.stderr
    )
    assert "Checking" not in result.stderr and not (tmp_path / "out").exists()


def test_the_trainer_wants_the_optimisation_ingredients_resolved(tmp_path, tiny_vit_config):
    from hf_vit import HfViTForImageClassification

    args = FinetuneTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, eval_strategy="no")
    with pytest.raises(ValueError, match=r"\['weight_decay', 'warmup_steps'\] unset"):
        ImageClassificationTrainer(model=HfViTForImageClassification(tiny_vit_config), args=args)


def test_a_weak_recipe_mixes_few_batches_rather_than_with_a_small_alpha():
    """CutMix with Beta(a, a) for a small a is no weak CutMix: lam lands near 0 or 1, and a box of nearly the whole
    picture, clipped at its random centre, pastes in a quarter to all of another picture. A recipe scaled towards
    off mixes fewer batches (`mixup_prob`), at DeiT's alphas."""
    from hf_vit.training.regularisation import BatchMixer

    quick_start = resolve("auto", dataclasses.replace(DIGITS, num_train_epochs=20))
    assert 0 < quick_start.mixup_prob < 0.1 and (quick_start.mixup_alpha, quick_start.cutmix_alpha) == (0.8, 1.0)
    assert resolve("deit", IMAGENET).mixup_prob == 1.0
    off = resolve("auto", dataclasses.replace(DIGITS, num_train_images=400))
    assert (off.mixup_prob, off.mixup_alpha, off.cutmix_alpha) == (0.0, 0.0, 0.0)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    images, labels = torch.rand(8, 1, 8, 8), torch.arange(8)
    mixer = BatchMixer(8, 0.8, 1.0, prob=quick_start.mixup_prob)
    unmixed = sum(torch.equal(mixer(images, labels)[0], images) for _ in range(200))
    assert unmixed >= 200 * (1 - 3 * quick_start.mixup_prob)  # about 1 - mixup_prob of the batches left as they are


def test_multi_label_data_turns_off_mixing_and_smoothing_and_refuses_them_by_hand():
    from hf_vit.training.recipes import fit_to_training

    ingredients = fit_to_training(
        resolve("deit", IMAGENET), lora=False, sharded=False, streaming=False, multi_label=True
    )
    assert (ingredients.mixup_alpha, ingredients.cutmix_alpha, ingredients.label_smoothing) == (0.0, 0.0, 0.0)
    assert ingredients.reasons["label_smoothing"].startswith("multi-label data:")
    given = resolve("deit", IMAGENET, "--label_smoothing", "0.1")
    with pytest.raises(ValueError, match="--label_smoothing 0.1 does not apply with multi-label data"):
        fit_to_training(given, lora=False, sharded=False, streaming=False, multi_label=True)


def test_naflex_turns_off_mixup_and_cutmix_and_refuses_them_by_hand():
    from hf_vit.training.recipes import fit_to_training

    ingredients = fit_to_training(resolve("deit", IMAGENET), lora=False, sharded=False, streaming=False, naflex=True)
    assert (ingredients.mixup_alpha, ingredients.cutmix_alpha) == (0.0, 0.0) and ingredients.label_smoothing > 0
    assert ingredients.reasons["mixup_alpha"].startswith("--max_num_patches:")
    given = resolve("deit", IMAGENET, "--cutmix_alpha", "1.0")
    with pytest.raises(ValueError, match="--cutmix_alpha 1.0 does not apply with --max_num_patches"):
        fit_to_training(given, lora=False, sharded=False, streaming=False, naflex=True)
