"""The self-improving loop: rated answers become a fine-tuning dataset, the dataset a LoRA
adapter, and the adapter the served champion only when it wins the gate (decision 6)."""
