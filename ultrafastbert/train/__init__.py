"""Training: MLM pretraining with the crammed recipe, finetuning, checkpoints, torchrun."""
