from fastmaml.algorithms.anil import ANIL, BOIL
from fastmaml.algorithms.base import MetaLearner
from fastmaml.algorithms.maml import FOMAML, MAML
from fastmaml.algorithms.metasgd import MetaSGD
from fastmaml.algorithms.reptile import Reptile

__all__ = ["MetaLearner", "MAML", "FOMAML", "MetaSGD", "ANIL", "BOIL", "Reptile"]
