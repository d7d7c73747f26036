"""The training application: the jobs (finetune, pretrain), their data, recipes, Trainer and regularisation."""
