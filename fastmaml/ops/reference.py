"""Per-tensor pure PyTorch: the oracle every other backend is tested against. Kept plain on purpose."""

import torch


def is_available(device: torch.device) -> bool:
    return True


def update(params, grads, lrs, gammas, alpha):
    out = []
    for i in range(len(params)):
        step = grads[i] if lrs is None else lrs[i] * grads[i]
        kept = params[i] if gammas is None else gammas[i] * params[i]
        out.append(kept - alpha * step)
    return out


def update_(params, grads, lrs, gammas, alpha):
    for i in range(len(params)):
        step = grads[i] if lrs is None else lrs[i] * grads[i]
        if gammas is not None:
            params[i].mul_(gammas[i])
        params[i].sub_(alpha * step)
