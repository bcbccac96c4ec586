"""The same MAML meta-step written with each implementation a user might pick.

Every module here has
    NAME                        label in tables and JSON
    available() -> str | None   None when it runs here, else why not (a missing peer is reported)
    version() -> str
    make(model, cfg) -> step    step(batch) computes the meta-gradient of one meta-batch into the
                                model's parameters' .grad (zeroed first): the mean over tasks of
                                the query loss after cfg.steps inner SGD steps at rate cfg.inner_lr,
                                second order unless cfg.first_order.
The outer optimizer step is left out: it is the same few microseconds for all of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# fastmaml first: the others' ratios are taken to it.
ORDER = ("fastmaml", "fastmaml_compiled", "fastmaml_aoti", "torchfunc_loop", "torchfunc_vmap", "torch_compile", "torch_compile_autotune", "jax", "higher", "learn2learn", "torchopt")


@dataclass(frozen=True)
class StepConfig:
    steps: int
    first_order: bool
    inner_lr: float
    loss: str  # "mse" | "ce"

    @property
    def loss_fn(self):
        return F.mse_loss if self.loss == "mse" else F.cross_entropy


def load(name: str):
    return importlib.import_module(f"bench.peers.{name}")


def zero_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def installed_peer(name: str):
    """`(lib, available, version)` for a peer library loaded through bench/peers/real.py
    (learn2learn, higher, torchopt): `lib()` imports it, `available()` says why it does not."""
    from bench.peers import real as _peers

    def lib():
        return getattr(_peers, name)()

    def available():
        try:
            lib()
        except ImportError as error:
            return f"not installed ({error}); bench/install_peers.sh installs it"
        return None

    def version():
        return _peers.versions()[name]

    return lib, available, version
