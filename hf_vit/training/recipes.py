"""Training recipes: every ingredient of a run (augmentation, regularisation, optimisation) decided in one place.

    RecipeArguments                      `--recipe NAME` and one flag per ingredient (unset: the recipe decides)
    RECIPES[name](facts)                 each recipe declared once: a value and its reason for every ingredient
    resolve_recipe(args, ..., facts)     -> Ingredients, every value concrete; a flag the user gave always wins

A recipe is a function of the run's facts (`RunFacts`: training-set size, image size, family, from scratch or
from a checkpoint, epochs, global batch, teacher), so that what it picks can fit the data it is given.
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunFacts:
    """What a recipe may look at before anything is built."""

    num_train_images: int
    num_labels: int
    image_size: int
    model_type: str
    from_checkpoint: bool
    has_teacher: bool
    num_train_epochs: float
    global_batch_size: int
    flips_keep_labels: bool = True  # False where a mirrored image is another class (digits)
    position_embeddings: bool = True  # learned absolute position embeddings (ViT, DeiT, hybrid; not Swin)
    patch_projection: bool = True  # a linear patch projection (ViT, DeiT; not a conv stem, a hybrid, Swin)
    max_steps: int = 0  # > 0: the run stops after this many optimiser steps, whatever the epochs say
    max_num_patches: int | None = None  # NaFlex: pictures at their own aspect ratio within this many patches

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_train_images // self.global_batch_size)

    @property
    def total_steps(self) -> int:
        """Optimiser steps the run takes: `max_steps` when set, else the epochs'."""
        return self.max_steps if self.max_steps > 0 else int(self.steps_per_epoch * self.num_train_epochs)

    @property
    def images_seen(self) -> float:
        """Training images the run sees, repeats included."""
        if self.max_steps > 0:
            return self.max_steps * self.global_batch_size
        return self.num_train_images * self.num_train_epochs

    @property
    def length(self) -> str:
        return f"{self.max_steps} steps" if self.max_steps > 0 else f"{self.num_train_epochs:g} epochs"

    def describe(self) -> str:
        source = "from a checkpoint" if self.from_checkpoint else "from scratch"
        teacher = "with a teacher" if self.has_teacher else "no teacher"
        size = f"{self.image_size} px" if self.max_num_patches is None else f"up to {self.max_num_patches} patches"
        return (
            f"{self.model_type} {source}, {self.num_train_images} training images of {size} in "
            f"{self.num_labels} classes x {self.length}, global batch {self.global_batch_size}, {teacher}"
        )


@dataclass(frozen=True)
class Ingredients:
    """Every value a recipe decides, concrete, and why each was chosen (`reasons[name]`)."""

    learning_rate: float
    weight_decay: float
    warmup_steps: float  # a fraction of all steps when below 1
    crop_scale_min: float
    hflip_prob: float
    rand_augment_magnitude: int  # 0: off
    random_erasing_prob: float
    mixup_alpha: float  # 0: off
    cutmix_alpha: float  # 0: off
    mixup_switch_prob: float  # the chance of CutMix rather than Mixup when both are on
    mixup_prob: float  # the chance that a batch is mixed at all (timm's mixup_prob)
    label_smoothing: float
    repeated_augmentation: int  # 1: off
    ema_decay: float  # 0: off
    drop_path_rate: float | None  # None: the model's own
    position_embedding_init: str | None = None  # None: the model's own
    patch_embedding_init: str | None = None  # None: the model's own
    layer_decay: float = 1.0  # 1: off
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        check_layer_decay(self.layer_decay)

    @property
    def augmentation(self) -> dict:
        """The per-image transform ingredients, as `data.set_transforms` takes them."""
        names = ("crop_scale_min", "hflip_prob", "rand_augment_magnitude", "random_erasing_prob")
        return {name: getattr(self, name) for name in names}

    def describe(self) -> list[str]:
        """One line per ingredient: its value and its reason."""
        return [f"{name} = {getattr(self, name)!r}: {reason}" for name, reason in self.reasons.items()]

    @classmethod
    def off(cls, **given) -> "Ingredients":
        """No regularisation and the model's own start, with `given` values; the optimisation values stay None (the
        Trainer's arguments' own): for building a Trainer by hand."""
        values = {name: value for name, value in PLAIN.items() if name not in TRAINING_INGREDIENTS}
        return cls(
            **{**dict.fromkeys(TRAINING_INGREDIENTS), **values, "hflip_prob": 0.0, "crop_scale_min": 1.0, **given}
        )


INGREDIENTS = [f.name for f in dataclasses.fields(Ingredients) if f.name != "reasons"]
# Ingredients that are TrainingArguments flags; the others are RecipeArguments flags.
TRAINING_INGREDIENTS = ("learning_rate", "weight_decay", "warmup_steps")
# Config-field ingredients that set only how a model trained from scratch starts (a checkpoint loads its weights).
START_INGREDIENTS = ("position_embedding_init", "patch_embedding_init")
# Ingredients that are model config fields: --config_overrides may give them too.
CONFIG_INGREDIENTS = ("drop_path_rate", *START_INGREDIENTS)


@dataclass
class RecipeArguments:
    """The recipe and its ingredients, each its own flag; an unset flag is the recipe's to choose."""

    _argument_group_name = "recipe"

    recipe: str = field(
        default="auto",
        metadata={
            "help": "The training recipe: auto (fits the data, the default), deit (DeiT's, scaled to the run), "
            "finetune (BEiT's and MAE's for a pretrained checkpoint: layer decay, drop-path, half the rate) or "
            "plain (light augmentation only); the README's recipe table says what each sets."
        },
    )
    crop_scale_min: float | None = field(
        default=None, metadata={"help": "Smallest area fraction kept by RandomResizedCrop in training."}
    )
    hflip_prob: float | None = field(default=None, metadata={"help": "Probability of a horizontal flip in training."})
    rand_augment_magnitude: int | None = field(
        default=None, metadata={"help": "RandAugment (2 ops) at this magnitude in training; 0 turns it off."}
    )
    random_erasing_prob: float | None = field(default=None, metadata={"help": "RandomErasing probability in training."})
    mixup_alpha: float | None = field(default=None, metadata={"help": "Mixup Beta(alpha, alpha); 0 turns it off."})
    cutmix_alpha: float | None = field(default=None, metadata={"help": "CutMix Beta(alpha, alpha); 0 turns it off."})
    mixup_switch_prob: float | None = field(
        default=None, metadata={"help": "Chance of CutMix rather than Mixup when both are on (DeiT's: 0.5)."}
    )
    mixup_prob: float | None = field(
        default=None,
        metadata={"help": "Chance that a batch is mixed at all when Mixup or CutMix is on (DeiT's and timm's: 1)."},
    )
    label_smoothing: float | None = field(
        default=None, metadata={"help": "Label smoothing, folded into the soft targets."}
    )
    repeated_augmentation: int | None = field(
        default=None, metadata={"help": "Repeat each image this many times per epoch, each with its own augmentation."}
    )
    ema_decay: float | None = field(
        default=None,
        metadata={"help": "Keep an EMA of the weights with this decay (0: off); it is evaluated and saved."},
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth of the last block (also a config field)."}
    )
    position_embedding_init: str | None = field(
        default=None,
        metadata={
            "help": "How a model trained from scratch starts its position embeddings: trunc_normal (ViT's) or "
            "sincos (a 2D sine-cosine table); also a config field."
        },
    )
    patch_embedding_init: str | None = field(
        default=None,
        metadata={
            "help": "How a model trained from scratch starts its linear patch projection: trunc_normal (ViT's) "
            "or xavier (MAE's); also a config field."
        },
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise learning-rate decay: block i of n learns at decay^(n + 1 - i) of the rate, "
            "the embeddings (and a hybrid's backbone) lowest, the final norm and head at the full rate; 1: off."
        },
    )


Choice = tuple[object, str]  # (value, reason)

# The plain recipe: AdamW, cosine decay after a short warmup, light crop (+ flip) augmentation, nothing else.
PLAIN = dict(
    learning_rate=1e-3,
    weight_decay=0.05,
    warmup_steps=0.02,
    crop_scale_min=0.8,
    rand_augment_magnitude=0,
    random_erasing_prob=0.0,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    mixup_switch_prob=0.5,
    mixup_prob=1.0,
    label_smoothing=0.0,
    repeated_augmentation=1,
    ema_decay=0.0,
    drop_path_rate=None,
    position_embedding_init=None,
    patch_embedding_init=None,
    layer_decay=1.0,
)

# DeiT's regularisers, (off, at ImageNet scale: Touvron et al. 2021, table 9, 1.28M images x 300 epochs);
# `deit_recipe` moves each from off towards DeiT's value by `regularisation_strength`. DeiT crops with
# RandomResizedCrop's default scale (0.08, 1); off is no crop at all. Mixup and CutMix are scaled by how many batches
# they mix, at DeiT's alphas (`DEIT_MIXING`): a small alpha is no weak CutMix (Beta(a, a) puts lam near 0 or 1, and a
# box of nearly the whole picture, clipped at its random centre, pastes in 25-100 % of another).
DEIT_REGULARISERS = dict(
    crop_scale_min=(1.0, 0.08),
    rand_augment_magnitude=(0, 9),
    random_erasing_prob=(0.0, 0.25),
    mixup_prob=(0.0, 1.0),
    label_smoothing=(0.0, 0.1),
    drop_path_rate=(0.0, 0.1),
)
DEIT_MIXING = dict(mixup_alpha=0.8, cutmix_alpha=1.0)
DEIT_IMAGES_SEEN = 1_281_167 * 300
# Up to this many images seen (training images x epochs), every DeiT regulariser lowered accuracy in the recipe
# study (digits: 1,437 images x 15 epochs; `hf_vit_lessons.recipe_study`): the model is still underfitting there.
UNDERFITTING_IMAGES_SEEN = 1_437 * 15
# Warmup, a fraction of the steps: DeiT warms up for 5 of its 300 epochs; from scratch below its budget a 10 %
# warmup steadied the first epochs in the recipe study (the quick start's ViT: 91.4 -> 95.0 %, digits x 15 epochs).
DEIT_WARMUP, SMALL_DATA_WARMUP = 5 / 300, 0.1
# RandAugment's smallest magnitude for a student from scratch with a teacher and the sine-cosine position start
# (`distillation_start`), measured in the recipe study.
DISTILLATION_RAND_AUGMENT = 5


def regularisation_strength(facts: RunFacts) -> float:
    """How much of DeiT's regularisation a run can use, in [0, 1]: 0 up to the images seen (training images x
    epochs) at which the study found every regulariser hurting, 1 at DeiT's ImageNet budget, log-linear between."""
    seen = facts.images_seen
    position = math.log(max(seen, 1) / UNDERFITTING_IMAGES_SEEN) / math.log(DEIT_IMAGES_SEEN / UNDERFITTING_IMAGES_SEEN)
    return min(max(position, 0.0), 1.0)


def flip_choice(flips_keep_labels: bool) -> Choice:
    """Horizontal flips where mirrored images keep their class; none where they change it (digits)."""
    if flips_keep_labels:
        return 0.5, "mirrored images keep their class"
    return 0.0, "mirrored images change class (digits)"


def plain_recipe(facts: RunFacts) -> dict[str, Choice]:
    return {name: (value, "plain recipe") for name, value in PLAIN.items()} | {
        "hflip_prob": flip_choice(facts.flips_keep_labels)
    }


def deit_learning_rate(global_batch_size: int) -> float:
    """DeiT's linear scaling rule, 5e-4 x global batch / 512, never below its value at 512: the rule assumes
    DeiT's ~375k steps, and at small batches (1.6e-5 at 16) a short run barely moves."""
    return 5e-4 * max(global_batch_size, 512) / 512


def deit_ema_decay(total_steps: int) -> float:
    """DeiT's EMA (0.99996 over ~375k steps) averages over the last ~1/15 of training; keep that fraction."""
    return 1.0 - 15.0 / max(total_steps, 15)


def deit_warmup(facts: RunFacts, strength: float) -> Choice:
    """From scratch, from `SMALL_DATA_WARMUP` at strength 0 to DeiT's 5 of 300 epochs at 1, in whole percents of
    the steps; from a checkpoint BEiT's and MAE's fine-tuning warmup."""
    if facts.from_checkpoint:
        return 0.05, "from a checkpoint: 5 % of the steps (BEiT / MAE fine-tuning: 5 of 100 epochs)"
    fraction = round(SMALL_DATA_WARMUP + (DEIT_WARMUP - SMALL_DATA_WARMUP) * strength, 2)
    return fraction, (
        f"from scratch: from 10 % at strength 0 (it steadied the first epochs in the recipe study) to DeiT's "
        f"5 of 300 epochs at 1 (here {strength:.2f})"
    )


def distillation_start(facts: RunFacts, strength: float) -> dict[str, Choice]:
    """Below DeiT's budget, a from-scratch student with learned position embeddings and a teacher starts as MAE's
    encoder does (its positions at the 2D sine-cosine table, its linear patch projection at Xavier's bound) and sees
    RandAugment at `DISTILLATION_RAND_AUGMENT` at least; otherwise the model keeps its own start (DeiT's at its
    budget; from a checkpoint its weights are loaded)."""
    model_own = (
        "no teacher"
        if not facts.has_teacher
        else "from a checkpoint, its weights"
        if facts.from_checkpoint
        else "no learned position embeddings"
        if not facts.position_embeddings
        else "DeiT's own at DeiT's budget"
        if strength >= 1.0
        else None
    )
    if model_own is not None:
        return {name: (None, f"the model's own: {model_own}") for name in START_INGREDIENTS}
    magnitude = max(DISTILLATION_RAND_AUGMENT, round(DEIT_REGULARISERS["rand_augment_magnitude"][1] * strength))
    projection = (
        (
            "xavier",
            "MAE's, beside the sine-cosine start: a patch's content starts at the scale of its position, "
            "not below it (with small patches far below), so the student leaves chance sooner (recipe study)",
        )
        if facts.patch_projection
        else (None, "the model's own: no linear patch projection")
    )
    return dict(
        position_embedding_init=(
            "sincos",
            "a student from scratch with a teacher below DeiT's budget: its positions start "
            "knowing where each patch is, so it fits its images early and RandAugment pays (recipe study)",
        ),
        patch_embedding_init=projection,
        rand_augment_magnitude=(
            magnitude,
            f"at least {DISTILLATION_RAND_AUGMENT} for a student with the sine-cosine start: "
            "the teacher labels each augmented view (recipe study, digits x 15 epochs: it lowered "
            "accuracy without the start, or without the teacher)",
        ),
    )


def deit_recipe(facts: RunFacts) -> dict[str, Choice]:
    """DeiT's recipe scaled to the run: its regularisers (crop, RandAugment, erasing, Mixup, CutMix, label
    smoothing, stochastic depth) at `regularisation_strength`, its learning-rate rule with a floor, its EMA over
    the last ~1/15 of the steps, repeated augmentation once the strength passes 1/2, a warmup that shortens towards
    DeiT's as the strength grows (`deit_warmup`); below DeiT's budget, a student from scratch with a teacher gets the
    sine-cosine start and RandAugment (`distillation_start`)."""
    strength, batch, steps = regularisation_strength(facts), facts.global_batch_size, facts.total_steps
    scaled = f"DeiT's, at strength {strength:.2f} ({facts.num_train_images} images x {facts.length})"
    choices = (
        plain_recipe(facts)
        | {
            name: (type(full)(round(off + (full - off) * strength, 3)), scaled)
            for name, (off, full) in DEIT_REGULARISERS.items()
        }
        | distillation_start(facts, strength)
    )
    repeats = 3 if strength >= 0.5 else 1
    mixing = {
        name: (alpha, "DeiT's, on the batches that mixup_prob mixes") if choices["mixup_prob"][0] > 0 else (0.0, scaled)
        for name, alpha in DEIT_MIXING.items()
    }
    return (
        choices
        | mixing
        | dict(
            learning_rate=(deit_learning_rate(batch), f"DeiT: 5e-4 x max(global batch {batch}, 512) / 512"),
            warmup_steps=deit_warmup(facts, strength),
            mixup_switch_prob=(0.5, "DeiT: CutMix or Mixup, each on half of the mixed batches"),
            repeated_augmentation=(repeats, f"DeiT: 3 from regularisation strength 0.5 (here {strength:.2f})"),
            ema_decay=(deit_ema_decay(steps), f"DeiT: averages the last ~1/15 of the {steps} steps"),
        )
    )


def auto_recipe(facts: RunFacts) -> dict[str, Choice]:
    """The recipe that fits the run: from scratch DeiT's scaled to it (`deit_recipe`); from a checkpoint the same,
    with the full learning rate for every layer. Its rules are the README's table; the recipe study measured them."""
    choices = deit_recipe(facts)
    if facts.from_checkpoint:
        measured = "from a checkpoint, in the fine-tuning study (150 images x 20 epochs, 4 blocks)"
        return choices | dict(
            learning_rate=(
                choices["learning_rate"][0],
                f"{choices['learning_rate'][1]}; {measured} a tenth of it lost 20 points",
            ),
            layer_decay=(
                1.0,
                f"{measured} layer decay 0.75 lost 2 points and 0.65 lost 9 (it pays on deep models "
                "fine-tuned for long: --layer_decay)",
            ),
        )
    return choices


def finetune_recipe(facts: RunFacts) -> dict[str, Choice]:
    """The fine-tuning recipe of BEiT and MAE for a pretrained checkpoint: DeiT's regularisers scaled to the run
    (`deit_recipe`), layer-wise learning-rate decay, stochastic depth, half DeiT's peak rate, a short warmup."""
    choices = deit_recipe(facts)
    rate, rule = choices["learning_rate"]
    return choices | dict(
        learning_rate=(rate / 2, f"half of {rule}: the checkpoint's features are adjusted, not learned"),
        warmup_steps=(0.05, "BEiT / MAE fine-tuning: 5 % of the steps (5 of 100 epochs)"),
        layer_decay=(0.75, "BEiT / MAE fine-tuning (0.65 for ViT-B, 0.75 for ViT-L): the lower blocks move least"),
        drop_path_rate=(0.1, "BEiT / MAE fine-tuning of ViT-B"),
    )


RECIPES: dict[str, Callable[[RunFacts], dict[str, Choice]]] = {
    "auto": auto_recipe,
    "plain": plain_recipe,
    "deit": deit_recipe,
    "finetune": finetune_recipe,
}


def check_layer_decay(layer_decay: float | None) -> None:
    """A layer-wise learning-rate decay must be in (0, 1] (1: off); None leaves it to the recipe."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")


def check_recipe_name(name: str) -> None:
    if name not in RECIPES:
        raise ValueError(f"Unknown --recipe {name!r}; choose one of {sorted(RECIPES)}")


def resolve_recipe(recipe_args: RecipeArguments, training_args, config_overrides: dict, facts: RunFacts) -> Ingredients:
    """Every ingredient: the user's flag where given (a RecipeArguments field, a TrainingArguments field such as
    `learning_rate`, or a `CONFIG_INGREDIENTS` field in the config overrides), else the recipe's choice for these
    facts."""
    check_recipe_name(recipe_args.recipe)
    chosen = RECIPES[recipe_args.recipe](facts)
    values, reasons = {}, {}
    for name in INGREDIENTS:
        given = getattr(training_args if name in TRAINING_INGREDIENTS else recipe_args, name)
        if name in CONFIG_INGREDIENTS and given is None:
            given = config_overrides.get(name)
        values[name], reasons[name] = (given, "given") if given is not None else chosen[name]
    return Ingredients(**values, reasons=reasons)


def config_ingredients_given(recipe_args: RecipeArguments) -> dict:
    """The `CONFIG_INGREDIENTS` given as flags (`--drop_path_rate`, `--position_embedding_init`, ...)."""
    return {name: getattr(recipe_args, name) for name in CONFIG_INGREDIENTS if getattr(recipe_args, name) is not None}


def apply_to_config(ingredients: Ingredients, config) -> None:
    """Write the config-field ingredients the recipe or the user set (None: the model's own) into `config`."""
    for name in CONFIG_INGREDIENTS:
        if getattr(ingredients, name) is not None:
            setattr(config, name, getattr(ingredients, name))


def apply_to_training(ingredients: Ingredients, training_args) -> None:
    """Write the optimisation ingredients into the TrainingArguments the Trainer will read."""
    for name in TRAINING_INGREDIENTS:
        setattr(training_args, name, getattr(ingredients, name))


def turn_off(ingredients: Ingredients, name: str, off, reason: str, flag: str) -> Ingredients:
    """`ingredients` with `name` turned `off` for `reason` when the recipe chose it; a value given by hand that does
    not apply is an error naming `flag` (the setting it clashes with)."""
    if getattr(ingredients, name) == off:
        return ingredients
    if ingredients.reasons[name] == "given":
        raise ValueError(
            f"--{name} {getattr(ingredients, name)} does not apply with {flag} ({reason}); leave it out or "
            f"pass --{name} {off:g}"
        )
    return dataclasses.replace(ingredients, **{name: off}, reasons={**ingredients.reasons, name: f"{flag}: {reason}"})


def fit_to_training(
    ingredients: Ingredients,
    lora: bool,
    sharded: bool,
    streaming: bool,
    multi_label: bool = False,
    naflex: bool = False,
    batches_by_patches: bool = False,
    replayed_views: bool = False,
) -> Ingredients:
    """The ingredients that the way of training rules out, turned off: layer decay with LoRA (only the adapters and
    the head learn), the EMA under FSDP (it would hold a whole copy of the sharded weights), repeated augmentation
    for a stream (it needs a sampler of indices), Mixup / CutMix and label smoothing for multi-label data (their
    targets are one distribution over the classes; multi-label targets are one yes / no per class), Mixup / CutMix
    for NaFlex patches (pictures of different shapes have no pixel to pixel pairing), repeated augmentation for
    batches filled by patches (their own sampler draws them), Mixup / CutMix and repeated augmentation for views
    replayed from a teacher-logit cache (it keeps each picture's own view, once an epoch)."""
    if naflex:
        reason = "pictures of different shapes have no pixel to pixel pairing"
        for name in ("mixup_alpha", "cutmix_alpha"):
            ingredients = turn_off(ingredients, name, 0.0, reason, "--max_num_patches")
    if multi_label:
        reason = "the targets are one yes / no per class, not one distribution over the classes"
        for name in ("mixup_alpha", "cutmix_alpha", "label_smoothing"):
            ingredients = turn_off(ingredients, name, 0.0, reason, "multi-label data")
    if lora:
        ingredients = turn_off(ingredients, "layer_decay", 1.0, "only the adapters and the head learn", "--lora_rank")
    if sharded:
        ingredients = turn_off(
            ingredients, "ema_decay", 0.0, "an EMA would hold a whole copy of the sharded weights", "FSDP"
        )
    if replayed_views:
        reason = "the cache keeps each picture's own view, once an epoch"
        for name, off in (("mixup_alpha", 0.0), ("cutmix_alpha", 0.0), ("repeated_augmentation", 1)):
            ingredients = turn_off(ingredients, name, off, reason, "--teacher_logits_cache")
    if batches_by_patches:
        ingredients = turn_off(
            ingredients, "repeated_augmentation", 1, "batches are drawn by patch budget", "--train_patch_budgets"
        )
    if streaming:
        ingredients = turn_off(
            ingredients, "repeated_augmentation", 1, "a stream is read in order, not sampled", "--streaming"
        )
    return ingredients


# Masked-image-modeling pretraining: each paper's fraction of masked patches, and the smallest area fraction its
# RandomResizedCrop keeps.
PRETRAINING = {
    "mae": dict(mask_ratio=0.75, crop_scale_min=0.2),
    "simmim": dict(mask_ratio=0.6, crop_scale_min=0.67),
    "distill": dict(mask_ratio=None, crop_scale_min=0.2),  # feature distillation: no mask, MAE's crops
}


@dataclass(frozen=True)
class PretrainingIngredients:
    """What a pretraining run decides: the mask ratio (None: a checkpoint's own), the crop and the flips."""

    mask_ratio: float | None
    crop_scale_min: float
    hflip_prob: float


def pretraining_recipe(
    method: str, mask_ratio: float | None, crop_scale_min: float | None, from_checkpoint: bool, flips_keep_labels: bool
) -> PretrainingIngredients:
    """A pretraining run's ingredients: the values given, else the method's paper's (a checkpoint keeps its own mask
    ratio), flips where mirrored images stay what they are."""
    paper = PRETRAINING[method]
    if mask_ratio is None and not from_checkpoint:
        mask_ratio = paper["mask_ratio"]
    crop_scale_min = paper["crop_scale_min"] if crop_scale_min is None else crop_scale_min
    return PretrainingIngredients(mask_ratio, crop_scale_min, flip_choice(flips_keep_labels)[0])
