"""Which models run task-batched: the model traced by torch.fx into a plan of supported steps.

`supports(model)` accepts a model when every step of its traced forward is one of these layers (any
nesting of Sequential and modules whose forward only chains them): Linear, Conv2d (zeros padding),
BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ReLU, Tanh, Sigmoid, LeakyReLU, ELU, GELU,
SiLU, Flatten (start_dim >= 1), Identity, Dropout, the same activations as functions/methods, and
`+` of two activations. Modules with hooks are refused (hooks would not run). The plan is made once
per model (a weak cache) and run by execution/batched/layers.py.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as TF
from torch import fx, nn

from fastmaml.execution.chain import chain_of

if TYPE_CHECKING:  # layers.py imports this module
    from fastmaml.execution.batched.layers import CompiledStep

ACTIVATION_MODULES = {
    nn.ReLU: lambda m, x: TF.relu(x),
    nn.Tanh: lambda m, x: torch.tanh(x),
    nn.Sigmoid: lambda m, x: torch.sigmoid(x),
    nn.LeakyReLU: lambda m, x: TF.leaky_relu(x, m.negative_slope),
    nn.ELU: lambda m, x: TF.elu(x, m.alpha),
    nn.GELU: lambda m, x: TF.gelu(x, approximate=m.approximate),
    nn.SiLU: lambda m, x: TF.silu(x),
    nn.Identity: lambda m, x: x,
    nn.Dropout: lambda m, x: TF.dropout(x, m.p, m.training),
}
_ACTIVATION_FUNCTIONS: dict[object, Callable[..., torch.Tensor]] = {TF.relu: TF.relu, torch.relu: TF.relu, torch.tanh: torch.tanh, TF.tanh: torch.tanh,
                         torch.sigmoid: torch.sigmoid, TF.sigmoid: torch.sigmoid, TF.silu: TF.silu,
                         TF.gelu: TF.gelu, TF.elu: TF.elu, TF.leaky_relu: TF.leaky_relu}
_ACTIVATION_METHODS: dict[object, Callable[..., torch.Tensor]] = {"relu": TF.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d,
           nn.AdaptiveAvgPool2d, nn.Flatten)

# one step of a plan: (node name, kind, target: a submodule name, an activation or None, argument node names)
Step = tuple[str, str, str | Callable[..., torch.Tensor] | None, list[str]]

_plans: weakref.WeakKeyDictionary[nn.Module, str | Plan] = weakref.WeakKeyDictionary()


class Plan:
    """The model as a list of steps (node name, kind, target, argument node names)."""

    def __init__(self, graph_module: fx.GraphModule, steps: list[Step], output: str) -> None:
        self.graph_module, self.steps, self.output = graph_module, steps, output
        self.compiled: list[CompiledStep] | None = None  # the steps as functions (layers.compile_plan), made on first use
        self.chain = chain_of(self)  # a Linear/ReLU chain: explicit gradients (execution/chain.py)


def _trace(model: nn.Module) -> str | Plan:
    """A plan for `model`, or the reason it is not supported."""
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_backward_hooks", None):
            return f"module {name or type(m).__name__!r} has hooks"
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - data-dependent control flow, unsupported Python
        return f"torch.fx cannot trace it ({type(error).__name__}: {error})"
    steps: list[Step] = []
    output: str | None = None
    inputs = 0
    for node in gm.graph.nodes:
        args = [a.name for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder":
            inputs += 1
            if inputs > 1:
                return "forward takes more than one input"
            steps.append((node.name, "input", None, []))
        elif node.op == "call_module":
            m = gm.get_submodule(node.target)
            if type(m) not in ACTIVATION_MODULES and type(m) not in _LAYERS:
                return f"layer {node.target!r} ({type(m).__name__}) has no task-batched form"
            if node.kwargs or len(node.args) != 1:
                return f"layer {node.target!r} is called with extra arguments"
            problem = _check_layer(node.target, m)
            if problem:
                return problem
            steps.append((node.name, "module", node.target, args))
        elif node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
            if len(node.args) != 1 or not args:
                return f"{node.target.__name__} is called with extra arguments"
            # fx records F.relu(x) as relu(x, inplace=False): that keyword changes nothing here
            if node.kwargs and dict(node.kwargs) != {"inplace": False}:
                return f"{node.target.__name__} is called with keyword arguments"
            steps.append((node.name, "function", _ACTIVATION_FUNCTIONS[node.target], args))
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            if len(node.args) != 2 or len(args) != 2 or node.kwargs:
                return "only `a + b` of two activations is supported"
            steps.append((node.name, "add", None, args))
        elif node.op == "call_method" and node.target in _ACTIVATION_METHODS:
            if len(node.args) != 1 or node.kwargs:
                return f".{node.target}() is called with arguments"
            steps.append((node.name, "function", _ACTIVATION_METHODS[node.target], args))
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                return "forward returns more than one tensor"
            output = node.args[0].name
        else:
            what = getattr(node.target, "__name__", node.target)
            return f"the operation {node.op} {what!r} has no task-batched form"
    if inputs != 1 or output is None:
        return "forward must take one input and return one tensor"
    return Plan(gm, steps, output)


def _check_layer(name: str, m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        return f"layer {name!r}: padding_mode {m.padding_mode!r} (only 'zeros')"
    if isinstance(m, nn.Flatten) and (m.start_dim == 0 or m.start_dim < -1 and m.end_dim >= 0):
        return f"layer {name!r}: Flatten over the example dimension"
    if isinstance(m, nn.Flatten) and m.start_dim < 0:
        return f"layer {name!r}: Flatten with a negative start_dim"
    if isinstance(m, nn.MaxPool2d) and m.return_indices:
        return f"layer {name!r}: MaxPool2d(return_indices=True)"
    return None


def plan_of(model: nn.Module) -> str | Plan:
    plan = _plans.get(model)
    if plan is None:
        plan = _trace(model)
        _plans[model] = plan
    return plan


def supports(model: nn.Module) -> bool:
    """Whether `model` runs task-batched here (see the module docstring for the layers)."""
    return isinstance(plan_of(model), Plan)


def why_not(model: nn.Module) -> str | None:
    """The reason `model` is not supported (None when it is)."""
    plan = plan_of(model)
    return None if isinstance(plan, Plan) else plan


