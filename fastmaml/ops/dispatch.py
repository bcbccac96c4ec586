"""The one dispatcher: op families, their backends, and the user's choice of backend.

A family is a set of ops with one implementation per backend: the fused update (ops/reference.py,
foreach.py, native.py, triton.py), the batched CG's vector algebra (ops/cg/) and the Linear/ReLU
chain ops (ops/chain/). Every backend of a family is a module with the family's functions and an
`is_available(device)` that runs a tiny op. One choice covers all families:

    fastmaml.set_backend("reference")       # or FASTMAML_BACKEND=reference; "auto" by default
    with fastmaml.use_backend("native"): ...

"auto" takes the first usable backend of the family's order for the device; a named backend that a
family lacks (the chain family has only "reference" and "native") runs that family's reference,
the plain PyTorch oracle every other backend is tested against.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

BACKENDS = ("reference", "foreach", "native", "triton")
CHOICES = BACKENDS + ("auto",)

_choice = os.environ.get("FASTMAML_BACKEND", "auto")
_warned: set[str] = set()


def set_backend(name: str) -> None:
    """Choose the backend of every op family (the environment variable FASTMAML_BACKEND sets the initial choice).

    Args:
        name: one of "auto", "reference", "foreach", "native", "triton".
    """
    global _choice
    if name not in CHOICES:
        raise ValueError(f"set_backend: name must be one of {CHOICES}, got {name!r}")
    _choice = name


def get_backend() -> str:
    """The backend choice in force ("auto" unless set)."""
    if _choice not in CHOICES:
        raise ValueError(f"FASTMAML_BACKEND must be one of {CHOICES}, got {_choice!r}")
    return _choice


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: `with fastmaml.use_backend("reference"): ...`, the previous choice restored after.

    Args:
        name: the backend in force inside the block (see `set_backend`).
    """
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


class Family:
    """An op family: `loaders` maps each backend it has to a function importing it (lazily: triton
    is optional and slow to import); `auto` gives, per device type, the order "auto" tries."""

    def __init__(self, name: str, loaders: dict[str, Callable[[], ModuleType]],
                 auto: dict[str, tuple[str, ...]]) -> None:
        self.name, self.loaders, self.auto = name, loaders, auto
        self._auto_cache: dict[str, str] = {}
        self._modules: dict[str, ModuleType] = {}

    @classmethod
    def of_package(cls, name: str, package: str, backends: tuple[str, ...],
                   auto: dict[str, tuple[str, ...]]) -> Family:
        """A family whose backend `b` is the module `{package}.{b}`, imported on first use."""
        return cls(name, {b: functools.partial(importlib.import_module, f"{package}.{b}") for b in backends}, auto)

    def load(self, name: str) -> ModuleType:
        """The module of backend `name`."""
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
        if name not in self.loaders:
            raise ValueError(f"the {self.name} ops have no {name!r} backend; they have {tuple(self.loaders)}")
        if name not in self._modules:
            self._modules[name] = self.loaders[name]()
        return self._modules[name]

    def is_available(self, name: str, device: torch.device | str = "cpu") -> bool:
        """Whether backend `name` runs this family on `device` here."""
        if name not in self.loaders:
            return False
        try:
            return bool(self.load(name).is_available(torch.device(device)))
        except ImportError:
            return False

    def resolve(self, device: torch.device) -> str:
        """The backend that runs this family on `device` under the current choice."""
        name = get_backend()
        if name != "auto":
            return name if name in self.loaders else "reference"
        if device.type not in self._auto_cache:
            order = self.auto.get(device.type, self.auto["cpu"])
            chosen = next((b for b in order if self.is_available(b, device)), "reference")
            if chosen != order[0] and order[0] == "native":
                _warn_once(f"{self.name}-{device.type}",
                           f"fastmaml: the compiled extension is not usable on {device.type}; the {self.name} ops fall "
                           f"back to the {chosen!r} backend (build it with `make ext`, see `fastmaml info`)")
            self._auto_cache[device.type] = chosen
        return self._auto_cache[device.type]

    def backend(self, device: torch.device) -> ModuleType:
        """The module that runs this family on `device`."""
        return self.load(self.resolve(device))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=5)
