"""MT-net (Lee & Choi, 2018): T-layers and optional learned masks.

Every chosen nn.Linear/nn.Conv layer l gets a T-layer: its output y_l becomes T_l y_l (T_l a
square matrix on the output features/channels, identity at start). The inner loop adapts the
layers' own weights W_l (only the rows the mask keeps); T_l and the masks are meta-learned and
never adapted:

    phi_{k+1,l} = phi_{k,l} - alpha * m_l (.) grad_l L_support(phi_k)     ("scaled" fused form)
    m_l = 1[zeta_l > 0]  forward,  d m_l / d zeta_l = sigmoid'(zeta_l)  backward

The mask (one entry per output unit / row of W_l, shared by its bias) is the deterministic
straight-through simplification of the paper's Gumbel-softmax sampled mask: no sampling noise,
the same mask for every task.
"""

from __future__ import annotations

import torch
from torch import nn

from fastmaml import functional as F
from fastmaml.algorithms._util import attach_transform, layer_names, safe_names
from fastmaml.algorithms.base import MetaLearner


class MTNet(MetaLearner):
    """`MTNet(model, inner_lr=0.01, inner_steps=1, first_order=False, layers=None, mask=False,
    batching="auto")`.

    `layers`: names of the nn.Linear/nn.Conv submodules that get a T-layer (default: all). The
    T-layers are registered on `model` itself (a parameter `transform` on each layer and a
    forward hook applying it), so `model` changes in place. `mask=True` adds the M-net masks
    (`mtnet.mask_logits`, one logit per output unit, starting at +1: every row adapted)."""

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, layers=None, mask=False,
                 batching="auto"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        own = list(F.params_of(model))
        chosen = layer_names(model, layers, "layers")
        transforms = [attach_transform(model, layer, "transform") for layer in chosen]
        super().__init__(model, inner_lr, inner_steps, first_order, own, batching)
        self.layers = chosen
        self.transform_names = transforms
        self.mask = bool(mask)
        if self.mask:
            keys = safe_names(self.layers)
            self._mask_keys = keys
            self.mask_logits = nn.ParameterDict({
                keys[layer]: nn.Parameter(torch.ones(model.get_submodule(layer).weight.shape[0],
                                                     dtype=model.get_submodule(layer).weight.dtype,
                                                     device=model.get_submodule(layer).weight.device))
                for layer in self.layers
            })

    def masks(self) -> dict[str, torch.Tensor]:
        """layer -> straight-through binary mask over its output units."""
        out = {}
        for layer, key in self._mask_keys.items():
            soft = torch.sigmoid(self.mask_logits[key])
            out[layer] = (self.mask_logits[key] > 0).to(soft.dtype) + soft - soft.detach()
        return out

    def inner_rates(self, step):
        if not self.mask:
            return self.inner_lr
        masks = self.masks()
        params = self.params()
        rates = {}
        for name in self.adapt_names:
            layer, _, _ = name.rpartition(".")
            p = params[name]
            if layer in masks:
                m = masks[layer]
                rates[name] = self.inner_lr * m.reshape(m.shape[0], *([1] * (p.dim() - 1)))
            else:
                rates[name] = torch.full((), self.inner_lr, dtype=p.dtype, device=p.device)
        return rates
