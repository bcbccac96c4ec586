from fastmaml.algorithms.alfa import ALFA
from fastmaml.algorithms.anil import ANIL, BOIL
from fastmaml.algorithms.base import MetaLearner
from fastmaml.algorithms.cavia import CAVIA
from fastmaml.algorithms.imaml import IMAML
from fastmaml.algorithms.l2f import L2F
from fastmaml.algorithms.maml import FOMAML, MAML
from fastmaml.algorithms.mamlpp import MAMLpp
from fastmaml.algorithms.metasgd import MetaSGD
from fastmaml.algorithms.mtnet import MTNet
from fastmaml.algorithms.reptile import Reptile
from fastmaml.algorithms.warpgrad import WarpGrad

__all__ = ["MetaLearner", "MAML", "FOMAML", "MetaSGD", "ANIL", "BOIL", "Reptile", "MAMLpp", "CAVIA", "L2F", "ALFA", "MTNet", "WarpGrad",
           "IMAML"]
