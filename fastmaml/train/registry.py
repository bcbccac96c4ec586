"""Algorithms by command-line name, found, not listed: every module of fastmaml.algorithms is
imported and every learner class that names itself (`cli_name`, `paper`, `outer_update` on the
class) is registered. A new algorithm is one file in fastmaml/algorithms/ with its test and docs
page; `fastmaml train --algo NAME` finds it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any

from torch import nn

import fastmaml.algorithms
from fastmaml.algorithms.base import MetaLearner


class AlgorithmUnavailable(LookupError):
    """Unknown algorithm name, or an algorithm fastmaml.algorithms does not provide yet."""


@dataclass(frozen=True)
class Algorithm:
    name: str
    classes: tuple[str, ...]  # class names tried in `module`, first found wins
    paper: str
    outer: str = "meta_loss"  # "meta_loss" or "meta_grad" (own outer update, e.g. Reptile)
    module: str = "fastmaml.algorithms"


def _discover() -> dict[str, Algorithm]:
    for info in pkgutil.iter_modules(fastmaml.algorithms.__path__):
        importlib.import_module(f"fastmaml.algorithms.{info.name}")
    found: dict[str, Algorithm] = {}

    def walk(cls: type[MetaLearner]) -> None:
        for sub in cls.__subclasses__():
            name = sub.__dict__.get("cli_name")  # its own, not inherited (FOMAML is not "maml")
            if name:
                if name in found:
                    raise RuntimeError(f"two learner classes name themselves {name!r}: {found[name].classes[0]} "
                                       f"and {sub.__name__}")
                found[name] = Algorithm(name, (sub.__name__,), sub.paper, sub.outer_update, sub.__module__)
            walk(sub)

    walk(MetaLearner)
    # the family in the order of its papers (MAML first), whatever the order of the files
    return dict(sorted(found.items(), key=lambda item: (item[0] != "maml", _year(item[1].paper), item[0])))


def _year(paper: str) -> int:
    years = [int(w) for w in paper.replace("(", " ").replace(")", " ").split() if w.isdigit() and len(w) == 4]
    return years[0] if years else 9999


ALGORITHMS = _discover()


def algorithm_class(name: str) -> type[MetaLearner]:
    """The class behind `name`; AlgorithmUnavailable names the choices or what is missing.

    Args:
        name: the algorithm's command-line name (e.g. "maml").
    """
    if name not in ALGORITHMS:
        raise AlgorithmUnavailable(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    algo = ALGORITHMS[name]
    module = importlib.import_module(algo.module)
    for cls_name in algo.classes:
        cls = getattr(module, cls_name, None)
        if cls is not None:
            return cls
    ready = ", ".join(n for n in ALGORITHMS if is_available(n))
    raise AlgorithmUnavailable(f"algorithm {name!r} ({algo.paper}) is not available yet: fastmaml.algorithms has no "
                               f"{' or '.join(algo.classes)}; available now: {ready}")


def is_available(name: str) -> bool:
    if name not in ALGORITHMS:
        return False
    module = importlib.import_module(ALGORITHMS[name].module)
    return any(getattr(module, c, None) is not None for c in ALGORITHMS[name].classes)


def available() -> list[str]:
    return [n for n in ALGORITHMS if is_available(n)]


def build_learner(name: str, model: nn.Module, extra: dict[str, Any] | None = None, **kwargs: Any) -> MetaLearner:
    """`cls(model, **kwargs, **extra)`: of `kwargs`, only those the class accepts (e.g. FOMAML and
    Reptile take no `first_order`; None values are left to the class's defaults); every key of
    `extra` (algorithm-specific options, e.g. iMAML's `lam`) must be one the class accepts.

    Args:
        name: the algorithm's command-line name.
        model: the network.
        extra: more keyword arguments, passed as they are.
    """
    cls = algorithm_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    chosen = {k: v for k, v in kwargs.items() if v is not None and (takes_any or k in params)}
    extra = dict(extra or {})
    unknown = [k for k in extra if not takes_any and (k not in params or k in ("self", "model"))]
    if unknown:
        accepted = [k for k in params if k not in ("self", "model")]
        raise ValueError(f"{cls.__name__} takes no argument {unknown}; it takes {accepted}")
    return cls(model, **{**chosen, **extra})
