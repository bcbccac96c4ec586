"""learn2learn.algorithms: MAML, MetaSGD and GBML on fastmaml's fused inner update."""

from typing import NoReturn

from fastmaml.faces.compat.learn2learn.algorithms import base_learner, gbml, maml, meta_sgd
from fastmaml.faces.compat.learn2learn.algorithms.base_learner import BaseLearner
from fastmaml.faces.compat.learn2learn.algorithms.gbml import GBML
from fastmaml.faces.compat.learn2learn.algorithms.maml import MAML, maml_update
from fastmaml.faces.compat.learn2learn.algorithms.meta_sgd import MetaSGD, meta_sgd_update

__all__ = ["GBML", "MAML", "BaseLearner", "MetaSGD", "base_learner", "gbml", "maml", "maml_update", "meta_sgd",
           "meta_sgd_update"]


def __getattr__(name: str) -> NoReturn:
    raise AttributeError(f"fastmaml.compat.learn2learn.algorithms has no {name!r}: it provides "
                         f"{', '.join(__all__)} (the Lightning wrappers and MAMLpp are learn2learn's own)")
