"""Import the real peer libraries for comparison (tests/compat, bench/bench_compat.py, bench/peers).

learn2learn 0.2.0's top-level `__init__` imports gym, torchvision, requests, ... for its data and
vision helpers; the meta-learning core (`learn2learn.utils`, `learn2learn.algorithms.maml`,
`learn2learn.algorithms.meta_sgd`) needs only torch. When the full import fails, the core is
loaded under an empty package shell instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types


@functools.cache
def learn2learn():
    """A namespace with MAML, MetaSGD, clone_module, update_module and __version__ from the
    installed learn2learn; raises ImportError if it is not installed."""
    try:
        import learn2learn as l2l

        return types.SimpleNamespace(MAML=l2l.algorithms.MAML, MetaSGD=l2l.algorithms.MetaSGD,
                                     clone_module=l2l.clone_module, update_module=l2l.update_module,
                                     __version__=l2l.__version__)
    except ImportError as full_error:
        spec = importlib.util.find_spec("learn2learn")
        if spec is None or not spec.submodule_search_locations:
            raise
        for name in [m for m in sys.modules if m == "learn2learn" or m.startswith("learn2learn.")]:
            del sys.modules[name]  # a half-finished import of the full package
        try:
            for name, path in (("learn2learn", spec.submodule_search_locations),
                               ("learn2learn.algorithms", [f"{spec.submodule_search_locations[0]}/algorithms"])):
                shell = types.ModuleType(name)
                shell.__path__ = list(path)
                sys.modules[name] = shell
            version = importlib.import_module("learn2learn._version").__version__
            utils = importlib.import_module("learn2learn.utils")
            maml = importlib.import_module("learn2learn.algorithms.maml")
            meta_sgd = importlib.import_module("learn2learn.algorithms.meta_sgd")
        except Exception as core_error:
            raise ImportError(f"learn2learn is installed but its core does not import: {core_error}") from full_error
        return types.SimpleNamespace(MAML=maml.MAML, MetaSGD=meta_sgd.MetaSGD, clone_module=utils.clone_module,
                                     update_module=utils.update_module, __version__=version)


def higher():
    import higher as mod

    return mod


def torchopt():
    import torchopt as mod

    return mod


def versions() -> dict[str, str | None]:
    """The installed version of each peer (None where it does not import)."""
    out: dict[str, str | None] = {}
    for name, load in (("learn2learn", learn2learn), ("higher", higher), ("torchopt", torchopt)):
        try:
            mod = load()
            out[name] = getattr(mod, "__version__", None) or _dist_version(name)
        except ImportError:
            out[name] = None
    return out


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None
