"""fastmaml: gradient-based meta-learning (MAML and its family) on fused compiled kernels."""

from fastmaml.algorithms import (
    ALFA,
    ANIL,
    BOIL,
    CAVIA,
    FOMAML,
    IMAML,
    L2F,
    MAML,
    MAMLpp,
    MetaLearner,
    MetaSGD,
    MTNet,
    Reptile,
    WarpGrad,
)
from fastmaml.execution.compiled import compile  # noqa: I001 - HOOK (issue 19), see execution/compiled.py
from fastmaml.faces.boml import Init
from fastmaml.faces.kata import maml_inner_update, maml_outer_update
from fastmaml.functional import adapt, buffers_of, functional_forward, inner_update, params_of
from fastmaml.ops import get_backend, set_backend, use_backend
from fastmaml.secondorder import CGReport, batched_cg, hvp

__version__ = "0.1.0"

__all__ = [
    "MAML", "FOMAML", "MetaLearner",
    "ANIL", "BOIL", "MetaSGD", "Reptile", "MAMLpp", "CAVIA", "L2F", "ALFA", "MTNet", "WarpGrad", "IMAML", "Init",
    "maml_inner_update", "maml_outer_update",
    "adapt", "inner_update", "hvp", "batched_cg", "CGReport", "functional_forward", "params_of", "buffers_of",
    "set_backend", "get_backend", "use_backend", "compile",
]
