"""How does the memory of a meta-step grow with the number of inner steps K?

One meta-step (meta_loss + backward, the meta-gradient of the mean query loss; outer optimizer step
left out) on Conv-4 (4 x [conv3x3 64, BatchNorm, ReLU, maxpool] + linear, fastmaml.models.conv4)
with Omniglot-size inputs (1x28x28, random pixels: memory and time do not depend on the values),
5-way 1-shot with 5 query images per class, meta-batch 8, float32, for K in {1, 5, 10, 20} and:

    maml-unrolled   MAML, second order by autograd through the inner steps (keeps every step's graph)
    maml-hvp        MAML, second_order="hvp": the same meta-gradient by a reverse recursion of
                    batched Hessian-vector products (keeps the K parameter iterates)
    imaml           IMAML (lam=1, K steps of the fused SGD, 5 CG steps on (I + H/lam) x = g)
    fomaml          first-order MAML

Each point runs in a fresh process (so one point's allocations cannot serve another's) with one
torch thread; the process does a warm-up meta-step, then `reps` timed meta-steps. Reported:
  max_rss_mib       the process's peak resident set (ru_maxrss of the child from os.wait4, i.e.
                    getrusage of that child alone): includes torch itself (~300 MiB)
  baseline_mib      its resident set once the model and data are built, before the first step
  step_rise_mib     the rise of the resident set during one meta-step after the warm-up (VmHWM
                    reset by /proc/self/clear_refs, minus VmRSS before): the step's own memory
  wall_ms, cpu_ms   median (p25-p75) wall and CPU time per meta-step (the table and chart use CPU
                    time: on a loaded shared machine wall time mostly measures the other processes)
Large blocks go straight to and back from the OS (MALLOC_MMAP_THRESHOLD_), so the resident set
follows the live tensors.

    python -m bench.bench_memory                  # all points -> bench/results/memory.json + .png
    python -m bench.bench_memory --quick          # K in {1, 2}, one rep: smoke test
    python -m bench.bench_memory --table          # the README table from the saved JSON
    python -m bench.bench_memory --chart          # redraw the PNG from the saved JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import cpu_name, memory_kib, pyplot

DEFAULT_OUT = ROOT / "bench" / "results" / "memory.json"
METHODS = ("maml-unrolled", "maml-hvp", "imaml", "fomaml")
LABELS = {
    "maml-unrolled": "MAML, unrolled autograd",
    "maml-hvp": 'MAML, second_order="hvp"',
    "imaml": "iMAML (CG 5 steps)",
    "fomaml": "FOMAML",
}
STEPS = (1, 5, 10, 20)
N_WAY, K_SHOT, Q_QUERY, META_BATCH = 5, 1, 5, 8
TARGET_RATIO = 1.3  # hvp-mode MAML and iMAML: peak at K=20 <= 1.3 x peak at K=1


# ---- one point (the worker) --------------------------------------------------------------------

def make_learner(method: str, steps: int):
    import torch

    from fastmaml import FOMAML, MAML
    from fastmaml.algorithms.imaml import IMAML
    from fastmaml.models import conv4

    torch.manual_seed(0)
    model = conv4(N_WAY)
    if method == "maml-unrolled":
        return MAML(model, inner_lr=0.4, inner_steps=steps, batching="vmap")
    if method == "maml-hvp":
        return MAML(model, inner_lr=0.4, inner_steps=steps, batching="vmap", second_order="hvp")
    if method == "fomaml":
        return FOMAML(model, inner_lr=0.4, inner_steps=steps, batching="vmap")
    if method == "imaml":
        return IMAML(model, lam=1.0, inner_lr=0.1, inner_steps=steps, cg_steps=5, cg_tol=1e-3, batching="vmap",
                     on_cg_fail="ignore")
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def batch(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(META_BATCH, N_WAY * K_SHOT, 1, 28, 28, generator=g)
    qx = torch.rand(META_BATCH, N_WAY * Q_QUERY, 1, 28, 28, generator=g)
    sy = torch.arange(N_WAY).repeat_interleave(K_SHOT).expand(META_BATCH, -1).contiguous()
    qy = torch.arange(N_WAY).repeat_interleave(Q_QUERY).expand(META_BATCH, -1).contiguous()
    return sx, sy, qx, qy


def worker(method: str, steps: int, reps: int) -> dict:
    import ctypes

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    learner = make_learner(method, steps)
    data = [batch(0), batch(1)]

    def meta_step(b):
        learner.zero_grad(set_to_none=True)
        loss = learner.meta_loss(*b, F.cross_entropy)
        loss.backward()
        return float(loss)

    baseline = memory_kib()["VmRSS"]
    meta_step(data[0])  # warm-up (first-call costs of torch.func, kernel selection, ...)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = memory_kib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    wall, cpu = [], []
    for i in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        loss = meta_step(data[i % 2])
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        if i == 0:
            rise = (memory_kib()["VmHWM"] - before) / 1024
    out = {"method": method, "steps": steps, "reps": reps, "loss": loss,
           "baseline_mib": baseline / 1024, "step_rise_mib": rise,
           "wall_ms": _stats(wall), "cpu_ms": _stats(cpu)}
    report = getattr(learner, "last_cg_report", None)
    if report is not None:
        out["cg"] = {"iterations": report.iterations.tolist(),
                     "relative_residual": [round(v, 6) for v in report.relative_residual.tolist()],
                     "converged": report.converged.tolist()}
    if method == "maml-hvp":
        out["hvp_method"] = learner.hvp_method
    return out


def _stats(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "p25": q[0], "p75": q[2], "all": ms}


# ---- the driver --------------------------------------------------------------------------------

def run_point(method: str, steps: int, reps: int, timeout: float) -> dict:
    """One point in a fresh process; its max RSS from os.wait4 (that child's rusage alone)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.bench_memory", "--worker", method, str(steps),
                                 "--reps", str(reps)], cwd=ROOT, env=env, stdout=out, stderr=err)
        start = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"point {method} K={steps} failed (exit {proc.returncode}):\n{err.read()[-3000:]}")
        res = json.loads(out.read().strip().splitlines()[-1])
    res["max_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return res


def machine() -> dict:
    cpu = cpu_name()
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": 1,
            "device": "cpu", "load_avg_1min_at_start": os.getloadavg()[0]}


def versions() -> dict:
    import torch

    import fastmaml
    from fastmaml import ops
    from fastmaml.ops import cg as cg_ops

    return {"python": platform.python_version(), "torch": torch.__version__,
            "fastmaml": getattr(fastmaml, "__version__", "dev"),
            "update_backend": ops.resolve_backend(torch.device("cpu")),
            "cg_backend": cg_ops.resolve_backend(torch.device("cpu"))}


def targets(points: list[dict]) -> dict:
    """Peak at max K over peak at K=1 per method, for both memory measures, and the verdicts."""
    by = {(p["method"], p["steps"]): p for p in points}
    ks = sorted({p["steps"] for p in points})
    lo, hi = ks[0], ks[-1]
    out = {}
    for method in METHODS:
        if (method, lo) not in by or (method, hi) not in by:
            continue
        a, b = by[(method, lo)], by[(method, hi)]
        out[method] = {"k_low": lo, "k_high": hi,
                       "max_rss_ratio": b["max_rss_mib"] / a["max_rss_mib"],
                       "step_rise_ratio": b["step_rise_mib"] / max(a["step_rise_mib"], 1e-9)}
    for method in ("maml-hvp", "imaml"):
        if method in out:
            out[method]["meets_target"] = out[method]["max_rss_ratio"] <= TARGET_RATIO
    if "maml-unrolled" in out:
        out["maml-unrolled"]["grows_with_k"] = out["maml-unrolled"]["step_rise_ratio"] > TARGET_RATIO
    return out


def run(methods, steps, reps: int, timeout: float) -> dict:
    data = {"benchmark": "memory", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": machine(), "versions": versions(),
            "config": {"model": "conv4", "n_way": N_WAY, "k_shot": K_SHOT, "q_query": Q_QUERY,
                       "meta_batch": META_BATCH, "dtype": "float32", "input": "1x28x28", "reps": reps,
                       "command": "python -m bench.bench_memory " + " ".join(sys.argv[1:])},
            "points": []}
    for k in steps:
        for method in methods:
            t0 = time.perf_counter()
            res = run_point(method, k, reps, timeout)
            data["points"].append(res)
            print(f"{method:14s} K={k:2d}  max RSS {res['max_rss_mib']:7.0f} MiB  step rise "
                  f"{res['step_rise_mib']:7.0f} MiB  {res['cpu_ms']['median']:8.0f} CPU ms/step  "
                  f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    data["targets"] = targets(data["points"])
    return data


def chart(data: dict, path: Path) -> Path | None:
    if pyplot() is None:
        return None
    from fastmaml.train import style

    fig, axes = style.figure(ncols=3)
    for method in METHODS:
        pts = sorted((p for p in data["points"] if p["method"] == method), key=lambda p: p["steps"])
        if not pts:
            continue
        ks = [p["steps"] for p in pts]
        axes[0].plot(ks, [p["max_rss_mib"] for p in pts], "o-", label=LABELS[method])
        axes[1].plot(ks, [p["step_rise_mib"] for p in pts], "o-", label=LABELS[method])
        axes[2].plot(ks, [p["cpu_ms"]["median"] for p in pts], "o-", label=LABELS[method])
    for ax, label in zip(axes, ("process peak RSS (MiB)", "RSS rise in one meta-step (MiB)",
                                "CPU time per meta-step (ms, one thread)")):
        ax.set_xlabel("inner steps K")
        ax.set_ylabel(label)
        style.iteration_axis(ax)
    style.log_axis(axes[2], "y")
    style.legend_below(fig, axes[0])
    c = data["config"]
    style.title(fig, f"Conv-4, {c['n_way']}-way {c['k_shot']}-shot, meta-batch {c['meta_batch']}, {c['dtype']}, "
                     f"1 CPU thread ({data['machine']['cpu']})")
    return style.save(fig, path)


def render_markdown(data: dict | str | Path = DEFAULT_OUT) -> str:
    """The README table from the saved JSON."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    m, v, c = data["machine"], data["versions"], data["config"]
    ks = sorted({p["steps"] for p in data["points"]})
    by = {(p["method"], p["steps"]): p for p in data["points"]}
    lines = [
        (f"Memory and time of one meta-step against inner steps K: Conv-4, {c['n_way']}-way {c['k_shot']}-shot, "
         f"{c['q_query']} query images per class, meta-batch {c['meta_batch']}, {c['dtype']}, one CPU thread "
         f"({m['cpu']}), torch {v['torch']}, {data['date'][:10]}. Per cell: process peak RSS / RSS rise during "
         f"one meta-step (MiB) / median CPU ms per meta-step (the process's CPU time: wall time on the "
         f"shared machine, load {m['load_avg_1min_at_start']:.1f} at the start, adds preemptions; both are in the "
         f"JSON). A fresh process per cell. "
         f"`{c['command'].strip()}`"),
        "",
        "| method | " + " | ".join(f"K={k}" for k in ks) + f" | peak K={ks[-1]}/K={ks[0]} |",
        "|---|" + "---|" * (len(ks) + 1),
    ]
    tg = data.get("targets", {})
    for method in METHODS:
        if not any((method, k) in by for k in ks):
            continue
        cells = []
        for k in ks:
            p = by.get((method, k))
            cells.append("–" if p is None else
                         f"{p['max_rss_mib']:.0f} / {p['step_rise_mib']:.0f} / {p['cpu_ms']['median']:.0f}")
        t = tg.get(method, {})
        ratio = (f"{t['max_rss_ratio']:.2f}× ({t['step_rise_ratio']:.2f}× rise)" if t else "–")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", default=",".join(map(str, STEPS)))
    ap.add_argument("--reps", type=int, default=3, help="timed meta-steps per point")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    ap.add_argument("--quick", action="store_true", help="K in {1, 2}, one rep, no files written")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    ap.add_argument("--chart", action="store_true", help="redraw the PNG of --out and exit")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.reps)))
        return 0
    if args.table:
        print(render_markdown(args.out))
        return 0
    if args.chart:
        print(chart(json.loads(args.out.read_text()), args.out.with_suffix(".png")))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; choose from {METHODS}")
    steps = [1, 2] if args.quick else [int(k) for k in args.steps.split(",")]
    data = run(methods, steps, 1 if args.quick else args.reps, args.timeout)
    if args.quick:
        print(render_markdown(data))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    png = chart(data, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {png}" if png else ""))
    print(render_markdown(data))
    print(json.dumps(data["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
