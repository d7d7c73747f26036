"""Fine-tune or train an hf_vit image classifier with the Trainer.

    accelerate launch scripts/finetune.py --output_dir out            # the article's small ViT on embedded digits
    accelerate launch scripts/finetune.py --help                      # every TrainingArguments flag, and ours

See hf_vit/training/finetune.py for what it does; this file is only the command line.
"""

from hf_vit.training.finetune import main

if __name__ == "__main__":
    raise SystemExit(main())
