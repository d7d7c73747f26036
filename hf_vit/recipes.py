"""Training recipes: every ingredient of a run (augmentation, regularisation, optimisation) decided in one place.

    RecipeArguments                      `--recipe NAME` and one flag per ingredient (unset: the recipe decides)
    RECIPES[name](facts)                 each recipe declared once: a value and its reason for every ingredient
    resolve_recipe(args, ..., facts)     -> Ingredients, every value concrete; a flag the user gave always wins

A recipe is a function of the run's facts (`RunFacts`: training-set size, image size, family, from scratch or
from a checkpoint, epochs, global batch, teacher), so that what it picks can fit the data it is given.
"""

import dataclasses
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

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_train_images // self.global_batch_size)

    @property
    def total_steps(self) -> int:
        return int(self.steps_per_epoch * self.num_train_epochs)


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
    label_smoothing: float
    repeated_augmentation: int  # 1: off
    ema_decay: float  # 0: off
    drop_path_rate: float | None  # None: the model's own
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def augmentation(self) -> dict:
        """The per-image transform ingredients, as `data.set_transforms` takes them."""
        names = ("crop_scale_min", "hflip_prob", "rand_augment_magnitude", "random_erasing_prob")
        return {name: getattr(self, name) for name in names}

    def describe(self) -> list[str]:
        """One line per ingredient: its value and its reason."""
        return [f"{name} = {getattr(self, name)!r}: {reason}" for name, reason in self.reasons.items()]


INGREDIENTS = [f.name for f in dataclasses.fields(Ingredients) if f.name != "reasons"]
# Ingredients that are TrainingArguments flags; the others are RecipeArguments flags.
TRAINING_INGREDIENTS = ("learning_rate", "weight_decay", "warmup_steps")


@dataclass
class RecipeArguments:
    """The recipe and its ingredients, each its own flag; an unset flag is the recipe's to choose."""

    recipe: str = field(default="plain", metadata={"help": "The training recipe: plain or deit (see the README)."})
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
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Chance of CutMix rather than Mixup when both are on."})
    label_smoothing: float | None = field(default=None, metadata={"help": "Label smoothing, folded into the soft targets."})
    repeated_augmentation: int | None = field(
        default=None, metadata={"help": "Repeat each image this many times per epoch, each with its own augmentation."}
    )
    ema_decay: float | None = field(
        default=None, metadata={"help": "Keep an EMA of the weights with this decay (0: off); it is evaluated and saved."}
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth of the last block (also a config field)."}
    )


Choice = tuple[object, str]  # (value, reason)


def plain_recipe(facts: RunFacts) -> dict[str, Choice]:
    """AdamW with cosine decay and a short warmup, light crop (+ flip) augmentation: a small ViT from scratch."""
    flip = (0.5, "mirrored images keep their labels") if facts.flips_keep_labels else (0.0, "mirrored images change class")
    return dict(
        learning_rate=(1e-3, "plain recipe"),
        weight_decay=(0.05, "plain recipe"),
        warmup_steps=(0.02, "plain recipe: 2 % of the steps"),
        crop_scale_min=(0.8, "plain recipe"),
        hflip_prob=flip,
        rand_augment_magnitude=(0, "plain recipe: off"),
        random_erasing_prob=(0.0, "plain recipe: off"),
        mixup_alpha=(0.0, "plain recipe: off"),
        cutmix_alpha=(0.0, "plain recipe: off"),
        label_smoothing=(0.0, "plain recipe: off"),
        repeated_augmentation=(1, "plain recipe: off"),
        ema_decay=(0.0, "plain recipe: off"),
        drop_path_rate=(None, "the model's own"),
    )


def deit_learning_rate(global_batch_size: int) -> float:
    """DeiT's linear scaling rule: 5e-4 for a global batch of 512."""
    return 5e-4 * global_batch_size / 512


def deit_ema_decay(total_steps: int) -> float:
    """DeiT's EMA (0.99996 over ~375k steps) averages over the last ~1/15 of training; keep that fraction."""
    return 1.0 - 15.0 / max(total_steps, 15)


def deit_recipe(facts: RunFacts) -> dict[str, Choice]:
    """DeiT's data-efficient recipe (Touvron et al. 2021, table 9)."""
    return plain_recipe(facts) | dict(
        learning_rate=(deit_learning_rate(facts.global_batch_size), f"DeiT: 5e-4 x global batch {facts.global_batch_size} / 512"),
        warmup_steps=(0.05, "DeiT: 5 epochs of 300"),
        rand_augment_magnitude=(9, "DeiT: rand-m9"),
        random_erasing_prob=(0.25, "DeiT"),
        mixup_alpha=(0.8, "DeiT"),
        cutmix_alpha=(1.0, "DeiT"),
        label_smoothing=(0.1, "DeiT"),
        repeated_augmentation=(3, "DeiT"),
        ema_decay=(deit_ema_decay(facts.total_steps), f"DeiT: averages the last ~1/15 of {facts.total_steps} steps"),
        drop_path_rate=(0.1, "DeiT"),
    )  # fmt: skip


RECIPES: dict[str, Callable[[RunFacts], dict[str, Choice]]] = {"plain": plain_recipe, "deit": deit_recipe}


def check_recipe_name(name: str) -> None:
    if name not in RECIPES:
        raise ValueError(f"Unknown --recipe {name!r}; choose one of {sorted(RECIPES)}")


def resolve_recipe(recipe_args: RecipeArguments, training_args, config_overrides: dict, facts: RunFacts) -> Ingredients:
    """Every ingredient: the user's flag where given (a RecipeArguments field, a TrainingArguments field such as
    `learning_rate`, or `drop_path_rate` in the config overrides), else the recipe's choice for these facts."""
    check_recipe_name(recipe_args.recipe)
    chosen = RECIPES[recipe_args.recipe](facts)
    values, reasons = {}, {}
    for name in INGREDIENTS:
        given = getattr(training_args if name in TRAINING_INGREDIENTS else recipe_args, name)
        if name == "drop_path_rate" and given is None:
            given = config_overrides.get("drop_path_rate")
        if given is not None:
            values[name], reasons[name] = given, "given"
        else:
            values[name], reason = chosen[name]
            reasons[name] = reason
    return Ingredients(**values, reasons=reasons)


def apply_to_training(ingredients: Ingredients, training_args) -> None:
    """Write the optimisation ingredients into the TrainingArguments the Trainer will read."""
    for name in TRAINING_INGREDIENTS:
        setattr(training_args, name, getattr(ingredients, name))
