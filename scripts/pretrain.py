"""Pretrain an hf_vit encoder on unlabelled images by masked image modeling (MAE or SimMIM) with the Trainer.

    accelerate launch scripts/pretrain.py --output_dir runs/digits-mae          # MAE on the embedded digits
    accelerate launch scripts/pretrain.py --model_type hf_swin --output_dir runs/swin-simmim --train_dir my_images/
    accelerate launch scripts/pretrain.py --help                                # every flag, ours and the Trainer's

See hf_vit/training/pretrain.py for what it does; this file is only the command line.
"""

from hf_vit.training.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
