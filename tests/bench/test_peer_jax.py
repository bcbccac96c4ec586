"""bench/peers/jax.py translates only the modules it knows and refuses the rest by name (its
meta-gradient is checked against fastmaml's with the other peers, tests/bench/test_peers_agree.py)."""

import pytest
import torch

from bench import peers as P

jax_peer = P.load("jax")


@pytest.mark.parametrize("module,match", [
    (torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh()), "Tanh"),
    (torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)), "running statistics"),
    (torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2)), "groups=1"),
])
def test_refuses_what_it_does_not_translate(module, match):
    if jax_peer.available() is not None:
        pytest.skip(jax_peer.available())
    with pytest.raises(NotImplementedError, match=match):
        jax_peer.make(module, P.StepConfig(1, False, 0.1, "mse"))
