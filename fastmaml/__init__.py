"""fastmaml: gradient-based meta-learning (MAML and its family) on fused compiled kernels."""

from fastmaml.algorithms import FOMAML, MAML, MetaLearner
from fastmaml.functional import adapt, buffers_of, functional_forward, inner_update, params_of
from fastmaml.ops import get_backend, set_backend, use_backend

__version__ = "0.1.0"

__all__ = [
    "MAML", "FOMAML", "MetaLearner",
    "adapt", "inner_update", "functional_forward", "params_of", "buffers_of",
    "set_backend", "get_backend", "use_backend",
]
