"""The `hf-vit` command: every job of hf_vit as a subcommand, with the flags and behaviour of its script.

    hf-vit finetune --output_dir runs/digits-vit        # = scripts/finetune.py
    hf-vit convert --source google/vit-base-patch16-224 --output_dir vit-base
    hf-vit --help                                       # the jobs

A job's module is imported when the job runs, so `hf-vit --help` answers at once.
"""

import difflib
import sys


def finetune(argv):
    from .training.finetune import main

    return main(argv)


def pretrain(argv):
    from .training.pretrain import main

    return main(argv)


def probe(argv):
    from .training.probe import main

    return main(argv)


def evaluate(argv):
    from .inference.evaluation import main

    return main(argv)


def predict(argv):
    from .inference.predict import main

    return main(argv)


def demo(argv):
    from .inference.demo import main

    return main(argv)


def convert(argv):
    from .interop.convert import main

    return main(argv)


def export(argv):
    from .interop.export import main

    return main(argv)


# job -> (what it does, its entry point taking the job's own arguments)
JOBS = {
    "finetune": ("fine-tune or train an image classifier (the main job)", finetune),
    "pretrain": ("pretrain an encoder on unlabelled images (MAE, SimMIM)", pretrain),
    "probe": ("linear, kNN or logistic-regression probe of a backbone's frozen features", probe),
    "evaluate": ("an evaluation report of a classifier: metrics.json and pictures, optionally with TTA", evaluate),
    "predict": ("predict a folder or glob of pictures into a CSV / JSON Lines table, with attention overlays", predict),
    "demo": ("a Gradio demo of a classifier in the browser", demo),
    "convert": ("convert a transformers or timm checkpoint into an hf_vit one", convert),
    "export": ("export a checkpoint to ONNX and torch.export, checked with onnxruntime", export),
}


def usage() -> str:
    width = max(map(len, JOBS))
    jobs = "\n".join(f"  {name:<{width}}  {summary}" for name, (summary, _) in JOBS.items())
    return (
        f"usage: hf-vit JOB [--help] [flags of the job]\n\nVision Transformers for the Hugging Face ecosystem.\n\n"
        f"jobs:\n{jobs}\n\n`hf-vit JOB --help` lists a job's flags; `accelerate launch -m hf_vit.commands JOB ...` "
        "runs a training job on several processes."
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    job, *arguments = argv
    if job not in JOBS:
        close = difflib.get_close_matches(job, JOBS, n=1)
        print(
            f"hf-vit: error: no job {job!r}; choose one of {list(JOBS)}"
            + (f"; did you mean {close[0]}?" if close else ""),
            file=sys.stderr,
        )
        return 2
    return JOBS[job][1](arguments)


if __name__ == "__main__":
    raise SystemExit(main())
