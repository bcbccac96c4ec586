"""Algorithms by command-line name. A name resolves to a class of fastmaml.algorithms when that
class exists in this build; otherwise `build_learner` says clearly that it is not available yet."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from torch import nn


class AlgorithmUnavailable(LookupError):
    """Unknown algorithm name, or an algorithm fastmaml.algorithms does not provide yet."""


@dataclass(frozen=True)
class Algorithm:
    name: str
    classes: tuple[str, ...]  # class names tried in fastmaml.algorithms, first found wins
    paper: str
    outer: str = "meta_loss"  # "meta_loss" or "meta_grad" (own outer update, e.g. Reptile)


ALGORITHMS = {a.name: a for a in (
    Algorithm("maml", ("MAML",), "Finn et al. 2017"),
    Algorithm("fomaml", ("FOMAML",), "Finn et al. 2017 (first order)"),
    Algorithm("metasgd", ("MetaSGD",), "Li et al. 2017"),
    Algorithm("anil", ("ANIL",), "Raghu et al. 2020"),
    Algorithm("boil", ("BOIL",), "Oh et al. 2021"),
    Algorithm("reptile", ("Reptile",), "Nichol et al. 2018", outer="meta_grad"),
    Algorithm("mamlpp", ("MAMLpp",), "Antoniou et al. 2019"),
    Algorithm("cavia", ("CAVIA",), "Zintgraf et al. 2019"),
    Algorithm("mtnet", ("MTNet",), "Lee & Choi 2018"),
    Algorithm("warpgrad", ("WarpGrad",), "Flennerhag et al. 2020"),
    Algorithm("l2f", ("L2F",), "Baik et al. CVPR 2020"),
    Algorithm("alfa", ("ALFA",), "Baik et al. NeurIPS 2020"),
    Algorithm("imaml", ("IMAML",), "Rajeswaran et al. 2019"),
)}


def algorithm_class(name: str):
    """The class behind `name`; AlgorithmUnavailable names the choices or what is missing."""
    if name not in ALGORITHMS:
        raise AlgorithmUnavailable(f"unknown algorithm {name!r}; choose from {', '.join(ALGORITHMS)}")
    module = importlib.import_module("fastmaml.algorithms")
    algo = ALGORITHMS[name]
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
    module = importlib.import_module("fastmaml.algorithms")
    return any(getattr(module, c, None) is not None for c in ALGORITHMS[name].classes)


def available() -> list[str]:
    return [n for n in ALGORITHMS if is_available(n)]


def build_learner(name: str, model: nn.Module, extra: dict | None = None, **kwargs):
    """`cls(model, **kwargs, **extra)`: of `kwargs`, only those the class accepts (e.g. FOMAML and
    Reptile take no `first_order`; None values are left to the class's defaults); every key of
    `extra` (algorithm-specific options, e.g. iMAML's `lam`) must be one the class accepts."""
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
