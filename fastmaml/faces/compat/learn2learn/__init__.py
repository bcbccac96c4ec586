"""learn2learn's API on fastmaml's fused inner update: change the import, keep the code.

    import fastmaml.compat.learn2learn as l2l        # was: import learn2learn as l2l
    tasksets = l2l.vision.benchmarks.get_tasksets("omniglot", train_ways=5, train_samples=2, root=...)
    maml = l2l.algorithms.MAML(l2l.vision.models.OmniglotFC(28 ** 2, 5), lr=0.5)
    learner = maml.clone()
    learner.adapt(loss_fn(learner(x_s), y_s))
    loss_fn(learner(x_q), y_q).backward()             # meta-gradients land on the model's parameters

Parts: algorithms (MAML, MetaSGD, GBML, maml_update), utils (clone_module, update_module, ...),
nn (Lambda, Flatten, Scale, KroneckerLinear, freeze), optim (ParameterUpdate, DifferentiableSGD,
LearnableOptimizer, ModuleTransform, KroneckerTransform),
data (MetaDataset, Taskset, data.transforms), vision (benchmarks, models, datasets, transforms).
Every parameter update goes through fastmaml.ops.update; meta-gradients (MAML, MetaSGD, GBML, the
free update functions, LearnableOptimizer) equal learn2learn 0.2.0's to 1e-10 in float64 and the
task transforms draw the same tasks from the same seed (tests/compat). What differs:
docs/migration/learn2learn.md.
"""

from typing import NoReturn

from fastmaml.faces.compat.learn2learn import algorithms, data, nn, optim, utils, vision
from fastmaml.faces.compat.learn2learn.algorithms import GBML, MAML, BaseLearner, MetaSGD
from fastmaml.faces.compat.learn2learn.utils import (
    accuracy,
    clone_module,
    clone_named_parameters,
    clone_parameters,
    detach_module,
    magic_box,
    update_module,
)

__version__ = "0.2.0"  # the learn2learn API this face follows

__all__ = ["GBML", "MAML", "BaseLearner", "MetaSGD", "accuracy", "algorithms", "clone_module",
           "clone_named_parameters", "clone_parameters", "data", "detach_module", "magic_box", "nn", "optim",
           "update_module", "utils", "vision"]


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(f"fastmaml.compat.learn2learn has no {name!r}: it provides {', '.join(__all__)}; "
                         "use learn2learn itself for the rest (gym, text, the Lightning wrappers, ...)")
