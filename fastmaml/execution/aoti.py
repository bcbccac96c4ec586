"""The compiled meta-step's ahead-of-time backend: `fastmaml.compile(learner, backend="aoti")`.

The step function of execution/compiled.py (the whole meta-gradient, inner torch.func.grad steps
and all) is traced to ATen ops by make_fx (the transforms traced away: torch.export cannot export
them as they are, bench/README.md), exported by torch.export and compiled by AOTInductor into a
package (.pt2) whose runner calls the generated C++ directly: no Dynamo guard check and no AOT
autograd wrappers per call (bench/README.md measures the difference). Compiling takes longer than
torch.compile's (a C++ build of the whole graph); a package on disk is loaded in milliseconds.

NOTE: [aoti keys] A package has no guards, so this module keys them itself.
- In this process, by the inputs' names, shapes, dtypes and devices and by the learner's settings
  as the trace read them: each submodule's type, `training` flag and plain attributes (numbers,
  strings, dtypes, devices, and tuples, lists and dicts of them; other objects by identity, with
  their own plain attributes), and the identity and version counter of each parameter that is
  not an input (a frozen one, which the trace bakes in as a constant: an in-place change bumps its
  version). A change of any of these traces and compiles (or loads) again. Not seen: a change
  inside an object two levels down, or a global the hooks read; use the default backend
  ("inductor", guarded by Dynamo) for learners that read such state.
- On disk, by what the trace produced: the graph's code (sizes and Python numbers are literals in
  it), the bytes of its constants, the inputs' layout and torch's version. A second process, or a
  second learner of the same shapes and settings, loads the package instead of compiling it.
  A package is compiled under a temporary name and renamed into place (atomic).
The folder is $FASTMAML_AOTI_CACHE, else $FASTMAML_CACHE/aoti, else ~/.cache/fastmaml/aoti.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastmaml.execution.learner import Learner
from fastmaml.functional import Params

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)
_PACKAGE_FORMAT = 1  # part of every disk key: bump when what a package computes changes


def default_cache_dir() -> Path:
    """$FASTMAML_AOTI_CACHE, else the folder of fastmaml's other caches ($FASTMAML_CACHE, else
    ~/.cache/fastmaml) /aoti."""
    from fastmaml.tasks.omniglot import default_cache_dir as fastmaml_cache

    own = os.environ.get("FASTMAML_AOTI_CACHE")
    return Path(own).expanduser() if own else fastmaml_cache() / "aoti"


def _plain(value: object, depth: int) -> object:
    """NOTE: [aoti keys]: `value` as a hashable key of what a trace could have read from it."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Tensor):
        return ("tensor", id(value), value._version)
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v, depth) for v in value)
    if isinstance(value, Mapping):
        return tuple((k, _plain(v, depth)) for k, v in value.items())
    if isinstance(value, nn.Module):
        return ("module", id(value))  # walked by settings() itself
    if depth > 0 and hasattr(value, "__dict__"):
        return (type(value), id(value), _plain(vars(value), depth - 1))
    return (type(value), id(value))


def settings(learner: Learner, inputs: frozenset[str]) -> tuple:
    """NOTE: [aoti keys]: the learner's settings as a hashable key; `inputs`: the parameter names
    the step takes as inputs (the others are constants of the trace)."""
    key: list[object] = []
    for module in learner.modules():
        own = vars(module)
        key.append((type(module), module.training,
                    tuple((k, _plain(v, 1)) for k, v in own.items() if not k.startswith("_") and k != "execution_state")))
    for name, p in learner.named_parameters():
        if name not in inputs:
            key.append((name, id(p), p._version))
    return tuple(key)


def _layout(tensors: list[Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class AotiStep:
    """The compiled step's function (meta, buffers, weights, *batch) -> as execution/compiled.py's
    step returns, run by AOTInductor packages, one per key (NOTE: [aoti keys]). Inputs are made
    contiguous (the packages are traced for contiguous inputs); the per-task buffers are updated in
    place, as the step does.

    Attributes:
        last_source: how the last call's package was found: "compiled", "disk" or "memory".
    """

    def __init__(self, step: Callable[..., Any], learner: Learner) -> None:
        self.step, self.learner = step, learner
        self.cache_dir = default_cache_dir()
        self.runners: dict[tuple, Callable[..., Any]] = {}
        self.last_source: str | None = None

    def __call__(self, meta: Params, buffers: Params, weights: Tensor | None, *batch: Tensor) -> Any:
        names, buffer_names = list(meta), list(buffers)
        inputs = [t.contiguous() for t in meta.values()] + list(buffers.values()) + \
            ([] if weights is None else [weights]) + [t.contiguous() for t in batch]
        key = (tuple(names), tuple(buffer_names), _layout(inputs), settings(self.learner, frozenset(names)))
        runner = self.runners.get(key)
        if runner is None:
            runner = self.runners[key] = self._runner(names, buffer_names, weights is not None, inputs)
        else:
            self.last_source = "memory"
        out = runner(*inputs)
        if weights is None:  # losses only
            return out[0]
        return dict(zip(names, out[:-1])), out[-1]

    def _runner(self, names: list[str], buffer_names: list[str], weighted: bool, inputs: list[Tensor]) -> Callable:
        from torch.fx.experimental.proxy_tensor import make_fx

        m, b = len(names), len(buffer_names)

        def flat(*args: Tensor) -> tuple[Tensor, ...]:
            meta, buffers = dict(zip(names, args[:m])), dict(zip(buffer_names, args[m:m + b]))
            weights, batch = (args[m + b], args[m + b + 1:]) if weighted else (None, args[m + b:])
            out = self.step(meta, buffers, weights, *batch)
            if not weighted:
                return (out,)
            grads, losses = out
            return (*[grads[n] for n in names], losses)

        # traced and exported on copies: tracing with real tensors runs the step (and its in-place
        # buffer updates) once
        graph = make_fx(flat)(*[t.clone() for t in inputs])
        path = self.cache_dir / f"{_content_key(graph, inputs)}.pt2"
        if path.exists():
            self.last_source = "disk"
        else:
            program = torch.export.export(graph, tuple(t.clone() for t in inputs), strict=False)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=self.cache_dir)
            os.close(fd)
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            self.last_source = "compiled"
        return torch._inductor.aoti_load_package(str(path))


def _content_key(graph: torch.fx.GraphModule, inputs: list[Tensor]) -> str:
    """NOTE: [aoti keys]: the disk key of a traced graph."""
    h = hashlib.sha256(f"{_PACKAGE_FORMAT} {torch.__version__} {_layout(inputs)}\n{graph.code}".encode())
    constants = {**dict(graph.named_buffers()), **{k: v for k, v in vars(graph).items() if isinstance(v, Tensor)}}
    for name in sorted(constants):
        t = constants[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:40]
