"""learn2learn.optim: learnable update functions (ParameterUpdate and its transforms) and the
differentiable SGD step that applies them (on fastmaml's fused update)."""

from typing import NoReturn

from fastmaml.faces.compat.learn2learn.optim import transforms
from fastmaml.faces.compat.learn2learn.optim.learnable_optimizer import LearnableOptimizer
from fastmaml.faces.compat.learn2learn.optim.parameter_update import ParameterUpdate
from fastmaml.faces.compat.learn2learn.optim.transforms import (
    KroneckerTransform,
    ModuleTransform,
    ReshapedTransform,
)
from fastmaml.faces.compat.learn2learn.optim.update_rules import DifferentiableSGD

__all__ = ["DifferentiableSGD", "KroneckerTransform", "LearnableOptimizer", "ModuleTransform", "ParameterUpdate",
           "ReshapedTransform", "transforms"]


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(f"fastmaml.compat.learn2learn.optim has no {name!r}: it provides {', '.join(__all__)} "
                         "(MetaCurvatureTransform and TransformDictionary are learn2learn's own: import them from "
                         "learn2learn)")
