"""MT-net (Lee & Choi, 2018): T-layers and learned masks.

Every chosen nn.Linear/nn.Conv layer l gets a T-layer: its output y_l becomes T_l y_l (T_l a
square matrix on the output features/channels, identity at start). The inner loop adapts the
layers' own weights W_l (only the rows the mask keeps); T_l and the mask logits zeta_l are
meta-learned and never adapted:

    phi_{k+1,l} = phi_{k,l} - alpha * m_l (.) grad_l L_support(phi_k)     ("scaled" fused form)

The mask has one entry per output unit / row of W_l, shared by its bias, and is drawn once per task
(the paper's M-net):

    mask="sampled" (mask=True)  m_l ~ RelaxedBernoulli(temperature, logits=zeta_l): a Gumbel-softmax
                                (binary Concrete) sample, reparameterised, so zeta_l gets a gradient
    mask="deterministic"        m_l = 1[zeta_l > 0] forward, d m_l / d zeta_l = sigmoid'(zeta_l)
                                backward (straight-through; no noise, one mask for every task)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor, nn

from fastmaml import functional as F
from fastmaml.algorithms._util import attach_transform, layer_names, safe_names
from fastmaml.algorithms.base import MetaLearner
from fastmaml.functional import Params

MASKS = (False, "sampled", "deterministic")


def relaxed_bernoulli(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """A reparameterised binary Concrete sample, sigmoid((logits + log u - log(1 - u)) / temperature).

    u ~ U(0, 1): torch.distributions.RelaxedBernoulli's, written on the logits (torch's goes through
    sigmoid(logits) and its clamp, which loses the tails and validates with data-dependent checks).

    Args:
        logits: the logits, any shape.
        temperature: the relaxation temperature, > 0.
    """
    eps = torch.finfo(logits.dtype).eps
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(eps, 1 - eps)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


class MTNet(MetaLearner):
    """MT-net: T-layers after chosen layers and learned masks on which rows the inner loop adapts.

    The T-layers are registered on `model` itself (a parameter `transform` on each layer and a forward
    hook applying it), so `model` changes in place. The masks (`mtnet.mask_logits`, one logit per
    output unit) start at `mask_logit`: at 3, a unit is kept with probability 0.95 (on sine the sampled
    mask at +1 (0.73) left a post/pre ratio of 0.77 after 100 meta-steps, at 3 0.25).

    Args:
        model: the network whose parameters are meta-learned.
        inner_lr: the inner learning rate alpha.
        inner_steps: the number K of inner steps per task.
        first_order: if True, no graph through the inner gradients.
        layers: names of the nn.Linear/nn.Conv submodules that get a T-layer (default: all).
        mask: False (none), True or "sampled" (M-net masks sampled per task at `temperature`),
            "deterministic" (the straight-through threshold).
        batching: "auto", "vmap", "loop" or "compiled" (see `MetaLearner`).
        temperature: the relaxed Bernoulli's temperature, > 0.
        mask_logit: the masks' initial logit.
    """
    cli_name, paper = "mtnet", "Lee & Choi 2018"  # fastmaml train --algo mtnet

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1, first_order: bool = False,
                 layers: Iterable[str] | None = None, mask: bool | str | None = False, batching: str = "auto",
                 temperature: float = 1.0, mask_logit: float = 3.0) -> None:
        """Build the learner, attaching the T-layers (the arguments: see the class docstring)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        own = list(F.params_of(model))
        chosen = layer_names(model, layers, "layers")
        transforms = [attach_transform(model, layer, "transform") for layer in chosen]
        super().__init__(model, inner_lr, inner_steps, first_order, own, batching)
        self.layers = chosen
        self.transform_names = transforms
        mask = "sampled" if mask is True else False if mask is None else mask
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS} (True: 'sampled'), got {mask!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.mask, self.temperature = mask, float(temperature)
        self._task_masks: dict[str, Tensor] | None = None
        if self.mask:
            keys = safe_names(self.layers)
            self._mask_keys = keys
            weights = {layer: cast(Tensor, model.get_submodule(layer).weight) for layer in self.layers}
            self.mask_logits = nn.ParameterDict({
                keys[layer]: nn.Parameter(torch.full((w.shape[0],), float(mask_logit), dtype=w.dtype, device=w.device))
                for layer, w in weights.items()
            })

    def masks(self, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """layer -> mask over its output units.

        Args:
            sample: True: a relaxed Bernoulli sample; False: the straight-through threshold; None: as
                the `mask` setting says.
        """
        sample = self.mask == "sampled" if sample is None else sample
        out: dict[str, Tensor] = {}
        for layer, key in self._mask_keys.items():
            logits = self.mask_logits[key]
            if sample:
                out[layer] = relaxed_bernoulli(logits, self.temperature)
            else:
                soft = torch.sigmoid(logits)
                out[layer] = (logits > 0).to(soft.dtype) + soft - soft.detach()
        return out

    def inner_loop(self, params: Params, *args: Any, **kwargs: Any) -> list[Params]:
        # One mask per task, drawn here so every inner step of the task shares it (inside vmap:
        # one draw per task, randomness="different").
        self._task_masks = self.masks() if self.mask else None
        try:
            return super().inner_loop(params, *args, **kwargs)
        finally:
            self._task_masks = None

    def inner_rates(self, step: int) -> float | dict[str, Tensor]:
        if not self.mask:
            return self.inner_lr
        masks = self._task_masks if self._task_masks is not None else self.masks()
        params = self.params()
        rates: dict[str, Tensor] = {}
        for name in self.adapt_names:
            layer, _, _ = name.rpartition(".")
            p = params[name]
            if layer in masks:
                m = masks[layer]
                rates[name] = self.inner_lr * m.reshape(m.shape[0], *([1] * (p.dim() - 1)))
            else:
                rates[name] = torch.full((), self.inner_lr, dtype=p.dtype, device=p.device)
        return rates
