"""Lists of many tensors for the multi-tensor Triton launch: odd sizes around the program chunk
(fastmaml.ops.triton._CHUNK), empty tensors, a misaligned view, and a and gamma of every broadcast."""

from __future__ import annotations

import torch

from tests.ops._cases import FORMS, side

# forms whose a / gamma take every read path of the kernel: absent, period 1 (scalar, layer),
# period n (elementwise), a period < n (channel).
MANY_FORMS = ("sgd", "scaled-scalar", "scaled-channel", "forget-layer", "forget-elementwise")


def many_sizes(count: int, chunk: int) -> list[int]:
    base = [0, 1, 3, chunk - 1, chunk, chunk + 1, 2 * chunk + 5, 17, 1023, 0]
    return [base[i % len(base)] for i in range(count)]


def many_case(form, dtype, device="cpu", count=30, chunk=4096, misaligned=True, seed=0):
    """params, grads, lrs, gammas: `count` tensors (2-d where the size allows, so "channel" is a
    real channel broadcast); with `misaligned`, p of tensor 2 starts 4 bytes into its storage."""
    gen = torch.Generator().manual_seed(seed)
    a_kind, gamma_kind = FORMS[form]
    shapes = [(n // 3, 3) if n % 3 == 0 and n > 0 else (n,) for n in many_sizes(count, chunk)]

    def rand(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    params, grads = [rand(s) for s in shapes], [rand(s) for s in shapes]
    if misaligned:
        n = params[2].numel()
        params[2] = rand((n + 1,))[1:].view(shapes[2])
    lrs = None if a_kind is None else [side(s, a_kind, dtype, device, gen) for s in shapes]
    gammas = None if gamma_kind is None else [side(s, gamma_kind, dtype, device, gen) for s in shapes]
    return params, grads, lrs, gammas
