"""Second-order building blocks: batched Hessian-vector products (hvp.py) and the batched conjugate
gradient (cg.py) that iMAML and the hvp mode (fastmaml/execution/hvp_mode.py) are made of."""

from fastmaml.secondorder.cg import CGReport, batched_cg
from fastmaml.secondorder.hvp import hvp, hvp_and_grad

__all__ = ["CGReport", "batched_cg", "hvp", "hvp_and_grad"]
