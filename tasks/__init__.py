"""Fine-tuning tasks on the pretrained encoder (installed as vlbert.tasks)."""
