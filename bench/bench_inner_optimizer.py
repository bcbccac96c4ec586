"""How fast is one differentiable inner Adam or momentum step, fastmaml's fused op against what the
peers do?

One step of Adam (betas 0.9, 0.999, eps 1e-8, at step 3) and of SGD with momentum 0.9 over a
Conv-4's parameter list (18 tensors, 112k elements) and over the task-batched list of 32 tasks
([32, ...] tensors, 3.6M elements), every input requiring grad (parameters, gradients, state), as
in an inner loop that is differentiated:

  * fastmaml      `InnerAdam().step` / `InnerSGD(momentum=0.9).step`: one fused op
                  (fastmaml::fused_moments, NOTE: [moment forms]), one fused backward
  * torch loop    torch.optim's formulas out of place, tensor by tensor, as higher's differentiable
                  optimizers and TorchOpt's (tree_map over the tensors) compute them
  * torch foreach the same with torch._foreach_* ops (one op per list and operation)

"fwd": the step, its graph recorded; "fwd+bwd": the step and torch.autograd.grad of all its outputs
(new parameters and state) with respect to all its inputs. The implementations take turns within
each round (order rotated every round), so a shared machine's drift falls on all alike; ratios
are taken within the run. ATen ops: every op dispatched (a TorchDispatchMode count). Before
timing, each peer's outputs are checked against fastmaml's (float64, 1e-12).

    python bench/bench_inner_optimizer.py --threads 1 --clock cpu   # bench/results/inner_optimizer.json
    python bench/bench_inner_optimizer.py --quick                   # a smoke test
    python -m bench.tables inner_optimizer                          # the table from the JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import CLOCKS, OpCounter, interleaved
from bench.bench_inner_update import _git_commit, conv4
from bench.bench_peers import machine
from fastmaml.ops.optim import InnerAdam, InnerSGD, OptimState

RESULTS = ROOT / "bench" / "results" / "inner_optimizer.json"
SETS = {"conv4": 1, "conv4x32": 32}  # name -> tasks (a leading dim)
LR, BETAS, EPS, MOMENTUM, STEP = 0.01, (0.9, 0.999), 1e-8, 0.9, 3
Lists = list[Tensor]


# ---- the peers: torch.optim's formulas, out of place -----------------------------------------------
def adam_loop(p: Lists, g: Lists, m: Lists, v: Lists) -> tuple[Lists, ...]:
    (b1, b2), bc1, bc2 = BETAS, 1 - BETAS[0] ** STEP, 1 - BETAS[1] ** STEP
    m = [mi.mul(b1).add(gi, alpha=1 - b1) for mi, gi in zip(m, g)]
    v = [vi.mul(b2).addcmul(gi, gi, value=1 - b2) for vi, gi in zip(v, g)]
    p = [pi.addcdiv(mi, vi.sqrt().div(math.sqrt(bc2)).add(EPS), value=-LR / bc1) for pi, mi, vi in zip(p, m, v)]
    return p, m, v


def adam_foreach(p: Lists, g: Lists, m: Lists, v: Lists) -> tuple[Lists, ...]:
    (b1, b2), bc1, bc2 = BETAS, 1 - BETAS[0] ** STEP, 1 - BETAS[1] ** STEP
    m = torch._foreach_add(torch._foreach_mul(m, b1), g, alpha=1 - b1)
    v = torch._foreach_addcmul(torch._foreach_mul(v, b2), g, g, value=1 - b2)
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), math.sqrt(bc2)), EPS)
    # not _foreach_addcdiv: its backward raises an IndexError on this list in torch 2.14
    return torch._foreach_sub(p, torch._foreach_mul(torch._foreach_div(m, denom), LR / bc1)), m, v


def momentum_loop(p: Lists, g: Lists, b: Lists) -> tuple[Lists, ...]:
    b = [bi.mul(MOMENTUM).add(gi) for bi, gi in zip(b, g)]
    return [pi.sub(bi, alpha=LR) for pi, bi in zip(p, b)], b


def momentum_foreach(p: Lists, g: Lists, b: Lists) -> tuple[Lists, ...]:
    b = torch._foreach_add(torch._foreach_mul(b, MOMENTUM), g)
    return torch._foreach_add(p, b, alpha=-LR), b


def fastmaml_step(optimizer: str) -> Callable[..., tuple[Lists, ...]]:
    """fastmaml's step with the peers' signature (p, g, *state) -> (p', *state')."""
    if optimizer == "adam":
        opt: InnerAdam | InnerSGD = InnerAdam(betas=BETAS, eps=EPS)

        def step(p: Lists, g: Lists, m: Lists, v: Lists) -> tuple[Lists, ...]:
            new, s = opt.step(p, g, OptimState(STEP - 1, m, v, None), LR)
            return new, s.m, s.v
    else:
        opt = InnerSGD(momentum=MOMENTUM)

        def step(p: Lists, g: Lists, b: Lists) -> tuple[Lists, ...]:  # type: ignore[misc]
            new, s = opt.step(p, g, OptimState(STEP - 1, None, None, b), LR)
            return new, s.b
    return step


IMPLEMENTATIONS = {
    "adam": {"fastmaml": fastmaml_step("adam"), "torch loop": adam_loop, "torch foreach": adam_foreach},
    "momentum": {"fastmaml": fastmaml_step("momentum"), "torch loop": momentum_loop,
                 "torch foreach": momentum_foreach},
}


def make_inputs(set_name: str, optimizer: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Lists]:
    """(p, g, *state), every tensor a leaf requiring grad; v positive."""
    gen = torch.Generator().manual_seed(seed)
    tasks = SETS[set_name]
    shapes = [((tasks,) if tasks > 1 else ()) + s for s in conv4()]
    rand = lambda s: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)
    lists = [[rand(s) for s in shapes] for _ in range(2)]
    if optimizer == "adam":
        lists += [[rand(s) * 0.1 for s in shapes], [rand(s).abs() * 0.01 for s in shapes]]
    else:
        lists += [[rand(s) for s in shapes]]
    return [[t.requires_grad_() for t in lst] for lst in lists]


def check_agree(optimizer: str) -> None:
    """Every implementation's outputs and gradients equal fastmaml's in float64 (1e-12)."""
    inputs = make_inputs("conv4", optimizer, torch.float64)
    flat = [t for lst in inputs for t in lst]
    results = {}
    for name, fn in IMPLEMENTATIONS[optimizer].items():
        outs = [t for lst in fn(*inputs) for t in lst]
        cot = [torch.ones_like(o) for o in outs]
        results[name] = outs + list(torch.autograd.grad(outs, flat, cot))
    for name, got in results.items():
        for x, y in zip(got, results["fastmaml"]):
            torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12, msg=lambda m: f"{optimizer} {name}: {m}")


def _stats(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return {"median_us": statistics.median(samples) * 1e6, "p25_us": q[0] * 1e6, "p75_us": q[2] * 1e6}


def bench_case(set_name: str, optimizer: str, rounds: int, reps: int, clock: str, budget_s: float) -> list[dict]:
    inputs = make_inputs(set_name, optimizer)
    flat = [t for lst in inputs for t in lst]
    impls = IMPLEMENTATIONS[optimizer]

    def forward(fn: Callable[..., tuple[Lists, ...]]) -> Callable[[], object]:
        return lambda: fn(*inputs)

    def forward_backward(fn: Callable[..., tuple[Lists, ...]]) -> Callable[[], object]:
        def run() -> None:
            outs = [t for lst in fn(*inputs) for t in lst]
            torch.autograd.grad(outs, flat, [torch.ones_like(o) for o in outs])
        return run

    calls = {}
    for name, fn in impls.items():
        calls[f"{name}/fwd"], calls[f"{name}/fwd+bwd"] = forward(fn), forward_backward(fn)
    samples = interleaved({k: (lambda r, fn=fn: fn()) for k, fn in calls.items()}, rounds, reps=reps, order="rotate",
                          warmup_rounds=1, clocks=(clock,), budget_s=budget_s, min_rounds=5)[clock]
    rows = []
    for name in impls:
        ops = {}
        for mode in ("fwd", "fwd+bwd"):
            with OpCounter() as counter:
                calls[f"{name}/{mode}"]()
            ops[mode] = counter.count
        rows.append({"set": set_name, "optimizer": optimizer, "implementation": name,
                     "elements": sum(p.numel() for p in inputs[0]), "tensors": len(inputs[0]),
                     "fwd": _stats(samples[f"{name}/fwd"]), "fwd_bwd": _stats(samples[f"{name}/fwd+bwd"]),
                     "aten_ops_fwd": ops["fwd"], "aten_ops_fwd_bwd": ops["fwd+bwd"], "rounds": len(samples[f"{name}/fwd"])})
    base = rows[0]
    for r in rows:
        for key in ("fwd", "fwd_bwd"):
            r[f"{key}_x_fastmaml"] = r[key]["median_us"] / base[key]["median_us"]
    return rows


def render_markdown(path: Path = RESULTS) -> str:
    """The README table of the saved JSON."""
    data = json.loads(Path(path).read_text())
    m, v = data["machine"], data["versions"]
    lines = [
        (f"One differentiable inner step, float32 on {m['device']} ({m['cpu']}, {m['torch_threads']} thread(s), "
         f"{data['config']['clock']} clock), torch {v['torch']}, fastmaml {v['fastmaml_commit']}, {data['date'][:10]}; "
         f"median µs per step (p25–p75); × fastmaml: time / fastmaml's in the same run; ops: ATen ops "
         f"dispatched. `{data['config']['command']}`"),
        "",
        "| parameters | optimizer | implementation | fwd µs | × fastmaml | fwd+bwd µs | × fastmaml | ops fwd | ops fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"conv4": "Conv-4 (18 tensors, 112k)", "conv4x32": "Conv-4 × 32 tasks (18 tensors, 3.6M)"}
    for r in data["results"]:
        f, fb = r["fwd"], r["fwd_bwd"]
        lines.append(
            f"| {labels.get(r['set'], r['set'])} | {r['optimizer']} | {r['implementation']} | "
            f"{f['median_us']:.0f} ({f['p25_us']:.0f}–{f['p75_us']:.0f}) | {r['fwd_x_fastmaml']:.2f} | "
            f"{fb['median_us']:.0f} ({fb['p25_us']:.0f}–{fb['p75_us']:.0f}) | {r['fwd_bwd_x_fastmaml']:.2f} | "
            f"{r['aten_ops_fwd']} | {r['aten_ops_fwd_bwd']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--budget-s", type=float, default=20.0, help="seconds of timing per (set, optimizer)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu needs --threads 1")
    rows = []
    for optimizer in IMPLEMENTATIONS:
        check_agree(optimizer)
        for set_name in args.sets:
            elements = sum(torch.Size(s).numel() for s in conv4()) * SETS[set_name]
            reps = max(1, 200_000 // elements)  # calls per sample: samples of a few hundred µs at least
            rounds = 5 if args.quick else 200
            rows += bench_case(set_name, optimizer, rounds, reps, args.clock, 2.0 if args.quick else args.budget_s)
            print(f"{set_name:9s} {optimizer:9s} " + "  ".join(
                f"{r['implementation']}={r['fwd']['median_us']:.0f}/{r['fwd_bwd']['median_us']:.0f}us"
                for r in rows[-len(IMPLEMENTATIONS[optimizer]):]), flush=True)
    result = {
        "benchmark": "inner_optimizer",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(torch.get_num_threads()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "fastmaml_commit": _git_commit()},
        "config": {"dtype": "float32", "lr": LR, "betas": list(BETAS), "eps": EPS, "momentum": MOMENTUM, "step": STEP,
                   "clock": args.clock, "quick": args.quick, "budget_s": args.budget_s,
                   "command": " ".join(["python bench/bench_inner_optimizer.py",
                                        *(argv if argv is not None else sys.argv[1:])])},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
