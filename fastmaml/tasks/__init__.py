from fastmaml.tasks.omniglot import Omniglot, OmniglotError, load_split
from fastmaml.tasks.sampler import (
    FewShotBatch,
    FewShotSampler,
    SamplerError,
    split_by_group,
    split_classes,
)
from fastmaml.tasks.sine import SineBatch, SineTasks, sine_mlp

__all__ = [
    "SineTasks", "SineBatch", "sine_mlp",
    "Omniglot", "OmniglotError", "load_split",
    "FewShotSampler", "FewShotBatch", "SamplerError", "split_classes", "split_by_group",
]
