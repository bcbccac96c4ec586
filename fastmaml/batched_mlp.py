"""Explicit inner gradients for task-batched Linear/ReLU chains under the mean squared error.

The batched path (fastmaml/batched.py) gets the inner gradients from torch.autograd.grad with
create_graph, and the outer backward then differentiates that recorded backward graph. For the small
MLPs of sine regression every one of those ops costs more in dispatch and autograd bookkeeping than in
arithmetic. For a chain (all tensors task-batched, [T, N, features])

    z_0 = x,   h_l = z_{l-1} W_l^T + b_l,   z_l = relu(h_l) or h_l,   out = z_L
    losses_t = mean over (n, j) of (out - y)^2,   summed over tasks for one gradient

`explicit` gives the learner's inner loop a `grads_fn` that computes the support losses and their
gradients with no autograd recording, wrapped in one autograd.Function whose backward is written out
too, and the query losses the same way (their backward: the gradient below, scaled per task):

  gradient:  dz_L = c (out - y), c = 2 / (N * out_features);  d_l = dz_l * m_l  (m_l = [z_l > 0] for
             a ReLU, as autograd's relu backward, else 1);  gW_l = d_l^T z_{l-1},  gb_l = sum_n d_l,
             dz_{l-1} = d_l W_l
  its VJP:   u^T dg/dP = H u (the Hessian is symmetric), by the R-operator R{.} = d/de (.)(P + e u)
             (Pearlmutter 1994), with R{m_l} = 0 (ReLU is piecewise linear):
             Rz_0 = 0,  Rh_l = z_{l-1} uW_l^T + ub_l + Rz_{l-1} W_l^T,  Rz_l = Rh_l * m_l
             Rdz_L = c Rz_L,  Rd_l = Rdz_l * m_l,  (Hu)W_l = Rd_l^T z_{l-1} + d_l^T Rz_{l-1},
             (Hu)b_l = sum_n Rd_l,  Rdz_{l-1} = Rd_l W_l + d_l uW_l
             plus v_t g_t for a cotangent v on the losses (d losses_t / dP_t = g_t).

Exactly the autograd path's meta-gradient, in a fraction of the ops. Both backwards are plain torch
ops: under create_graph (differentiating the meta-gradient again) they recompute the saved
activations from the saved parameters with autograd on, so third order stays exact too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from fastmaml.functional import Params

_mask = torch.ops.aten.threshold_backward  # (v, z, 0): v where z > 0, else 0


class Chain:
    """A plain chain of Linear layers, each followed by at most one ReLU: per layer (module name,
    has bias, ReLU after); `names` the parameters in the order of the gradients."""

    def __init__(self, layers: list[tuple[str, bool, bool]], in_features: int, out_features: int):
        self.layers, self.in_features, self.out_features = layers, in_features, out_features
        self.names = [f"{m}.{p}" for m, bias, _ in layers for p in (("weight", "bias") if bias else ("weight",))]

    def split(self, tensors):
        """Per-layer (weight, bias or None) lists from tensors in the order of `names`."""
        weights, biases, k = [], [], 0
        for _, bias, _ in self.layers:
            weights.append(tensors[k])
            biases.append(tensors[k + 1] if bias else None)
            k += 2 if bias else 1
        return weights, biases


def chain(plan) -> Chain | None:
    """The batched plan as a Chain, or None when it is anything else."""
    gm, layers, last = plan.graph_module, [], plan.steps[0][0]
    for name, kind, target, args in plan.steps[1:]:
        if args != [last]:
            return None
        last = name
        mod = gm.get_submodule(target) if kind == "module" else None
        if isinstance(mod, nn.Linear):
            layers.append([target, mod.bias is not None, False])
        elif (type(mod) is nn.ReLU or (kind == "function" and target is TF.relu)) and layers and not layers[-1][2]:
            layers[-1][2] = True
        else:
            return None
    if not layers or last != plan.output:
        return None
    first, final = gm.get_submodule(layers[0][0]), gm.get_submodule(layers[-1][0])
    return Chain([tuple(layer) for layer in layers], first.in_features, final.out_features)


# Batched products [T, m, k] @ [T, k, n]. A contraction over k = 1 (the first layer of a
# one-input MLP, the last of a one-output one) is an outer product, and a^T b with one column
# in b a reduction: elementwise, each is 2-3x cheaper than the bmm here.
def _mm(a: Tensor, b: Tensor) -> Tensor:
    return a * b if a.shape[2] == 1 else torch.bmm(a, b)


def _addmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.addcmul(c, a, b) if a.shape[2] == 1 else torch.baddbmm(c, a, b)


def _tmm(a: Tensor, b: Tensor) -> Tensor:
    """a^T b."""
    return (a * b).sum(1, keepdim=True).transpose(1, 2) if b.shape[2] == 1 else torch.bmm(a.transpose(1, 2), b)


def _addtmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c + a^T b."""
    return c + _tmm(a, b) if b.shape[2] == 1 else torch.baddbmm(c, a.transpose(1, 2), b)


def _affine(z: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return _mm(z, w.transpose(1, 2)) if b is None else _addmm(b.unsqueeze(1), z, w.transpose(1, 2))


def _forward(chain: Chain, weights, biases, x, y):
    """The activations [z_0 .. z_L], the residual out - y and the [T] losses."""
    zs = [x]
    for (_, _, relu), w, b in zip(chain.layers, weights, biases):
        h = _affine(zs[-1], w, b)
        zs.append(h.relu() if relu else h)
    r = zs[-1] - y
    return zs, r, r.square().flatten(1).mean(1)


def _backprop(chain: Chain, weights, zs, dz):
    """The gradients (in the order of chain.names) and the d_l, from dz_L = dz."""
    layers = chain.layers
    ds, grads = [None] * len(layers), []
    for i in reversed(range(len(layers))):
        d = ds[i] = _mask(dz, zs[i + 1], 0) if layers[i][2] else dz
        grads[:0] = [_tmm(d, zs[i])] + ([d.sum(1)] if layers[i][1] else [])
        if i:
            dz = _mm(d, weights[i])
    return grads, ds


def _hvp(chain: Chain, weights, zs, ds, c, us):
    """H u for u = (uW_l, ub_l per layer) in the order of chain.names."""
    layers = chain.layers
    uw, ub = chain.split(us)
    rzs = [None]
    for i, (_, _, relu) in enumerate(layers):
        rh = _affine(zs[i], uw[i], ub[i])
        if rzs[i] is not None:
            rh = _addmm(rh, rzs[i], weights[i].transpose(1, 2))
        rzs.append(_mask(rh, zs[i + 1], 0) if relu else rh)
    rdz, out = rzs[-1] * c, []
    for i in reversed(range(len(layers))):
        rd = _mask(rdz, zs[i + 1], 0) if layers[i][2] else rdz
        hw = _tmm(rd, zs[i])
        if rzs[i] is not None:
            hw = _addtmm(hw, ds[i], rzs[i])
        out[:0] = [hw] + ([rd.sum(1)] if layers[i][1] else [])
        if i:
            rdz = _addmm(_mm(rd, weights[i]), ds[i], uw[i])
    return out


def _saved(ctx):
    """The parameters and activations of the forward: under create_graph the activations are
    recomputed with autograd recording, so that the backward is differentiable in the parameters."""
    params = ctx.saved_tensors
    weights, biases = ctx.chain.split(params)
    if not torch.is_grad_enabled():
        return params, weights, ctx.zs, ctx.r
    zs, r, _ = _forward(ctx.chain, weights, biases, ctx.x, ctx.y)
    return params, weights, zs, r


class _ChainGrad(torch.autograd.Function):
    """(chain, x, y, *params) -> (losses, *grads): the support losses and their gradients; backward:
    the Hessian-vector product plus the losses' own term (see the module docstring)."""

    @staticmethod
    def forward(ctx, chain, x, y, *params):
        ctx.set_materialize_grads(False)  # unused outputs (the losses, names not adapted) get None
        weights, biases = chain.split(params)
        zs, r, losses = _forward(chain, weights, biases, x, y)
        c = 2.0 / r[0].numel()
        grads, ds = _backprop(chain, weights, zs, r * c)
        ctx.chain, ctx.x, ctx.y, ctx.zs, ctx.ds, ctx.r, ctx.c = chain, x, y, zs, ds, r, c
        ctx.save_for_backward(*params)
        return (losses, *grads)

    @staticmethod
    def backward(ctx, v, *us):
        params, weights, zs, r = _saved(ctx)
        ds = ctx.ds if zs is ctx.zs else _backprop(ctx.chain, weights, zs, r * ctx.c)[1]
        us = [torch.zeros_like(p) if u is None else u for u, p in zip(us, params)]
        out = _hvp(ctx.chain, weights, zs, ds, ctx.c, us)
        if v is not None:  # + v_t g_t: the gradient, back-propagated from dz_L scaled per task
            vg, _ = _backprop(ctx.chain, weights, zs, r * (v * ctx.c).view(-1, 1, 1))
            out = [h + g for h, g in zip(out, vg)]
        return (None, None, None, *out)


class _ChainLoss(torch.autograd.Function):
    """(chain, x, y, *params) -> losses: the query losses; backward: v_t times their gradients."""

    @staticmethod
    def forward(ctx, chain, x, y, *params):
        weights, biases = chain.split(params)
        zs, r, losses = _forward(chain, weights, biases, x, y)
        ctx.chain, ctx.x, ctx.y, ctx.zs, ctx.r = chain, x, y, zs, r
        ctx.save_for_backward(*params)
        return losses

    @staticmethod
    def backward(ctx, v):
        _, weights, zs, r = _saved(ctx)
        grads, _ = _backprop(ctx.chain, weights, zs, r * (v * (2.0 / r[0].numel())).view(-1, 1, 1))
        return (None, None, None, *grads)


def _fits(chain: Chain, x: Tensor, y: Tensor) -> bool:
    return (x.dim() == 3 and x.shape[2] == chain.in_features and y.shape == (*x.shape[:2], chain.out_features)
            and x.dtype == y.dtype and not x.requires_grad and not y.requires_grad)


def explicit(chain: Chain, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor):
    """(grads_fn, query_losses) for a learner whose support and query losses are the plain MSE of
    the model's output (`batched.task_losses` checks that), or None when the data do not fit the
    chain ([T, N, in_features] inputs, [T, N, out_features] targets, no gradients wanted):

      grads_fn(loss_of, params, names, first_order, buffers) -> (losses, grads)   for
          MetaLearner.inner_loop; `loss_of` is not called: the support set is (support_x, support_y)
      query_losses(params) -> [T] query losses at params."""
    if not (_fits(chain, support_x, support_y) and _fits(chain, query_x, query_y)):
        return None

    def grads_fn(loss_of, params: Params, names: list[str], first_order: bool, buffers=None):
        ps = [params[n] for n in chain.names]
        if first_order:
            with torch.no_grad():
                weights, biases = chain.split(ps)
                zs, r, losses = _forward(chain, weights, biases, support_x, support_y)
                gs, _ = _backprop(chain, weights, zs, r * (2.0 / r[0].numel()))
        else:
            losses, *gs = _ChainGrad.apply(chain, support_x, support_y, *ps)
        by_name = dict(zip(chain.names, gs))
        return losses, {n: by_name[n] for n in names}

    def query_losses(params: Params) -> Tensor:
        return _ChainLoss.apply(chain, query_x, query_y, *[params[n] for n in chain.names])

    return grads_fn, query_losses
