"""fastmaml under the user's torch.compile (docs/compile.md).

* A torch.compile'd model (`MAML(torch.compile(net))`): the meta-step calls the model functionally,
  inside torch.func transforms and a double backward, which a compiled module does not support
  ("torch.compile with aot_autograd does not currently support double backward") and which
  loses the task-batched path. The learner runs the original module instead (same parameters),
  with a one-time warning pointing to fastmaml.compile.
* A compiled training step calling `meta_loss(...)`: the meta-loss runs eagerly (a graph break,
  torch.compiler.disable), so second order keeps working; the rest of the step is compiled.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# The meta-loss and adaptation run outside any graph the user compiles around them.
outside_user_graph = torch.compiler.disable

_warned = False


def eager_module(model: nn.Module) -> nn.Module:
    """`model`, or the original module of a torch.compile'd one (warned once per process)."""
    original = getattr(model, "_orig_mod", None)
    if not isinstance(model, torch._dynamo.eval_frame.OptimizedModule) or original is None:
        return model
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "fastmaml: the model passed to the learner is torch.compile'd; the meta-step runs its original "
            "module (a compiled module cannot be differentiated twice through torch.func). To compile the "
            "whole meta-step, use fastmaml.compile(learner) (docs/compile.md).", RuntimeWarning, stacklevel=3)
    return original
