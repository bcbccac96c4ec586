from fastmaml.algorithms.base import MetaLearner
from fastmaml.algorithms.maml import FOMAML, MAML

__all__ = ["MetaLearner", "MAML", "FOMAML"]
