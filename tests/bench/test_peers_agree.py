"""Every implementation of bench/peers computes the same MAML meta-gradient as fastmaml (float64,
a few tasks, small models); an absent peer is skipped."""

import copy

import pytest
import torch

from bench import peers as P
from fastmaml.models import conv4
from fastmaml.tasks.sine import SineTasks, sine_mlp

TOL = 1e-9


def sine_problem(tasks=3):
    torch.manual_seed(0)
    return sine_mlp(hidden=8).double(), SineTasks(k_shot=5, q_query=4, seed=0, dtype=torch.float64).sample(tasks).tensors()


def conv_problem(tasks=2):
    torch.manual_seed(0)
    model = conv4(n_way=3, hidden=4, image_size=16).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(tasks, 6, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(tasks, 2)
    return model, (x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])


def meta_grad(peer, model, batch, cfg):
    model = copy.deepcopy(model)
    P.load(peer).make(model, cfg)(batch)
    return [p.grad for p in model.parameters()]


def rel_diff(a, b) -> float:
    """max |a - b| over all entries of all tensors, relative to the largest |b| (per-tensor scales
    would blow up on the conv biases under batch norm, whose meta-gradient is ~0)."""
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


# Peers compiled by Inductor take a minute per graph on a 2-core machine: one case each
# (AOTInductor's on a model with batch norm and convolutions).
INDUCTOR = {"torch_compile": "sine-2-so", "torch_compile_autotune": "sine-1-so", "fastmaml_compiled": "sine-2-so",
            "fastmaml_aoti": "conv-1-so"}


@pytest.mark.parametrize("peer", [p for p in P.ORDER if p != "fastmaml"])
@pytest.mark.parametrize("case", ["sine-1-so", "sine-2-so", "sine-2-fo", "conv-1-so", "conv-2-fo"])
def test_meta_gradient_matches_fastmaml(peer, case, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMAML_AOTI_CACHE", str(tmp_path))  # compiled here, not loaded from an earlier run
    why = P.load(peer).available()
    if why is not None:
        pytest.skip(f"{peer}: {why}")
    if INDUCTOR.get(peer, case) != case:
        pytest.skip(f"{peer} is checked on {INDUCTOR[peer]} only (each case compiles for a minute)")
    kind, steps, order = case.split("-")
    model, batch = sine_problem() if kind == "sine" else conv_problem()
    cfg = P.StepConfig(int(steps), order == "fo", 0.1, "mse" if kind == "sine" else "ce")
    expected = meta_grad("fastmaml", model, batch, cfg)
    got = meta_grad(peer, model, batch, cfg)
    assert all(g is not None for g in got), f"{peer} left some parameters without a gradient"
    diff = rel_diff(got, expected)
    if peer == "torchfunc_vmap" and kind == "conv" and order == "so" and diff > TOL:
        # NOTE: [vmap batch norm] in fastmaml/execution/batchnorm.py: torch's batch norm double backward under
        # vmap(grad) is wrong; the benchmark reports this implementation as disagreeing.
        pytest.xfail(f"torch.func vmap with BatchNorm, second order: off by {diff:.1e} (torch bug)")
    assert diff <= TOL, f"{peer} {case}: meta-gradient differs from fastmaml's by {diff:.2e} (relative)"
