"""Fine-tuning recipes and trainers: ``trainers.qlora`` (QLoRA with TRL) and its YAML recipes in ``recipes/``."""
