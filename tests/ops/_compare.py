"""Tensor comparison with a failure message that says how many elements differ, where, and whether
NaN or inf appeared."""

from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != expected {list(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if torch.equal(a, e):
        return
    a, e = a.double(), e.double()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if not bad.any():
        return
    count = int(bad.sum())
    where = bad.nonzero()[:5].tolist()
    err = (a - e).abs()
    worst = int(err.nan_to_num(float("inf")).flatten().argmax())
    worst_at = list(torch.unravel_index(torch.tensor(worst), a.shape)) if a.dim() else []
    raise AssertionError(
        f"{what}: {count} of {a.numel()} elements differ (atol={atol}, rtol={rtol}); first at {where}; "
        f"largest |diff| {err.flatten()[worst].item():.3g} at {[int(i) for i in worst_at]} "
        f"(actual {a.flatten()[worst].item():.6g}, expected {e.flatten()[worst].item():.6g}); "
        f"NaN in actual: {bool(a.isnan().any())}, inf in actual: {bool(a.isinf().any())}, "
        f"NaN in expected: {bool(e.isnan().any())}"
    )


def assert_all_close(actual, expected, *, atol: float, rtol: float, what: str = "") -> None:
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors != expected {len(expected)}"
    for i, (x, y) in enumerate(zip(actual, expected)):
        if x is None or y is None:
            assert x is None and y is None, f"{what}[{i}]: one of actual/expected is None"
            continue
        assert_close(x, y, atol=atol, rtol=rtol, what=f"{what}[{i}]")
