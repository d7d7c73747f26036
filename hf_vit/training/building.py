"""From checked arguments to what a job builds (as timm's `create_model`): the model, its image processor and a
teacher. Every training job (finetune, pretrain, probe) builds them here, from the `ModelSource` that
`arguments.check_model_source` checked.

    label_fields(labels, multi_label)                      the config's label fields
    build_classifier(model_args, source, config, size)     a classifier: a checkpoint's (head restarted when its
                                                           labels are not the data's) or fresh
    build_pretraining_model(model_args, source, method, config)   MAE's or SimMIM's model
    build_image_processor(model_args, model)               the processor the model trains and is saved with
    load_teacher(model_args, model, processor)             a frozen teacher and the adapter to its inputs
"""

from transformers import AutoConfig, AutoModelForImageClassification

from ..checkpoints import load_checkpoint
from ..processors import (
    checkpoint_image_processor,
    is_naflex,
    make_image_processor,
    naflex_processor_for,
    processor_size,
    set_processor_size,
    timm_image_processor,
)
from .arguments import ModelArguments, ModelSource
from .regularisation import TeacherInputAdapter


def label_fields(labels: list[str], multi_label: bool = False) -> dict:
    """The config's label fields; multi-label data trains with BCE (`problem_type`), and `pipeline()` then returns
    independent sigmoid scores."""
    return dict(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else None,
    )


def build_classifier(model_args: ModelArguments, source: ModelSource, config, image_size: int | None):
    """A classifier from `config`: a checkpoint's weights (the head started afresh, said in one line, when the
    checkpoint's labels are not the data's; position embeddings resampled to `image_size`) or fresh ones."""
    if not source.from_checkpoint:
        return source.family.classifier_class(config)
    model = load_checkpoint(
        AutoModelForImageClassification,
        model_args.model_name_or_path,
        new_heads=True,
        config=config,
        ignore_mismatched_sizes=True,  # another number of classes: the head's shape changes (the rest cannot)
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
    )
    checkpoint_labels, labels = list(source.config.id2label.values()), list(config.id2label.values())
    if checkpoint_labels != labels:
        restart_head(model)
        print(
            f"The checkpoint's head classifies {short_list(checkpoint_labels)}, the data has {short_list(labels)}: "
            "the head starts afresh."
        )
    if image_size is not None and image_size != model.config.image_size:
        model.set_image_size(image_size)
    return model


def short_list(names, shown: int = 5) -> str:
    names = list(names)
    return str(names) if len(names) <= shown else f"[{', '.join(map(repr, names[:shown]))}, ... ({len(names)} classes)]"


def restart_head(model) -> None:
    """Initialise the classifier's heads (the modules outside its base model) afresh, as a new model's."""
    for module in model.children():
        if module is model.base_model:
            continue
        for part in module.modules():
            part._is_hf_initialized = False
            for tensor in (*part.parameters(recurse=False), *part.buffers(recurse=False)):
                tensor._is_hf_initialized = False
    model.initialize_weights()  # only what is not marked initialised


def build_image_processor(model_args: ModelArguments, model):
    """The image processor a model trains and is saved with: the checkpoint's own at the model's size, else hf_vit's
    (`make_image_processor`); with a patch budget (`max_num_patches`), SigLIP 2's NaFlex processor at that budget,
    with the checkpoint's normalisation."""
    config = model.config
    budget = getattr(config, "max_num_patches", None)
    if model_args.model_name_or_path is None:
        if budget:
            return naflex_processor_for(config)
        return make_image_processor(config.image_size, config.num_channels)
    processor = checkpoint_image_processor(model_args.model_name_or_path, config, model_args.trust_remote_code)
    if budget and is_naflex(processor):
        processor.max_num_patches = budget
    elif budget:
        processor = naflex_processor_for(config, processor.image_mean, processor.image_std)
    else:
        set_processor_size(processor, config.image_size)
    return processor


def load_teacher(
    path: str, trust_remote_code: bool, model, image_processor, auto_class=AutoModelForImageClassification
):
    """The frozen teacher (any model `auto_class` loads: an image classifier, or with `AutoModel` any backbone:
    hf_vit, transformers, a timm folder as transformers' TimmWrapper) and the adapter that turns the student's
    batches into its inputs (its size, mean, std)."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    timm_folder = config.model_type == "timm_wrapper"
    if timm_folder and "num_classes" in (config.model_args or {}):
        # timm's save_for_hf also writes num_classes into model_args, which TimmWrapper passes a second time
        config.model_args = {key: value for key, value in config.model_args.items() if key != "num_classes"}
    teacher = load_checkpoint(auto_class, path, config=config, trust_remote_code=trust_remote_code)
    if timm_folder:  # its evaluation transform, from timm's pretrained_cfg (TimmWrapper's processor names no sizes)
        teacher_processor = timm_image_processor(config.pretrained_cfg or {})
    else:
        teacher_processor = checkpoint_image_processor(path, teacher.config, trust_remote_code)
    channels = model.config.num_channels
    teacher_inputs = TeacherInputAdapter(
        image_processor.image_mean[:channels],
        image_processor.image_std[:channels],
        processor_size(teacher_processor),
        teacher_processor.image_mean[:channels],
        teacher_processor.image_std[:channels],
    )
    return teacher, teacher_inputs


def build_pretraining_model(model_args: ModelArguments, source: ModelSource, method: str, config):
    """The pretraining model of `method`: a checkpoint's weights or fresh ones, with `config`."""
    model_class = getattr(source.family, {"mae": "pretraining_class", "simmim": "masked_image_modeling_class"}[method])
    if source.from_checkpoint:
        return load_checkpoint(
            model_class,
            model_args.model_name_or_path,
            new_heads=True,  # a classifier's or another method's checkpoint: the method's head starts afresh
            config=config,
            trust_remote_code=model_args.trust_remote_code,
        )
    return model_class(config)
