"""The `hf-vit` command: every job of hf_vit as a subcommand, with the flags and behaviour of its script.

    hf-vit finetune --output_dir runs/digits-vit        # = scripts/finetune.py
    hf-vit convert --source google/vit-base-patch16-224 --output_dir vit-base
    hf-vit --help                                       # the jobs

A job's module is imported when the job runs, so `hf-vit --help` answers at once.
"""

import difflib
import importlib
import sys

# job -> (what it does, the module whose `main(argv)` runs it with the job's own arguments)
JOBS = {
    "finetune": ("fine-tune or train an image classifier (the main job)", "hf_vit.training.finetune"),
    "pretrain": ("pretrain an encoder on unlabelled images (MAE, SimMIM)", "hf_vit.training.pretrain"),
    "probe": ("linear, kNN or logistic-regression probe of a backbone's frozen features", "hf_vit.training.probe"),
    "evaluate": (
        "an evaluation report of a classifier: metrics.json and pictures, optionally with TTA",
        "hf_vit.inference.evaluation",
    ),
    "predict": (
        "predict a folder or glob of pictures into a CSV / JSON Lines table, with attention overlays",
        "hf_vit.inference.predict",
    ),
    "demo": ("a Gradio demo of a classifier in the browser", "hf_vit.inference.demo"),
    "convert": ("convert a transformers or timm checkpoint into an hf_vit one", "hf_vit.interop.convert"),
    "export": ("export a checkpoint to ONNX and torch.export, checked with onnxruntime", "hf_vit.interop.export"),
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
    return importlib.import_module(JOBS[job][1]).main(arguments)


if __name__ == "__main__":
    raise SystemExit(main())
