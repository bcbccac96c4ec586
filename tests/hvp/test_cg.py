"""The batched conjugate gradient (fastmaml/secondorder/cg.py) and its fused vector algebra
(fastmaml/ops/cg/): every backend against reference, convergence, and the report of failures."""

import os
import subprocess
import sys

import pytest
import torch

from fastmaml import use_backend
from fastmaml.ops import cg as cg_ops
from fastmaml.secondorder.cg import batched_cg
from tests.hvp import _cg_cases as cases

CPU = torch.device("cpu")
dtypes = pytest.mark.parametrize("dtype,atol,rtol", cases.DTYPES, ids=[str(d[0]).split(".")[1] for d in cases.DTYPES])
native_ok = cg_ops.is_available("native", CPU)
needs_native = pytest.mark.skipif(not native_ok, reason="fastmaml._C has no usable CG ops")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and cg_ops.is_available("native", "cuda")),
                                reason="no CUDA device or kernels")


@dtypes
def test_foreach_matches_reference(dtype, atol, rtol):
    cases.check_ops_match_reference("foreach", dtype, atol, rtol)


@needs_native
@dtypes
def test_native_matches_reference(dtype, atol, rtol):
    cases.check_ops_match_reference("native", dtype, atol, rtol)


@needs_cuda
@dtypes
def test_native_matches_reference_cuda(dtype, atol, rtol):
    cases.check_ops_match_reference("native", dtype, atol, rtol, device="cuda")


def test_triton_matches_reference_interpreted():
    """The Triton kernels under TRITON_INTERPRET=1 on CPU tensors, in a subprocess (the variable
    must be set before triton is imported)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    suite = os.path.join(root, "tests", "hvp", "_cg_triton_suite.py")
    proc = subprocess.run([sys.executable, suite], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_dispatcher_errors_name_the_argument():
    a = [torch.randn(3, 4), torch.randn(3, 5)]
    with pytest.raises(ValueError, match=r"cg.dot: b\[1\] has shape \[3, 6\] but a\[1\] has \[3, 5\]"):
        cg_ops.dot(a, [torch.randn(3, 4), torch.randn(3, 6)])
    with pytest.raises(TypeError, match=r"b\[0\] has dtype torch.float64"):
        cg_ops.dot(a, [torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 5)])
    with pytest.raises(ValueError, match=r"alpha must be a \[3\] torch.float32 tensor"):
        cg_ops.step_(a, a, a, a, torch.ones(4))


# ---- the solver on explicit matrices --------------------------------------------------------------
def _spd_problem(T=4, n=(7, 5), cond=10.0, dtype=torch.float64, seed=0):
    """Per-task SPD H_t with eigenvalues in [0, cond - 1] (so I + H_t has condition number cond),
    a vector split over two tensors of sizes n, and the matvec p -> H_t p."""
    g = torch.Generator().manual_seed(seed)
    N = sum(n)
    Q, _ = torch.linalg.qr(torch.randn(T, N, N, generator=g, dtype=torch.float64))
    eig = torch.linspace(0, cond - 1, N, dtype=torch.float64).expand(T, N)
    H = (Q * eig[:, None, :]) @ Q.transpose(1, 2)
    b = torch.randn(T, N, generator=g, dtype=torch.float64)

    def split(flat):
        return list(torch.split(flat.to(dtype), list(n), dim=1))

    def matvec(p):
        flat = torch.cat([t.double() for t in p], dim=1)
        return split(torch.einsum("tij,tj->ti", H, flat))

    return H, b, split, matvec


@pytest.mark.parametrize("backend", ["reference", "foreach"] + (["native"] if native_ok else []))
def test_converges_on_well_conditioned_tasks(backend, recwarn):
    H, b, split, matvec = _spd_problem()
    lam, damping = 2.0, 0.1
    with use_backend(backend):
        x, report = batched_cg(matvec, split(b), lam=lam, damping=damping, max_iter=12, tol=1e-10)
    A = (1 + damping) * torch.eye(H.shape[1], dtype=H.dtype) + H / lam
    expected = torch.linalg.solve(A, b)
    torch.testing.assert_close(torch.cat(x, dim=1), expected, atol=1e-9, rtol=1e-9)
    assert report.all_converged and report.converged.tolist() == [True] * 4
    assert (report.iterations <= 12).all() and (report.relative_residual <= 1e-10).all()
    assert "4 of 4 tasks reached tol=1e-10" in report.summary()
    assert not [w for w in recwarn if "batched_cg" in str(w.message)]


def test_reports_tasks_that_miss_the_tolerance():
    """Task 1 is ill-conditioned: within 3 iterations it misses the tolerance, the others do not."""
    _, b_easy, split, _ = _spd_problem(T=3, cond=1.0 + 1e-9)
    H_hard, _, _, _ = _spd_problem(T=3, cond=1e4, seed=1)
    H = torch.stack([torch.zeros(12, 12, dtype=torch.float64), H_hard[1], torch.zeros(12, 12, dtype=torch.float64)])

    def matvec(p):
        flat = torch.cat(p, dim=1)
        return split(torch.einsum("tij,tj->ti", H, flat))

    with pytest.warns(RuntimeWarning, match=r"2 of 3 tasks reached tol=1e-08.*not converged: tasks \[1\]"):
        _, report = batched_cg(matvec, split(b_easy), max_iter=3, tol=1e-8)
    assert report.converged.tolist() == [True, False, True]
    assert report.iterations.tolist() == [1, 3, 1]
    assert report.failed_tasks() == [1]
    assert not report.breakdown.any()
    with pytest.raises(RuntimeError, match="not converged: tasks \\[1\\]"):
        batched_cg(matvec, split(b_easy), max_iter=3, tol=1e-8, on_fail="raise")
    _, quiet = batched_cg(matvec, split(b_easy), max_iter=3, tol=1e-8, on_fail="ignore")
    assert quiet.converged.tolist() == [True, False, True]


def test_breakdown_on_indefinite_operator():
    _, b, split, _ = _spd_problem(T=2)

    def matvec(p):  # I + H / lam with H = -3 I: negative definite
        return [-3 * t for t in p]

    with pytest.warns(RuntimeWarning, match="breakdown"):
        _, report = batched_cg(matvec, split(b), lam=1.0, max_iter=5)
    assert report.breakdown.all() and not report.converged.any()


def _hand_cg(A, b, iters, tol=0.0):
    """Plain CG on one dense system in float64: the iterates x_0 = 0, x_1, ... and whether
    <p, A p> <= 0 stopped it."""
    x, r = torch.zeros_like(b), b.clone()
    p, rs, xs = r.clone(), r @ r, [torch.zeros_like(b)]
    for _ in range(iters):
        if rs.sqrt() <= tol * b.norm():
            break
        Ap = A @ p
        if not (p @ Ap) > 0:
            return xs, True
        alpha = rs / (p @ Ap)
        x, r = x + alpha * p, r - alpha * Ap
        xs.append(x)
        rs, p = r @ r, r + (r @ r) / rs * p
    return xs, False


def test_breakdown_returns_the_smallest_residual_iterate():
    """NOTE: [cg breakdown]: tasks 0 and 1 (indefinite A, one eigenvalue -0.5) break down after 4 and 3
    steps whose last iterate has a residual 3x and 6x ||b||; each returns its iterate of smallest
    true residual (a middle one), by a hand-written float64 CG. Task 2 (SPD) is solved as before."""
    n, As, bs = 6, [], []
    for seed, eig in ((1, [3.0, 2.0, 1.5, 1.0, 0.3, -0.5]), (10, [3.0, 2.0, 1.5, 1.0, 0.3, -0.5]),
                      (2, [3.0, 2.0, 1.5, 1.0, 0.3, 0.5])):
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        As.append((Q * torch.tensor(eig, dtype=torch.float64)) @ Q.T)
        bs.append(torch.randn(n, generator=g, dtype=torch.float64))
    A, b = torch.stack(As), torch.stack(bs)
    H = A - torch.eye(n, dtype=torch.float64)  # the operator is I + H / lam with lam = 1

    def matvec(p):
        return [torch.einsum("tij,tj->ti", H, p[0])]

    with pytest.warns(RuntimeWarning, match="breakdown"):
        (x,), report = batched_cg(matvec, [b], lam=1.0, max_iter=10, tol=1e-10)
    assert report.breakdown.tolist() == [True, True, False] and report.converged.tolist() == [False, False, True]
    for t in range(2):
        xs, broke = _hand_cg(A[t], b[t], 10)
        res = torch.stack([(A[t] @ xi - b[t]).norm() for xi in xs])
        best = int(res.argmin())
        assert broke and 0 < best < len(xs) - 1 and res[-1] > 2 * b[t].norm()   # the case this pins
        torch.testing.assert_close(x[t], xs[best], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(report.residual_norm[t], res[best], atol=1e-12, rtol=1e-8)
        assert (A[t] @ x[t] - b[t]).norm() < b[t].norm()
    torch.testing.assert_close(x[2], torch.linalg.solve(A[2], b[2]), atol=1e-9, rtol=1e-9)


def test_dict_vectors_and_initial_guess():
    _, b, split, matvec = _spd_problem(T=2)
    names = ["w", "b"]

    def dict_matvec(p):
        return dict(zip(names, matvec([p["w"], p["b"]])))

    rhs = dict(zip(names, split(b)))
    x, report = batched_cg(dict_matvec, rhs, max_iter=30, tol=1e-12)
    assert list(x) == names and report.all_converged
    # started at the solution, it stops at once
    x2, report2 = batched_cg(dict_matvec, rhs, x0=x, max_iter=30, tol=1e-6)
    assert report2.iterations.tolist() == [0, 0]
    torch.testing.assert_close(x2["w"], x["w"])


def test_float32_vectors():
    _, b, split32, matvec = _spd_problem(T=2, dtype=torch.float32)
    x, report = batched_cg(matvec, split32(b), max_iter=20, tol=1e-5)
    assert report.all_converged and x[0].dtype == torch.float32
    assert report.residual_norm.dtype == torch.float32


def test_argument_errors():
    _, b, split, matvec = _spd_problem(T=2)
    with pytest.raises(ValueError, match="lam must be > 0"):
        batched_cg(matvec, split(b), lam=0.0)
    with pytest.raises(ValueError, match="max_iter must be an int >= 0"):
        batched_cg(matvec, split(b), max_iter=-1)
    with pytest.raises(ValueError, match="on_fail must be one of"):
        batched_cg(matvec, split(b), on_fail="shout")


@needs_native
def test_opcheck_native_ops():
    a, b, c, d = cases.make_vectors(4, torch.float32, shapes=cases.SMALL_SHAPES)
    alpha = cases.coef(torch.float32)
    ops = torch.ops.fastmaml
    for op, args in ((ops.cg_dot, (a, b)), (ops.cg_matvec_dot_, (a, b, 1.5, 0.5)),
                     (ops.cg_step_, (a, b, c, d, alpha)), (ops.cg_direction_, (a, b, alpha))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@needs_native
def test_native_reductions_do_not_depend_on_threads():
    a, b = cases.make_vectors(2, torch.float32, shapes=[(4, 100003), (4, 7)], noncontiguous=False)
    torch.set_num_threads(1)
    one = torch.ops.fastmaml.cg_dot(a, b)
    torch.set_num_threads(2)
    two = torch.ops.fastmaml.cg_dot(a, b)
    assert torch.equal(one, two)


@needs_native
def test_native_errors_name_the_argument():
    a = [torch.randn(3, 4)]
    with pytest.raises(RuntimeError, match=r"cg_step_: alpha must be a \[3\] Float tensor"):
        torch.ops.fastmaml.cg_step_(a, [torch.randn(3, 4)], a, a, torch.ones(2))
    with pytest.raises(RuntimeError, match=r"cg_dot: b\[0\] has shape \[3, 5\] but a\[0\] has \[3, 4\]"):
        torch.ops.fastmaml.cg_dot(a, [torch.randn(3, 5)])
