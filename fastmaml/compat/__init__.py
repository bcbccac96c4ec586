"""The public path of the compatibility faces: `fastmaml.compat.<face>` (and every submodule, e.g.
`fastmaml.compat.learn2learn.vision`) is the module `fastmaml.faces.compat.<face>` itself, imported
on first use as before (docs/architecture.md: the faces live in fastmaml/faces/).

    import fastmaml.compat.learn2learn as l2l        # l2l.algorithms, l2l.data, l2l.vision, l2l.nn, ...
    import fastmaml.compat.higher as higher          # higher.innerloop_ctx(model, SGD optimizer)
    import fastmaml.compat.torchopt as torchopt      # torchopt.MetaSGD, extract/recover_state_dict
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from fastmaml.faces.compat import __all__, __doc__ as _faces_doc  # noqa: F401

_HOME = "fastmaml.faces.compat"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `fastmaml.compat.X...` and loads it as the already-defined `fastmaml.faces.compat.X...`."""

    def __init__(self) -> None:
        self._specs: dict[int, ModuleSpec | None] = {}

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name.startswith(__name__ + "."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(_HOME + spec.name[len(__name__):])
        self._specs[id(module)] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # module_from_spec gave the module this alias's spec: it keeps its own
        module.__spec__ = self._specs.pop(id(module), module.__spec__)


sys.meta_path.insert(0, _Alias())
