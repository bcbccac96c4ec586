"""Where does fastmaml.compile's meta-step spend its time? (bench/README.md, issue 19)

One process, sine-1-so of bench_peers (or --config), one torch thread; rounds alternating:
  full      learner.meta_loss(...).backward() of fastmaml.compile(MAML(...))
  forward   its compiled_task_losses(...) alone
  graph     the compiled function it runs, called directly (the Inductor graph + Dynamo's guards)
  peer      bench/peers/torch_compile.py's whole step (torch.compile of the plain torch.func step)
  aoti      (--aoti) the graph's function traced by make_fx, exported (torch.export) and compiled by
            AOTInductor (aoti_compile_and_package), called through aoti_load_package's runner: no
            Dynamo guards, no AOT autograd wrappers (an experiment: fastmaml does not use it)
Median process CPU ms per step -> bench/results/profile_compiled.json.

    python -m bench.profile_compiled [--config sine-5-so] [--aoti]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "profile_compiled.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sine-1-so")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--aoti", action="store_true", help="also time the graph compiled by AOTInductor")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import fastmaml
    from bench import bench_peers as B, peers as P
    from fastmaml.execution import compiled as C

    model, cfg, batches = B.problem(args.config)
    batch, loss_fn = batches[0], cfg.loss_fn
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps))
    compile_s = {}
    t0 = time.perf_counter()
    learner.meta_loss(*batch, loss_fn).backward()
    compile_s["full"] = time.perf_counter() - t0
    graph = learner.execution_state.compiled[(loss_fn, None, True, "inductor")]
    meta = {n: p.detach() for n, p in learner.named_parameters()}
    ones = torch.ones(batch[0].shape[0])
    peer = P.load("torch_compile").make(model, cfg)
    peer(batch)

    fns = {"full": lambda: learner.meta_loss(*batch, loss_fn).backward(),
           "forward": lambda: C.compiled_task_losses(learner, *batch, loss_fn),
           "graph": lambda: graph(meta, {}, ones, *batch), "peer": lambda: peer(batch)}
    if args.aoti:
        t0 = time.perf_counter()
        fns["aoti"] = aoti(learner, loss_fn, meta, ones, batch)
        compile_s["aoti"] = time.perf_counter() - t0
    ms = {k: [] for k in fns}
    for r in range(args.rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            c0 = time.process_time()
            for _ in range(10):
                fns[k]()
            ms[k].append((time.process_time() - c0) / 10 * 1e3)
    data = {"benchmark": "profile_compiled", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "config": args.config, "torch": torch.__version__, "median_ms": {k: statistics.median(v) for k, v in ms.items()},
            "first_call_s": compile_s, "command": "python -m bench.profile_compiled " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data["median_ms"], indent=1))
    return 0


def aoti(learner, loss_fn, meta, weights, batch):
    """The compiled step's function (weights -> meta-gradient and losses) by make_fx, torch.export and
    AOTInductor; its meta-gradient checked against the eager function's first."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from fastmaml import ops
    from fastmaml.execution import compiled as C

    step = C._build(learner, loss_fn, None, True, "eager")._torchdynamo_orig_callable
    names = list(meta)

    def flat(*args):
        grads, losses = step(dict(zip(names, args[:len(names)])), {}, *args[len(names):])
        return (*[grads[n] for n in names], losses)

    args = (*meta.values(), weights, *batch)
    with ops.use_backend("reference"):
        want = flat(*args)
        program = torch.export.export(make_fx(flat)(*args), args, strict=False)
    path = torch._inductor.aoti_compile_and_package(program)
    runner = torch._inductor.aoti_load_package(path)
    got = runner(*args)
    diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want))
    print(f"aoti: agrees with the eager function to {diff:.1e} (relative)", flush=True)
    return lambda: runner(*args)


if __name__ == "__main__":
    sys.exit(main())
