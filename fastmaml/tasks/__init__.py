from fastmaml.tasks.sine import SineBatch, SineTasks, sine_mlp

__all__ = ["SineTasks", "SineBatch", "sine_mlp"]
