"""The "batched" mode: T tasks in one pass of task-batched layers. plan.py (which models: torch.fx),
layers.py (the layers over a task dimension), losses.py (a loss per task), run.py (the meta-step)."""
