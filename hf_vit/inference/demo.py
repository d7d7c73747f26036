"""A Gradio demo of a classifier checkpoint, as Hugging Face Spaces host them: upload a picture (or pick an example),
get the top-k labels and an overlay of where the model looks.

    build_demo(model_name_or_path, top_k, examples) -> gradio.Blocks
    parse_args(argv) / launch(demo_args)            `scripts/demo.py` and `hf-vit demo`

Gradio comes with the `demo` extra: pip install "hf_vit[demo]".
"""

import os
from dataclasses import dataclass, field

from ..checkpoints import TOKEN_MERGING_HELP
from ..cli import command, grouped_parser, parse_into_dataclasses
from ..data import build_transforms, collate, model_inputs
from ..guards import usage_errors
from .classifier import attention_overlay, classify, load_classifier, read_picture
from .predict import picture_paths

ELEMENT_IDS = dict(picture="picture", button="classify", labels="prediction", overlay="overlay")  # for tests, CSS


@dataclass
class DemoArguments:
    """The checkpoint and the server."""

    _argument_group_name = "demo"

    model_name_or_path: str = field(metadata={"help": "An image-classification checkpoint (directory or Hub id)."})
    top_k: int = field(default=5, metadata={"help": "Labels shown."})
    examples: list[str] | None = field(
        default=None, metadata={"help": "Example pictures to pick from: folders, globs or files."}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "The address to serve on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "The port to serve on."})
    share: bool = field(default=False, metadata={"help": "Also open a public gradio.live link."})
    token_merging: int = field(default=0, metadata={"help": TOKEN_MERGING_HELP + " No attention overlay then."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the checkpoint."})


def import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    try:
        import gradio
    except ImportError as error:
        raise ImportError('The demo needs Gradio: pip install "hf_vit[demo]"') from error
    return gradio


def build_demo(
    model_name_or_path: str, top_k: int = 5, examples=None, trust_remote_code: bool = False, token_merging: int = 0
):
    """The Gradio app of a checkpoint: a picture in; its top-k labels and attention overlay out (no overlay with
    `token_merging`: a merged token is no one patch)."""
    gr = import_gradio()
    model, image_processor = load_classifier(model_name_or_path, trust_remote_code, token_merging)
    overlaid = not token_merging
    channels, names = model.config.num_channels, model.config.id2label
    transform = build_transforms(image_processor, channels, train=False)
    examples = picture_paths(examples) if examples else []

    def predict(path):
        if path is None:
            raise gr.Error("Upload a picture (or pick an example) first.")
        try:
            picture = read_picture(path, channels)  # the uploaded file itself, read as every job reads it
        except ValueError as error:
            raise gr.Error(str(error)) from error
        scores, heat = classify(model, collate([model_inputs(transform(picture))]), attention=overlaid)
        overlay = attention_overlay(picture, heat[0], image_processor) if overlaid else None
        return {names[i]: float(score) for i, score in enumerate(scores[0])}, overlay

    name = os.path.basename(os.path.normpath(model_name_or_path))
    kind = "independent scores per label" if model.config.problem_type == "multi_label_classification" else "top"
    with gr.Blocks(title=f"{name} (hf_vit)") as demo:
        gr.Markdown(
            f"# {name}\nAn `{model.config.model_type}` image classifier: {kind} {top_k} of {len(names)} labels."
        )
        with gr.Row():
            # the uploaded file as it is (no mode conversion by Gradio), so that the demo reads what predict reads
            picture = gr.Image(type="filepath", image_mode=None, label="picture", elem_id=ELEMENT_IDS["picture"])
            with gr.Column():
                labels = gr.Label(num_top_classes=top_k, label="prediction", elem_id=ELEMENT_IDS["labels"])
                heat = gr.Image(
                    label="where it looks" if overlaid else "where it looks (not drawn with token merging)",
                    elem_id=ELEMENT_IDS["overlay"],
                    interactive=False,
                )
        button = gr.Button("Classify", variant="primary", elem_id=ELEMENT_IDS["button"])
        button.click(predict, inputs=picture, outputs=[labels, heat])
        if examples:
            gr.Examples(examples, inputs=picture)
    return demo


START_HERE = ("--model_name_or_path", "--port")


def parse_args(argv=None):
    parser = grouped_parser((DemoArguments,), START_HERE, __doc__.split("\n\n")[0])
    return tuple(parse_into_dataclasses(parser, argv))


def launch(args: DemoArguments) -> None:
    """Build the app (bad input: a `UsageError`) and serve it until interrupted."""
    with usage_errors():
        demo = build_demo(
            args.model_name_or_path, args.top_k, args.examples, args.trust_remote_code, args.token_merging
        )
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


main = command(parse_args, launch)


if __name__ == "__main__":
    raise SystemExit(main())
