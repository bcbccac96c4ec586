"""The command line's registry finds learner classes by their own `cli_name` (a new algorithm is one
file in fastmaml/algorithms/, nothing else to edit)."""

import pytest

from fastmaml import MAML, MetaLearner
from fastmaml.train import registry


def test_every_algorithm_of_the_family_is_found():
    assert set(registry.ALGORITHMS) == {"maml", "fomaml", "metasgd", "anil", "boil", "reptile", "mamlpp", "cavia",
                                        "mtnet", "warpgrad", "l2f", "alfa", "imaml"}
    assert registry.ALGORITHMS["reptile"].outer == "meta_grad"


def test_a_new_class_is_found_and_subclasses_do_not_inherit_the_name():
    class Toy(MetaLearner):
        cli_name, paper = "toy-registry-test", "nobody 2026"

    class Tuned(MAML):  # a user's subclass: not a new command-line name, MAML's stays MAML's
        pass

    found = registry._discover()
    assert found["toy-registry-test"].classes == ("Toy",) and found["toy-registry-test"].paper == "nobody 2026"
    assert found["maml"].classes == ("MAML",)

    class Clash(MetaLearner):
        cli_name = "toy-registry-test"

    with pytest.raises(RuntimeError, match="two learner classes name themselves 'toy-registry-test'"):
        registry._discover()
