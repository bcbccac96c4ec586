"""Explicit inner gradients for task-batched Linear/ReLU chains under the mean squared error.

The batched mode (execution/batched/) gets the inner gradients from torch.autograd.grad with
create_graph, and the outer backward then differentiates that recorded backward graph. For the small
MLPs of sine regression every one of those ops costs more in dispatch and autograd bookkeeping than in
arithmetic. For a chain (all tensors task-batched, [T, N, features])

    z_0 = x,   h_l = z_{l-1} W_l^T + b_l,   z_l = relu(h_l) or h_l,   out = z_L
    losses_t = mean over (n, j) of (out - y)^2,   summed over tasks for one gradient

`explicit` gives the inner loop a `grads_fn` that computes the support losses and their gradients
with the chain ops of the dispatcher (fastmaml.ops.chain): natively one C++ op,
fastmaml::chain_loss_and_grad (csrc/chain.cpp, whose NOTE: [chain maths] writes the gradient and its
backward out), with its own autograd node: the Hessian-vector product by the R-operator plus v_t g_t
for a cotangent v on the losses (d losses_t / dP_t = g_t). The query losses are
fastmaml::chain_loss (backward: the gradient, scaled per task). Exactly the autograd path's
meta-gradient, in a fraction of the ops. Under `use_backend("reference")` the same ops run as plain
autograd (ops/chain/reference.py). Inside a torch.func transform the batched mode differentiates its
layers with autograd instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
import torch.nn.functional as TF
from torch import Tensor, nn
from torch._C._functorch import peek_interpreter_stack

from fastmaml.functional import Params
from fastmaml.ops import chain as chain_ops

if TYPE_CHECKING:  # plan.py imports this module
    from fastmaml.execution.batched.plan import Plan
    from fastmaml.execution.inner import GradsFn


class Chain:
    """A plain chain of Linear layers, each followed by at most one ReLU: per layer (module name,
    has bias, ReLU after); `names` the parameters in the order of the gradients."""

    def __init__(self, layers: list[tuple[str, bool, bool]], in_features: int, out_features: int) -> None:
        self.layers, self.in_features, self.out_features = layers, in_features, out_features
        self.names = [f"{m}.{p}" for m, bias, _ in layers for p in (("weight", "bias") if bias else ("weight",))]
        self.flags = [int(bias) + 2 * int(relu) for _, bias, relu in layers]  # the ops' `layers` argument

    def split(self, tensors: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor | None]]:
        """Per-layer (weight, bias or None) lists from tensors in the order of `names`."""
        weights: list[Tensor] = []
        biases: list[Tensor | None] = []
        k = 0
        for _, bias, _ in self.layers:
            weights.append(tensors[k])
            biases.append(tensors[k + 1] if bias else None)
            k += 2 if bias else 1
        return weights, biases


def chain_of(plan: Plan) -> Chain | None:
    """The batched plan as a Chain, or None when it is anything else."""
    gm, last = plan.graph_module, plan.steps[0][0]
    layers: list[list[Any]] = []  # [module name, has bias, ReLU after], made tuples at the end
    for name, kind, target, args in plan.steps[1:]:
        if args != [last]:
            return None
        last = name
        mod = gm.get_submodule(cast(str, target)) if kind == "module" else None
        if isinstance(mod, nn.Linear):
            layers.append([target, mod.bias is not None, False])
        elif (type(mod) is nn.ReLU or (kind == "function" and target is TF.relu)) and layers and not layers[-1][2]:
            layers[-1][2] = True
        else:
            return None
    if not layers or last != plan.output:
        return None
    first = cast(nn.Linear, gm.get_submodule(layers[0][0]))
    final = cast(nn.Linear, gm.get_submodule(layers[-1][0]))
    return Chain([(name, bias, relu) for name, bias, relu in layers], first.in_features, final.out_features)


def _fits(chain: Chain, x: Tensor, y: Tensor) -> bool:
    return (x.dim() == 3 and x.shape[2] == chain.in_features and y.shape == (*x.shape[:2], chain.out_features)
            and x.dtype == y.dtype and not x.requires_grad and not y.requires_grad)


class Explicit(NamedTuple):
    grads_fn: GradsFn  # (loss_of, params, names, first_order, buffers) -> (losses, grads), for unroll()
    query_losses: Callable[[Params], Tensor]  # params -> [T] query losses


def explicit(chain: Chain | None, support_x: Tensor, support_y: Tensor, query_x: Tensor,
             query_y: Tensor) -> Explicit | None:
    """The support step and query loss by the chain ops, for a learner whose losses are the plain
    MSE of the model's output (the batched mode checks that), or None when the model is not a chain
    or the data do not fit it ([T, N, in_features] inputs, [T, N, out_features] targets, no
    gradients wanted). `loss_of` is not called: the support set is (support_x, support_y)."""
    if chain is None or peek_interpreter_stack() is not None:
        return None
    if not (_fits(chain, support_x, support_y) and _fits(chain, query_x, query_y)):
        return None

    def grads_fn(loss_of: object, params: Params, names: list[str], first_order: bool,
                 buffers: Params | None = None) -> tuple[Tensor, Params]:
        weights, biases = chain.split([params[n] for n in chain.names])
        with torch.set_grad_enabled(not first_order):
            losses, gs = chain_ops.loss_and_grad(support_x, support_y, weights, biases, chain.flags)
        by_name = dict(zip(chain.names, gs))
        return losses, {n: by_name[n] for n in names}

    def query_losses(params: Params) -> Tensor:
        weights, biases = chain.split([params[n] for n in chain.names])
        return chain_ops.loss(query_x, query_y, weights, biases, chain.flags)

    return Explicit(grads_fn, query_losses)
