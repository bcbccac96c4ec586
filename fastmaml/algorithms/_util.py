"""Small helpers shared by the algorithms: safe names for per-parameter modules, the head of a
model, and linear transforms attached to a model's layers (T-layers, warp layers)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn


def safe_names(names: Iterable[str]) -> dict[str, str]:
    """name -> a key usable in nn.ParameterDict/ModuleDict (no dots): "0.weight" -> "0__weight"."""
    out: dict[str, str] = {}
    for name in names:
        key = name.replace(".", "__")
        if key in out.values():
            raise ValueError(f"parameter names {name!r} and another map to the same key {key!r}; rename a module")
        out[name] = key
    return out


def head_names(model: nn.Module) -> list[str]:
    """The parameters of the last module (in registration order) that owns parameters directly."""
    last = None
    for mname, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = mname
    if last is None:
        raise ValueError("model has no parameters")
    prefix = f"{last}." if last else ""
    return [prefix + n for n, _ in model.get_submodule(last).named_parameters(recurse=False)]


def layer_names(model: nn.Module, names: Iterable[str] | None, arg: str) -> list[str]:
    """Names of the nn.Linear/nn.Conv* submodules to transform (None: all of them)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if names is None:
        found = [n for n, m in model.named_modules() if isinstance(m, kinds)]
        if not found:
            raise ValueError(f"{arg}: model has no nn.Linear or nn.Conv layer")
        return found
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{arg}: model has no submodule {name!r}") from None
        if not isinstance(module, kinds):
            raise ValueError(f"{arg}: {name!r} is a {type(module).__name__}, expected nn.Linear or nn.Conv")
        out.append(name)
    if not out:
        raise ValueError(f"{arg} must name at least one layer, got an empty list")
    return out


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return cast(nn.modules.conv._ConvNd, module).out_channels


def apply_transform(output: Tensor, matrix: Tensor, linear: bool) -> Tensor:
    """y -> M y on the feature axis: the last axis for Linear, axis 1 (channels) for conv."""
    if linear:
        return output @ matrix.transpose(0, 1)
    return torch.movedim(torch.movedim(output, 1, -1) @ matrix.transpose(0, 1), -1, 1)


def attach_transform(model: nn.Module, layer: str, pname: str) -> str:
    """Register an identity-initialised square matrix `pname` on submodule `layer` and a forward
    hook applying it to the layer's output. The matrix is an ordinary parameter of the model, so
    it travels in the params dict and functional_call swaps it like any other. Returns its name."""
    module = model.get_submodule(layer)
    if pname in module._parameters:
        raise ValueError(f"layer {layer!r} already has a {pname!r} parameter (wrapped twice?)")
    n = _out_features(module)
    w = cast(Tensor, module.weight)
    module.register_parameter(pname, nn.Parameter(torch.eye(n, dtype=w.dtype, device=w.device)))
    linear = isinstance(module, nn.Linear)

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return apply_transform(output, getattr(mod, pname), linear)

    module.register_forward_hook(hook)
    return f"{layer}.{pname}" if layer else pname
