"""How much faster does code written against learn2learn, higher or TorchOpt run when it switches
one import to fastmaml.compat?

Each peer's own example loop for sine-wave MAML (the MAML paper's 1-40-40-1 ReLU regressor, 25
tasks a meta-batch, 10 support and 10 query points, Adam on the meta-parameters) is run once with
the peer and once with the fastmaml face, unchanged otherwise:

  * learn2learn (examples/maml_sine): maml.clone(); learner.adapt(loss) x steps; sum of query
    losses backward; opt.step()
  * higher (examples/maml-omniglot): per task, innerloop_ctx(net, SGD, copy_initial_weights=False),
    diffopt.step(loss) x steps, query loss backward; opt.step()
  * TorchOpt (examples/few-shot/maml_omniglot): MetaSGD(net).step(loss) x steps, query loss
    backward, recover_state_dict(net/inner_opt); opt.step()

Timings are per meta-iteration, medians over rounds in which the providers take turns (so drift
on a shared machine hits all alike), compared as ratios within this one run. Before timing, the
meta-gradients of peer and face are compared (float32; reported as max_rel_diff).

    python bench/bench_compat.py                  # writes bench/results/compat.json
    python bench/bench_compat.py --quick          # fewer rounds, for a smoke test
    python bench/bench_compat.py --table          # print the markdown table of the saved JSON

The peers: bench/install_peers.sh. A peer that does not import is left out (and listed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F

import fastmaml
from bench._common import cpu_name, interleaved
from bench.peers import real as _peers
from fastmaml import ops
from fastmaml.compat import (
    higher as face_higher,
    learn2learn as face_l2l,
    torchopt as face_torchopt,
)
from fastmaml.tasks.sine import SineTasks, sine_mlp

DEFAULT_OUT = ROOT / "bench" / "results" / "compat.json"
TASKS, K_SHOT, Q_QUERY = 25, 10, 10
INNER_LR, META_LR = 0.01, 1e-3
LOOPS = ("learn2learn", "higher", "torchopt")


# ---- the three example loops, written once against a module object `lib` --------------------

def learn2learn_loop(lib, steps: int):
    """learn2learn's maml_sine example loop, one meta-iteration per call of the returned function."""
    def make(model):
        maml = lib.MAML(model, lr=INNER_LR, first_order=False)
        opt = torch.optim.Adam(maml.parameters(), META_LR)

        def iteration(batch):
            xs, ys, xq, yq = batch
            opt.zero_grad()
            total = 0.0
            for t in range(xs.shape[0]):
                learner = maml.clone()
                for _ in range(steps):
                    learner.adapt(F.mse_loss(learner(xs[t]), ys[t]))
                total = total + F.mse_loss(learner(xq[t]), yq[t])
            (total / xs.shape[0]).backward()
            opt.step()
        return iteration
    return make


def higher_loop(lib, steps: int):
    """higher's maml-omniglot example loop."""
    def make(model):
        inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
        opt = torch.optim.Adam(model.parameters(), META_LR)

        def iteration(batch):
            xs, ys, xq, yq = batch
            opt.zero_grad()
            for t in range(xs.shape[0]):
                with lib.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                    for _ in range(steps):
                        diffopt.step(F.mse_loss(fmodel(xs[t]), ys[t]))
                    (F.mse_loss(fmodel(xq[t]), yq[t]) / xs.shape[0]).backward()
            opt.step()
        return iteration
    return make


def torchopt_loop(lib, steps: int):
    """TorchOpt's few-shot maml_omniglot example loop."""
    def make(model):
        inner_opt = lib.MetaSGD(model, lr=INNER_LR)
        opt = torch.optim.Adam(model.parameters(), META_LR)

        def iteration(batch):
            xs, ys, xq, yq = batch
            opt.zero_grad()
            net_state = lib.extract_state_dict(model, by="reference", detach_buffers=True)
            opt_state = lib.extract_state_dict(inner_opt, by="reference")
            for t in range(xs.shape[0]):
                for _ in range(steps):
                    inner_opt.step(F.mse_loss(model(xs[t]), ys[t]))
                (F.mse_loss(model(xq[t]), yq[t]) / xs.shape[0]).backward()
                lib.recover_state_dict(model, net_state)
                lib.recover_state_dict(inner_opt, opt_state)
            opt.step()
        return iteration
    return make


LOOP_FNS = {"learn2learn": learn2learn_loop, "higher": higher_loop, "torchopt": torchopt_loop}
FACES = {"learn2learn": face_l2l, "higher": face_higher, "torchopt": face_torchopt}


# ---- measurement ----------------------------------------------------------------------------

def meta_grads(make_iteration: Callable, batch) -> list[torch.Tensor]:
    """The meta-gradient of one iteration from a fresh model, the optimizer step left out."""
    torch.manual_seed(0)
    model = sine_mlp()
    iteration = make_iteration(model)
    before = [p.detach().clone() for p in model.parameters()]
    iteration(batch)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    return grads


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def providers_for(loop: str, backends: list[str]) -> list[tuple[str, object, str | None]]:
    """(label, library module, fastmaml backend or None) for the peer and the face."""
    out = []
    try:
        lib = getattr(_peers, loop)()
        out.append((f"{loop} {_peers.versions()[loop]}", lib, None))
    except ImportError:
        pass
    for backend in backends:
        out.append((f"fastmaml face ({backend})", FACES[loop], backend))
    return out


def run(rounds: int, steps_list: list[int], backends: list[str], loops: list[str]) -> dict:
    tasks = SineTasks(k_shot=K_SHOT, q_query=Q_QUERY, seed=0)
    batches = [tasks.sample(TASKS).tensors() for _ in range(8)]
    results, ratios, missing = [], [], []
    for loop in loops:
        providers = providers_for(loop, backends)
        if not providers or providers[0][2] is not None:
            missing.append(loop)
        for steps in steps_list:
            iterations, checks = {}, {}
            reference = None
            for label, lib, backend in providers:
                with ops.use_backend(backend or "auto"):
                    grads = meta_grads(LOOP_FNS[loop](lib, steps), batches[0])
                reference = grads if reference is None else reference
                checks[label] = max_rel_diff(grads, reference)
                torch.manual_seed(0)
                iterations[label] = LOOP_FNS[loop](lib, steps)(sine_mlp())
            def job(label, backend):
                def run(r):
                    with ops.use_backend(backend or "auto"):
                        iterations[label](batches[r % len(batches)])
                return run

            # two warm-up rounds; the providers take turns, order alternating
            samples = interleaved({label: job(label, backend) for label, _, backend in providers}, rounds,
                                  warmup_rounds=2)["wall"]
            times = {label: [t * 1e3 for t in ts] for label, ts in samples.items()}
            peer_label = providers[0][0] if providers[0][2] is None else None
            for label, _, backend in providers:
                ts = sorted(times[label])
                q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
                results.append({"loop": loop, "inner_steps": steps, "provider": label, "backend": backend,
                                "median_ms": statistics.median(ts), "p25_ms": q[0], "p75_ms": q[2],
                                "rounds": len(ts), "max_rel_diff_vs_peer": checks[label] if peer_label else None})
            if peer_label:
                peer_ms = statistics.median(times[peer_label])
                for label, _, backend in providers[1:]:
                    face_ms = statistics.median(times[label])
                    ratios.append({"loop": loop, "inner_steps": steps, "backend": backend, "peer": peer_label,
                                   "peer_ms": peer_ms, "face_ms": face_ms, "speedup": peer_ms / face_ms})
            line = ", ".join(f"{label}: {statistics.median(times[label]):.2f} ms" for label, _, _ in providers)
            print(f"{loop:12s} steps={steps}  {line}", flush=True)
    return {"results": results, "ratios": ratios, "peers_missing": missing}


def machine() -> dict:
    cpu = cpu_name()
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": "cpu"}


def render_markdown(data: dict | str | Path = DEFAULT_OUT) -> str:
    """The README table from a compat.json (a dict, or a path to one): per loop and inner-step
    count, the peer's median time per meta-iteration, the face's, and the speedup."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    backends = sorted({r["backend"] for r in data["ratios"]}, key=lambda b: (b != "native", b))
    head = "| example loop | inner steps | peer | peer (ms) | " + " | ".join(
        f"face, {b} (ms) | speedup ({b})" for b in backends) + " |"
    rows = [head, "|" + "---|" * (4 + 2 * len(backends))]
    keys = sorted({(r["loop"], r["inner_steps"]) for r in data["ratios"]}, key=lambda k: (LOOPS.index(k[0]), k[1]))
    for loop, steps in keys:
        mine = {r["backend"]: r for r in data["ratios"] if r["loop"] == loop and r["inner_steps"] == steps}
        first = next(iter(mine.values()))
        cells = []
        for b in backends:
            r = mine.get(b)
            cells += [f"{r['face_ms']:.1f}", f"**{r['speedup']:.2f}x**"] if r else ["-", "-"]
        rows.append(f"| {loop} sine MAML | {steps} | {first['peer']} | {first['peer_ms']:.1f} | " + " | ".join(cells) + " |")
    m, v = data["machine"], data["versions"]
    rows.append("")
    rows.append(f"Median time per meta-iteration ({data['config']['tasks']} tasks, 1-40-40-1 MLP, float32) on "
                f"{m['cpu']} ({m['torch_threads']} torch thread(s)), torch {v['torch']}, {data['date'][:10]}; "
                "made by `python bench/bench_compat.py` from bench/results/compat.json.")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="5 rounds, 1 inner step")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table", action="store_true", help="only print the markdown table of --out")
    args = parser.parse_args(argv)
    if args.table:
        print(render_markdown(args.out))
        return 0
    if args.quick:
        args.rounds, args.steps = 5, [1]
    torch.set_num_threads(args.threads)
    backends = ["native", "foreach"] if ops.is_available("native") else ["foreach"]
    data = run(args.rounds, args.steps, backends, args.loops)
    data.update({
        "benchmark": "compat",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "fastmaml": fastmaml.__version__, **_peers.versions()},
        "config": {"tasks": TASKS, "k_shot": K_SHOT, "q_query": Q_QUERY, "inner_lr": INNER_LR,
                   "meta_lr": META_LR, "model": "sine_mlp 1-40-40-1 ReLU", "dtype": "float32",
                   "rounds": args.rounds, "inner_steps": args.steps, "backends": backends},
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}\n")
    if data["ratios"]:
        print(render_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
