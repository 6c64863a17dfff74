"""Training: configs, the engine (checkpoints, resume, DDP), the teacher and distillation tasks, exports."""
