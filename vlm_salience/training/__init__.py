"""LoRA / QLoRA fine-tuning of VLMs with accelerate, face and context experts, and salience routing."""
