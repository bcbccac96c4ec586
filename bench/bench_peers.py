"""How fast is a MAML meta-step with fastmaml against what users would otherwise write?

The same meta-step (the meta-gradient of the mean query loss over a meta-batch, after k inner SGD
steps; outer optimizer step left out) with each implementation in bench/peers/: fastmaml, plain
torch.func written the obvious way (a task loop with autograd.grad, and vmap(grad)), higher,
learn2learn and TorchOpt. Same model, initial weights, data and seed for all.

Configs: the sine MLP 1-40-40-1 (meta-batch 25, 200 or 1000, K=10 support and 10 query points; 1 and
5 inner steps; first and second order) and Conv-4 Omniglot 5-way 1-shot (meta-batch 8 or 32, one
support and one query image per class, random 28x28 inputs; 1 and 5 inner steps, second order).
The compiled peers (torch.compile, JAX) pay their compilation in the first step, reported apart.

Per config, in a fresh process of its own:
  1. check: every implementation's meta-gradient in float64 on the first 4 tasks, against
     fastmaml's (max |a - b| over all entries / max |b|; above CHECK_TOL is reported as a
     disagreement), and again in float32 on the whole meta-batch (the warm-up step);
  2. time: rounds in which the implementations take turns (order alternating), so the drift of a
     shared machine hits all alike; in each round every implementation runs as many consecutive
     meta-steps as fill SAMPLE_S (at least one), as a training loop runs them back to back: a
     single short step right after another library's would pay for that library's cache
     footprint (measured: fastmaml's sine 5-step meta-step 5.05 ms right after higher's against
     4.15 ms in a run of ten); median and IQR per meta-step of the process's CPU time (one
     torch thread: the work done; wall time on a loaded shared machine adds ~4 ms whenever the
     scheduler preempts the process, which hits a 2 ms step in one round out of two; the wall
     median is kept too); ratio peer / fastmaml;
  3. count: ATen ops dispatched in one meta-step (a TorchDispatchMode counter; forward + backward);
and, in a fresh process per (config, implementation), peak memory: the rise of the process's
resident set (VmHWM after resetting it, minus VmRSS before) during one meta-step after a warm-up.

    python -m bench.bench_peers                       # all configs -> bench/results/peers.json + .png
    python -m bench.bench_peers --quick               # few rounds, smoke test (-> results/peers-quick.json)
    python -m bench.bench_peers --configs sine-1-so --peers fastmaml,higher
    python -m bench.bench_peers --table               # the README table from the saved JSON

Timings use one torch thread by default (--threads): on a shared 2-core machine two OpenMP threads
per process oversubscribe the cores and make every number ~10x slower and far noisier.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import json
import math
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

import torch

from bench import peers as P
from bench._common import OpCounter, cpu_name, interleaved, memory_kib, pyplot

DEFAULT_OUT = ROOT / "bench" / "results" / "peers.json"
CHECK_TOL = 1e-8  # float64
SAMPLE_S = 0.02  # seconds of consecutive meta-steps per timed sample (see step 2 above)
CHECK_TASKS = 4

CONFIGS = {
    "sine-1-so": {"model": "sine", "tasks": 25, "steps": 1, "first_order": False},
    "sine-1-fo": {"model": "sine", "tasks": 25, "steps": 1, "first_order": True},
    "sine-5-so": {"model": "sine", "tasks": 25, "steps": 5, "first_order": False},
    "sine-5-fo": {"model": "sine", "tasks": 25, "steps": 5, "first_order": True},
    "sine-1-so-t200": {"model": "sine", "tasks": 200, "steps": 1, "first_order": False},
    "sine-5-so-t200": {"model": "sine", "tasks": 200, "steps": 5, "first_order": False},
    "sine-1-so-t1000": {"model": "sine", "tasks": 1000, "steps": 1, "first_order": False},
    "sine-5-so-t1000": {"model": "sine", "tasks": 1000, "steps": 5, "first_order": False},
    "conv4-1-so-t8": {"model": "conv4", "tasks": 8, "steps": 1, "first_order": False},
    "conv4-5-so-t8": {"model": "conv4", "tasks": 8, "steps": 5, "first_order": False},
    "conv4-1-so": {"model": "conv4", "tasks": 32, "steps": 1, "first_order": False},
    "conv4-5-so": {"model": "conv4", "tasks": 32, "steps": 5, "first_order": False},
}
LABELS = {
    "sine": "sine MLP 1-40-40-1, K=10",
    "conv4": "Conv-4 Omniglot 5-way 1-shot",
}


# ---- the problem ------------------------------------------------------------------------------

def problem(name: str, dtype=torch.float32):
    """(model, step config, batches) of config `name`; the same for every implementation."""
    spec = CONFIGS[name]
    torch.manual_seed(0)
    if spec["model"] == "sine":
        from fastmaml.tasks.sine import SineTasks, sine_mlp

        model = sine_mlp()
        tasks = SineTasks(k_shot=10, q_query=10, seed=0, dtype=dtype)
        batches = [tasks.sample(spec["tasks"]).tensors() for _ in range(4)]
        cfg = P.StepConfig(spec["steps"], spec["first_order"], 0.01, "mse")
    else:
        from fastmaml.models import conv4

        model = conv4(n_way=5)
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(2):
            x = torch.rand(spec["tasks"], 10, 1, 28, 28, generator=g, dtype=dtype)
            y = torch.arange(5).repeat(spec["tasks"], 2)
            batches.append((x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]))
        cfg = P.StepConfig(spec["steps"], spec["first_order"], 0.4, "ce")
    return model.to(dtype), cfg, batches


def available_peers(names) -> tuple[list[str], dict[str, str]]:
    ok, missing = [], {}
    for name in names:
        why = P.load(name).available()
        if why is None:
            ok.append(name)
        else:
            missing[name] = why
    return ok, missing


def _grads(model):
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def max_rel_diff(a, b) -> float:
    """max |a - b| over all entries of all tensors, relative to the largest |b| (per-tensor scales
    would blow up on the conv biases under batch norm, whose meta-gradient is ~0)."""
    scale = max(y.abs().max().item() for y in b)
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(scale, 1e-30)


# ---- one config, in a worker process --------------------------------------------------------

def run_config(name: str, names: list[str], rounds: int, min_rounds: int, budget_s: float) -> dict:
    out = {"config": name, **CONFIGS[name], "label": f"{LABELS[CONFIGS[name]['model']]}, {CONFIGS[name]['tasks']} tasks"}
    # 1. the meta-gradients agree (float64, first tasks)
    model64, cfg, batches64 = problem(name, torch.float64)
    small = tuple(t[:CHECK_TASKS] for t in batches64[0])
    check, ref = {}, None
    for peer in names:
        m = copy.deepcopy(model64)
        P.load(peer).make(m, cfg)(small)
        g = _grads(m)
        ref = g if ref is None else ref
        check[peer] = max_rel_diff(g, ref)
    del model64, batches64
    # 2. timing, float32; the warm-up step's meta-gradient is checked too
    model, cfg, batches = problem(name, torch.float32)
    models = {peer: copy.deepcopy(model) for peer in names}
    steps = {peer: P.load(peer).make(models[peer], cfg) for peer in names}
    check32, ref, first = {}, None, {}
    for peer in names:  # the first float32 step pays any compilation (torch.compile, jax.jit)
        w0 = time.perf_counter()
        steps[peer](batches[0])
        first[peer] = time.perf_counter() - w0
        g = _grads(models[peer])
        ref = g if ref is None else ref
        check32[peer] = max_rel_diff(g, ref)
    fast = steps["fastmaml"].learner.batching_used if "fastmaml" in steps else None
    reps = {}
    for peer in names:  # a second, warm step sets how many make a sample
        c0 = time.process_time()
        steps[peer](batches[1 % len(batches)])
        reps[peer] = max(1, math.ceil(SAMPLE_S / max(time.process_time() - c0, 1e-6)))
    jobs = {peer: (lambda r, step=steps[peer]: step(batches[r % len(batches)])) for peer in names}
    samples = interleaved(jobs, rounds, reps=reps, clocks=("cpu", "wall"), min_rounds=min_rounds, budget_s=budget_s)
    times, walls = samples["cpu"], samples["wall"]
    # 3. ops per meta-step (not for compiled steps: torch.compile refuses to run under the counting
    # dispatch mode, and JAX's ops are not ATen's)
    ops = {}
    for peer in names:
        try:
            with OpCounter() as counter:
                steps[peer](batches[0])
            ops[peer] = counter.count
        except Exception:  # noqa: BLE001 - the step does not run under a dispatch mode
            ops[peer] = None
    results = {}
    for peer in names:
        ts = sorted(1e3 * t for t in times[peer])
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        mod = P.load(peer)
        results[peer] = {"name": mod.NAME, "version": mod.version(), "median_ms": statistics.median(ts),
                         "p25_ms": q[0], "p75_ms": q[2], "wall_median_ms": 1e3 * statistics.median(walls[peer]),
                         "first_step_s": first[peer],
                         "rounds": len(ts), "steps_per_sample": reps[peer], "aten_ops": ops[peer],
                         "grad_rel_diff_f64": check[peer], "grad_rel_diff_f32": check32[peer],
                         "agrees": check[peer] <= CHECK_TOL}
    if "fastmaml" in results:
        base = results["fastmaml"]["median_ms"]
        for res in results.values():
            res["ratio_to_fastmaml"] = res["median_ms"] / base
    out.update(results=results, fastmaml_batching=fast, threads=torch.get_num_threads(),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(), commit=_commit())
    return out


def _commit() -> str | None:
    """The git commit of the code measured (+ "-dirty" if fastmaml/ or bench/ has local changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fastmaml", "bench"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def run_memory(name: str, peer: str) -> dict:
    """Peak resident-set rise (MiB) during one meta-step after a warm-up step."""
    model, cfg, batches = problem(name, torch.float32)
    step = P.load(peer).make(model, cfg)
    step(batches[0])
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = memory_kib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step(batches[1])
    peak = memory_kib()["VmHWM"]
    return {"config": name, "peer": peer, "peak_rss_rise_mib": (peak - before) / 1024}


# ---- the driver -------------------------------------------------------------------------------

def _worker(args: list[str], threads: int, timeout: float, memory: bool = False, cache: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    # The Inductor cache of a config (`cache`): empty for its timing worker, so that the first step
    # pays the whole compilation (python -m bench.bench_compile_cache measures what a warm on-disk
    # cache saves); its memory workers then reuse it instead of compiling again.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", cache or tempfile.mkdtemp(prefix="bench-peers-inductor-"))
    env.setdefault("FASTMAML_AOTI_CACHE", os.path.join(env["TORCHINDUCTOR_CACHE_DIR"], "fastmaml-aoti"))  # the same for backend="aoti"
    if memory:
        # Large blocks straight from and back to the OS, so the resident set follows the live
        # tensors (only for the memory workers: it slows every allocation of 64 KiB and more).
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-m", "bench.bench_peers", "--threads", str(threads), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(threads: int) -> dict:
    cpu = cpu_name()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "device": "cpu", "load_avg_1min_at_start": load}


# peers that are fastmaml or torch itself, whose versions are the header's already
TORCH_PEERS = ("fastmaml", "fastmaml_compiled", "fastmaml_aoti", "torchfunc_loop", "torchfunc_vmap", "torch_compile",
               "torch_compile_autotune")


def versions(names) -> dict:
    import fastmaml
    from fastmaml import ops

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "fastmaml": getattr(fastmaml, "__version__", "dev"),
           "fastmaml_backend": ops.resolve_backend(torch.device("cpu"))}
    for name in names:
        mod = P.load(name)
        if mod.available() is None and name not in TORCH_PEERS:
            out[name] = mod.version()
    return out


def run(configs, names, rounds, min_rounds, budget_s, threads, memory=True) -> dict:
    ok, missing = available_peers(names)
    if "fastmaml" not in ok:
        ok.insert(0, "fastmaml")
    for peer, why in missing.items():
        print(f"bench_peers: {peer} is left out: {why}", flush=True)
    data = {"benchmark": "peers", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": machine(threads), "versions": versions(ok), "peers_missing": missing,
            "check_tolerance_f64": CHECK_TOL, "check_tasks": CHECK_TASKS,
            "command": "python -m bench.bench_peers " + " ".join(sys.argv[1:]), "configs": []}
    for name in configs:
        t0 = time.perf_counter()
        cache = tempfile.mkdtemp(prefix="bench-peers-inductor-")
        res = _worker(["--worker", name, "--peers", ",".join(ok), "--rounds", str(rounds),
                       "--min-rounds", str(min_rounds), "--budget", str(budget_s)], threads, 3600, cache=cache)
        res["peers_missing"] = missing
        if memory:
            for peer in ok:
                try:
                    mem = _worker(["--memory", name, "--peers", peer], threads, 1800, memory=True, cache=cache)
                    res["results"][peer]["peak_rss_rise_mib"] = mem["peak_rss_rise_mib"]
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    print(f"bench_peers: memory of {peer} on {name} not measured: {error}", flush=True)
        data["configs"].append(res)
        line = ", ".join(f"{r['name']} {r['median_ms']:.1f} ms ({r.get('ratio_to_fastmaml', 0):.2f}x)"
                         f"{'' if r['agrees'] else ' [DISAGREES]'}" for r in res["results"].values())
        print(f"{name:11s} [{time.perf_counter() - t0:.0f}s] {line}", flush=True)
    return data


def chart(data: dict, path: Path) -> Path | None:
    """A bar chart of the ratios to fastmaml per config (log scale)."""
    if pyplot() is None:
        return None
    from fastmaml.train import style

    configs = data["configs"]
    peers = [p for p in P.ORDER if any(p in c["results"] for c in configs)]
    fig, (ax,) = style.figure()
    fig.set_size_inches(max(7, 1.6 * len(configs)), 4.2)
    width = 0.8 / len(peers)
    for i, peer in enumerate(peers):
        xs, ys = [], []
        for j, c in enumerate(configs):
            r = c["results"].get(peer)
            if r:
                xs.append(j + (i - (len(peers) - 1) / 2) * width)
                ys.append(r["median_ms"])
        name = next(c["results"][peer]["name"] for c in configs if peer in c["results"])
        ax.bar(xs, ys, width, label=name)
    style.log_axis(ax, "y")
    ax.set_xticks(range(len(configs)), [c["config"] for c in configs])
    ax.set_xlabel("configuration")
    ax.set_ylabel("CPU time per meta-step (ms, median, log scale)")
    m = data["machine"]
    ax.set_title(f"MAML meta-step, float32, {m['torch_threads']} thread(s) on {m['cpu'][:40]}")
    ax.legend(ncol=3, frameon=False, fontsize=style.RC["legend.fontsize"])
    return style.save(fig, path)


def render_markdown(data: dict | str | Path = DEFAULT_OUT) -> str:
    """The README table of bench/bench_peers.py: per config and implementation, the median time per
    meta-step (IQR), the ratio to fastmaml, ATen ops per step, peak memory and the gradient check."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    m, v = data["machine"], data["versions"]
    lines = [
        "| config | implementation | CPU ms / meta-step (p25–p75) | wall ms | × fastmaml | first step s | ATen ops | peak MiB | grad check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in data["configs"]:
        label = f"{c['config']} ({c['steps']} step{'s' if c['steps'] > 1 else ''}, " \
                f"{'first' if c['first_order'] else 'second'} order)"
        for r in c["results"].values():
            mem = r.get("peak_rss_rise_mib")
            first = "-" if r.get("first_step_s") is None else f"{r['first_step_s']:.2f}"
            check = "ok" if r["agrees"] else f"**differs** ({r['grad_rel_diff_f64']:.1e})"
            name = r["name"] + (f" ({c['fastmaml_batching']})" if r["name"] == "fastmaml" and c.get("fastmaml_batching") else "")
            lines.append(
                f"| {label} | {name} | {r['median_ms']:.1f} ({r['p25_ms']:.1f}–{r['p75_ms']:.1f}) "
                f"| {r.get('wall_median_ms', float('nan')):.1f} "
                f"| {r.get('ratio_to_fastmaml', float('nan')):.2f} "
                f"| {first} | {'-' if r['aten_ops'] is None else r['aten_ops']} "
                f"| {'-' if mem is None else f'{mem:.1f}'} | {check} |"
            )
            label = ""
    peers = "".join(f", {k} {v[k]}" for k in ("higher", "learn2learn", "torchopt", "jax") if k in v)
    missing = "; missing: " + ", ".join(data["peers_missing"]) if data.get("peers_missing") else ""
    caption = (f"Float32 on {m['cpu']} ({m['torch_threads']} torch thread(s)), torch {v['torch']}{peers}{missing}, "
              f"{data['date'][:10]} (each config's own date and commit are in the JSON). CPU ms: median process CPU time per meta-step, over samples of consecutive meta-steps filling 20 ms (one thread; wall time on this shared "
              f"machine adds scheduler preemptions). × fastmaml: peer CPU median / fastmaml CPU median in the same run. "
              f"First step s: wall seconds of the first float32 meta-step, which pays any compilation "
              f"(torch.compile, jax.jit; a fresh Inductor cache per config). "
              f"Grad check: meta-gradient vs fastmaml in float64 on {data['check_tasks']} tasks, tolerance "
              f"{data['check_tolerance_f64']:.0e} (relative to the largest entry). Peak MiB: rise of the resident set "
              f"during one meta-step. Made by `{data.get('command', 'python -m bench.bench_peers').strip()}`.")
    lines += ["", caption]
    return "\n".join(lines)


# Issue 7's targets: (configs, peers (the fastest of them counts), the least ratio peer / fastmaml).
TARGETS = [
    (("sine-1-so", "sine-5-so"), ("higher",), 30.0),
    (("sine-1-so", "sine-5-so"), ("learn2learn",), 10.0),
    (("sine-1-so", "sine-5-so"), ("torchfunc_vmap",), 1.5),
    (("conv4-1-so", "conv4-5-so"), ("higher",), 1.1),
    (("conv4-1-so", "conv4-5-so"), ("torchfunc_loop", "torchfunc_vmap"), 1.0),
]


def targets_markdown(data) -> str:
    """Issue 7's targets against the measured ratios of `data`."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    by = {c["config"]: c for c in data["configs"]}
    lines = ["| config | against | target | measured | |", "|---|---|---|---|---|"]
    for configs, peers, least in TARGETS:
        for name in configs:
            res = by.get(name, {}).get("results", {})
            have = [res[p] for p in peers if p in res]
            if not have:
                continue
            best = min(have, key=lambda r: r["median_ms"])
            against = best["name"] if len(peers) == 1 else f"best of {', '.join(r['name'] for r in have)} ({best['name']})"
            ratio = best["ratio_to_fastmaml"]
            lines.append(f"| {name} | {against} | ≥ {least:g}× | {ratio:.2f}× | {'met' if ratio >= least else '**missed**'} |")
    return "\n".join(lines)


README = ROOT / "bench" / "README.md"
MARK = ("<!-- peers-table: made by python -m bench.bench_peers from results/peers.json -->", "<!-- /peers-table -->")
TMARK = ("<!-- targets-table: made by python -m bench.bench_peers from results/peers.json -->", "<!-- /targets-table -->")


def update_readme(data, path: Path = README) -> bool:
    """Replace the table between the markers of bench/README.md with the one of `data`."""
    if not path.exists():
        return False
    text = path.read_text()
    if MARK[0] not in text or MARK[1] not in text:
        return False
    head, rest = text.split(MARK[0], 1)
    _, tail = rest.split(MARK[1], 1)
    text = f"{head}{MARK[0]}\n{render_markdown(data)}\n{MARK[1]}{tail}"
    if TMARK[0] in text and TMARK[1] in text:
        head, rest = text.split(TMARK[0], 1)
        _, tail = rest.split(TMARK[1], 1)
        text = f"{head}{TMARK[0]}\n{targets_markdown(data)}\n{TMARK[1]}{tail}"
    path.write_text(text)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=None, help="comma-separated, of " + ", ".join(CONFIGS)
                        + " (default: all; with --quick: sine-1-so,conv4-1-so)")
    parser.add_argument("--peers", default=",".join(P.ORDER))
    parser.add_argument("--rounds", type=int, default=30, help="at most this many timed rounds per config")
    parser.add_argument("--min-rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of timing per config after min-rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 rounds, no memory: a smoke test")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--merge", action="store_true",
                        help="keep the other configs of --out (each config records its own date and commit)")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    parser.add_argument("--readme", action="store_true", help="rewrite bench/README.md's table from --out and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.peers.split(",") if n]
    if args.table:
        print(render_markdown(args.out))
        return 0
    if args.readme:
        return 0 if update_readme(json.loads(args.out.read_text())) else 1
    if args.worker:
        print(json.dumps(run_config(args.worker, names, args.rounds, args.min_rounds, args.budget)))
        return 0
    if args.memory:
        print(json.dumps(run_memory(args.memory, names[0])))
        return 0
    configs = [c for c in (args.configs or ("sine-1-so,conv4-1-so" if args.quick else ",".join(CONFIGS))).split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    if args.quick:
        args.rounds, args.min_rounds, args.budget, args.no_memory = 3, 3, 0.0, True
        if args.out == DEFAULT_OUT:  # a smoke test does not replace the real results
            args.out = DEFAULT_OUT.with_name("peers-quick.json")
    data = run(configs, names, args.rounds, args.min_rounds, args.budget, args.threads, not args.no_memory)
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        fresh = {c["config"]: c for c in data["configs"]}
        kept = {c["config"]: c for c in old.get("configs", []) if c["config"] not in fresh}
        data["configs"] = [({**kept, **fresh})[c] for c in CONFIGS if c in kept or c in fresh]
        # the kept configs' peers keep their versions; a peer is missing only where no config has it
        # (each fresh config records the peers it lacked)
        data["versions"] = {**old.get("versions", {}), **data["versions"]}
        data["peers_missing"] = {k: v for k, v in data["peers_missing"].items()
                                 if not any(k in c["results"] for c in data["configs"])}
        configs = [c["config"] for c in data["configs"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    png = chart(data, args.out.with_suffix(".png"))
    print(f"wrote {args.out}" + (f" and {png}" if png else ""))
    if args.out == DEFAULT_OUT and set(configs) == set(CONFIGS) and not args.quick and update_readme(data):
        print(f"updated the table of {README}")
    print(render_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
