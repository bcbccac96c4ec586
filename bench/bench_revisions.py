"""A/B of fastmaml's own meta-step between two source trees (e.g. before and after a refactor).

    git worktree add ../base <commit> && (cd ../base && FASTMAML_NO_CUDA=1 python setup.py build_ext --inplace)
    git worktree add ../cand HEAD && (cd ../cand && FASTMAML_NO_CUDA=1 python setup.py build_ext --inplace)
    python -m bench.bench_revisions --base ../base --candidate ../cand --configs sine-1-so,sine-5-so,conv4-1-so-t8

Build both trees the same way (here: CPU kernels only); the CPU code is the same in either build, but
an A/A run of one source tree built twice differed by up to 8% on Conv-4 in a single process pair.

Each tree runs in a worker process of its own (its fastmaml first on sys.path; the problem is
bench.bench_peers.problem from THIS tree, so both time the same model and data). The workers are
asked in alternation, ABAB..., for a sample of meta-steps each; a sample is the process CPU time of
`reps` consecutive steps on one torch thread (the CPU-time clock leaves out the time other processes
take on a shared machine). The rounds are spread over several pairs of fresh processes (`--pairs`,
alternating which starts first), because one pair alone can be a few per cent off either way for
reasons that are not the code: the second interval, of the median of the pairs' medians, is the
one to read. The result per config is the median of the per-round ratios
candidate/base (< 1: the candidate is faster) with a 95% interval of that median, and first the float64
meta-gradients of both trees on the same batch must agree. JSON to bench/results/revisions.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "revisions.json"

# The worker: reads one command per line, answers one JSON line.
WORKER = r"""
import json, sys, time
tree, root = sys.argv[1], sys.argv[2]
sys.path[:0] = [tree]
import fastmaml  # from `tree`
sys.path[0] = root  # bench from the caller's tree; fastmaml stays the one imported
import torch
from bench import peers as P
from bench.bench_peers import problem
torch.set_num_threads(1)
step = batches = model = None
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "setup":
        name, dtype = args[0], getattr(torch, args[1])
        model, cfg, batches = problem(name, dtype)
        step = P.load("fastmaml").make(model, cfg)
        step(batches[0])
        out = {"file": fastmaml.__file__, "mode": step.learner.batching_used,
               "grads": [p.grad.flatten().tolist() for p in model.parameters()]}
    elif cmd == "time":
        reps, r = int(args[0]), int(args[1])
        t = time.process_time()
        for i in range(reps):
            step(batches[(r + i) % len(batches)])
        out = {"cpu_s": time.process_time() - t}
    print(json.dumps(out), flush=True)
"""


class Worker:
    def __init__(self, tree: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tree), str(ROOT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, *cmd) -> dict:
        self.proc.stdin.write(" ".join(map(str, cmd)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {cmd} died (see its stderr above)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def max_rel_diff(a: list[list[float]], b: list[list[float]]) -> float:
    scale = max(abs(v) for g in b for v in g) or 1e-30
    return max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga, gb)) / scale


def time_pair(name: str, trees: dict[str, Path], rounds: int, sample_s: float, first: str) -> dict:
    """One pair of fresh worker processes (`first` started first): the float64 check, then `rounds`
    alternating samples of each."""
    workers = {k: Worker(trees[k]) for k in (first, *(k for k in trees if k != first))}
    try:
        check = {k: w.ask("setup", name, "float64") for k, w in workers.items()}
        agree = max_rel_diff(check["candidate"]["grads"], check["base"]["grads"])
        if agree > 1e-9:
            raise SystemExit(f"{name}: the two trees' float64 meta-gradients differ ({agree:.2e}): fix that first")
        setup = {k: w.ask("setup", name, "float32") for k, w in workers.items()}
        warm = max(w.ask("time", 1, 0)["cpu_s"] for w in workers.values())
        reps = max(1, round(sample_s / max(warm, 1e-6)))
        samples: dict[str, list[float]] = {k: [] for k in workers}
        for r in range(rounds):
            order = ("base", "candidate") if r % 2 == 0 else ("candidate", "base")
            for k in order:
                samples[k].append(workers[k].ask("time", reps, r)["cpu_s"] / reps)
    finally:
        for w in workers.values():
            w.close()
    return {"agree": agree, "modes": {k: s["mode"] for k, s in setup.items()}, "reps": reps, "samples": samples}


def run_config(name: str, trees: dict[str, Path], rounds: int, sample_s: float, pairs: int) -> dict:
    """`rounds` alternating samples in all, spread over `pairs` pairs of fresh processes: one process
    pair alone can be a few per cent off either way for reasons that are not the code (where its
    memory landed, what else ran), which the spread within the pair does not show."""
    runs = [time_pair(name, trees, max(1, rounds // pairs), sample_s, "base" if i % 2 == 0 else "candidate")
            for i in range(pairs)]
    samples = {k: [s for run in runs for s in run["samples"][k]] for k in trees}
    pair_medians = [statistics.median(c / b for c, b in zip(run["samples"]["candidate"], run["samples"]["base"]))
                    for run in runs]
    ratios = sorted(c / b for c, b in zip(samples["candidate"], samples["base"]))
    q = statistics.quantiles(ratios, n=4)
    return {"config": name, "rounds": len(ratios), "pairs": pairs, "steps_per_sample": runs[0]["reps"],
            "grad_rel_diff_f64": max(run["agree"] for run in runs), "modes": runs[0]["modes"],
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
            "ratio_median": statistics.median(ratios), "ratio_ci95": median_ci(ratios), "ratio_p25": q[0],
            "ratio_p75": q[2], "pair_medians": pair_medians, "pair_ci95": median_ci(pair_medians)}


def median_ci(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% interval of the median: the order statistics n/2 -+ 1.96 sqrt(n)/2."""
    v, half = sorted(values), 0.98 * math.sqrt(len(values))
    return v[max(0, math.floor(len(v) / 2 - half))], v[min(len(v) - 1, math.ceil(len(v) / 2 + half))]


def render_markdown(path: Path = DEFAULT_OUT) -> str:
    """The table of a saved run: per config, both trees' medians and candidate/base."""
    data = json.loads(Path(path).read_text())
    revs = data["revisions"]
    rows = [f"base {revs['base']} -> candidate {revs['candidate']}, {data['date']}; CPU ms per meta-step, one thread, "
            "medians of alternating samples", "",
            "| config | mode | base ms | candidate ms | candidate / base (95% CI of rounds) | 95% CI of pairs | pairs | rounds |",
            "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lo, hi = r["ratio_ci95"]
        rows.append(f"| {r['config']} | {r['modes']['candidate']} | {r['median_ms']['base']:.3f} | "
                    f"{r['median_ms']['candidate']:.3f} | {r['ratio_median']:.3f} ({lo:.3f}-{hi:.3f}) | "
                    f"{r['pair_ci95'][0]:.3f}-{r['pair_ci95'][1]:.3f} | {r['pairs']} | {r['rounds']} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the tree to compare against (built in place)")
    parser.add_argument("--candidate", type=Path, default=ROOT, help="default: this tree")
    parser.add_argument("--configs", default="sine-1-so,sine-5-so,conv4-1-so-t8")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=4, help="fresh worker-process pairs the rounds are spread over")
    parser.add_argument("--sample-s", type=float, default=0.1, help="CPU seconds of meta-steps per sample")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from bench.bench_peers import CONFIGS

    for tree in (args.base, args.candidate):
        if not (tree / "fastmaml" / "__init__.py").is_file():
            parser.error(f"{tree} is not a fastmaml source tree")
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    trees = {"base": args.base.resolve(), "candidate": args.candidate.resolve()}
    results = []
    for name in configs:
        res = run_config(name, trees, args.rounds, args.sample_s, args.pairs)
        results.append(res)
        print(f"{name:16s} base {res['median_ms']['base']:8.3f} ms  candidate {res['median_ms']['candidate']:8.3f} ms  "
              f"candidate/base {res['ratio_median']:.3f} (95% CI {res['ratio_ci95'][0]:.3f}-{res['ratio_ci95'][1]:.3f})  "
              f"({res['modes']['candidate']}, {res['rounds']} rounds x {res['steps_per_sample']}; pairs' medians 95% CI "
              f"{res['pair_ci95'][0]:.3f}-{res['pair_ci95'][1]:.3f})", flush=True)
    revs = {k: subprocess.run(["git", "-C", str(t), "describe", "--always", "--dirty"], capture_output=True,
                              text=True).stdout.strip() for k, t in trees.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"revisions": revs, "date": time.strftime("%Y-%m-%d %H:%M"),
                                    "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
