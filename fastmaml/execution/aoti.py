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
  their own plain attributes), and the identity and version counter of each parameter that does
  not require grad (a frozen one, which the meta-gradient's trace bakes in as a constant: an
  in-place change bumps its version; the no-grad step, which takes every parameter as an input,
  is re-keyed by such a change without needing it). A change of any of these traces and compiles (or loads) again. Not seen: a change
  inside an object two levels down, or a global the hooks read; use the default backend
  ("inductor", guarded by Dynamo) for learners that read such state.
- On disk, by what the trace produced: the graph's code (sizes and Python numbers are literals in
  it), the bytes of its constants, the inputs' layout, torch's version and Inductor's settings.
  A second process, or a second learner of the same shapes and settings, loads the package
  instead of compiling it.
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

from fastmaml import ops
from fastmaml.execution.learner import Learner
from fastmaml.functional import Params

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)
_PLAIN_TYPES = frozenset(_PLAIN)
# nn.Module's own attributes (hooks, parameter and buffer tables: not settings; `training` is one)
# and the learner's execution state (caches, not settings)
_MODULE_BOOKKEEPING = frozenset(vars(nn.Module())) - {"training"} | {"execution_state"}
_PACKAGE_FORMAT = 3  # part of every disk key: bump when what a package computes changes


def inductor_configs() -> dict[str, Any]:
    """Inductor's settings for the compiled step (a package here, torch.compile's graph in
    compiled.py), a fresh dict (torch adds its own entries to it), each measured in
    bench/README.md ("Compiled meta-steps"):
    - the post-grad pass that has Inductor's kernels read task-batched matrices in their own memory
      order (execution/graph_passes.py; the sine graph 1.15-1.4x faster);
    - no layout optimisation: Inductor would run the convolutions channels-last, while the
      elementwise kernels around them (batch norm, ReLU, max-pool and their derivatives, written
      per task by vmap) keep their task-major order, so each of them converts between the two
      (the Conv-4 step 1.22x faster without: 173 against 212 ms at 8 tasks);
    - not max_autotune: with the pass it no longer speeds the sine graph up (0.99-1.01x), and its
      timing of GEMM templates against bmm at compile time picked 1.2-1.45x slower graphs in some
      compilations."""
    # imported here: it imports Inductor, which only compiling needs
    from fastmaml.execution.graph_passes import LayoutPass

    return {"post_grad_custom_post_pass": LayoutPass(), "layout_optimization": False}


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


def settings(learner: Learner) -> tuple:
    """NOTE: [aoti keys]: the learner's settings as a hashable key. Runs on every call (~13 us for
    the sine MLP): each module's attributes past nn.Module's own bookkeeping (a set difference,
    not a walk over every attribute), plain values as they are, the rest through _plain."""
    key: list[object] = []
    for module in learner.modules():
        own = vars(module)
        key.append(type(module))
        for k in sorted(own.keys() - _MODULE_BOOKKEEPING):
            if k[0] != "_":
                v = own[k]
                key.append((k, v if type(v) in _PLAIN_TYPES else _plain(v, 1)))
        for p in module._parameters.values():
            if p is not None and not p.requires_grad:  # a constant of the trace
                key.append((id(p), p._version))
    return tuple(key)


def _layout(tensors: list[Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class AotiStep:
    """The compiled step's function (meta, buffers, weights, *batch) -> as execution/compiled.py's
    step returns (the buffers' new values last: NOTE: [compiled buffers]), run by AOTInductor
    packages, one per key (NOTE: [aoti keys]). Inputs are made contiguous (the packages are traced
    for contiguous inputs).

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
        key = (tuple(names), tuple(buffer_names), _layout(inputs), settings(self.learner))
        runner = self.runners.get(key)
        if runner is None:
            runner = self.runners[key] = self._runner(names, buffer_names, weights is not None, inputs)
        else:
            self.last_source = "memory"
        out = runner(*inputs)
        new_buffers = dict(zip(buffer_names, out[len(out) - len(buffer_names):]))
        if weights is None:  # losses only
            return out[0], new_buffers
        return dict(zip(names, out[:len(names)])), out[len(names)], new_buffers

    def _runner(self, names: list[str], buffer_names: list[str], weighted: bool, inputs: list[Tensor]) -> Callable:
        from torch.fx.experimental.proxy_tensor import make_fx

        m, b = len(names), len(buffer_names)

        def flat(*args: Tensor) -> tuple[Tensor, ...]:
            meta, buffers = dict(zip(names, args[:m])), dict(zip(buffer_names, args[m:m + b]))
            weights, batch = (args[m + b], args[m + b + 1:]) if weighted else (None, args[m + b:])
            if not weighted:
                losses, new_buffers = self.step(meta, buffers, weights, *batch)
                return (losses, *[new_buffers[n] for n in buffer_names])
            grads, losses, new_buffers = self.step(meta, buffers, weights, *batch)
            return (*[grads[n] for n in names], losses, *[new_buffers[n] for n in buffer_names])

        # traced and exported on copies of the inputs
        with ops.use_backend("reference"):  # the update's form Inductor fuses (execution/compiled.py)
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
                torch._inductor.aoti_compile_and_package(program, package_path=tmp, inductor_configs=inductor_configs())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            self.last_source = "compiled"
        return _flat_call(torch._inductor.aoti_load_package(str(path)), len(inputs))


def _flat_call(package: Any, inputs: int) -> Callable[..., Any]:
    """The package's run on a flat list of tensors. Its __call__ parses the package's input and
    output tree specs (JSON) and flattens and unflattens them with pytree on every call, ~40 us of
    a 0.4 ms sine step; the traced function's inputs and outputs are flat tuples of tensors
    already, so the loader's boxed run is called directly where the spec says so."""
    from torch.utils import _pytree as pytree

    loader = getattr(package, "loader", None)
    if loader is None or pytree.treespec_loads(loader.get_call_spec()[0]).num_leaves != inputs:
        return package
    return lambda *args: loader.boxed_run(list(args))


def _content_key(graph: torch.fx.GraphModule, inputs: list[Tensor]) -> str:
    """NOTE: [aoti keys]: the disk key of a traced graph."""
    h = hashlib.sha256(f"{_PACKAGE_FORMAT} {torch.__version__} {sorted(inductor_configs().items())} {_layout(inputs)}\n"
                       f"{graph.code}".encode())
    constants = {**dict(graph.named_buffers()), **{k: v for k, v in vars(graph).items() if isinstance(v, Tensor)}}
    for name in sorted(constants):
        t = constants[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:40]
