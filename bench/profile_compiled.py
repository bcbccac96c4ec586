"""Where does fastmaml.compile's meta-step spend its time? (bench/README.md, issue 19)

One process, sine-1-so of bench_peers (or --config), one torch thread; rounds alternating:
  full      learner.meta_loss(...).backward() of fastmaml.compile(MAML(...))
  forward   its compiled_task_losses(...) alone
  graph     the compiled function it runs, called directly (the Inductor graph + Dynamo's guards)
  peer      bench/peers/torch_compile.py's whole step (torch.compile of the plain torch.func step)
  decomposed  `full` with the inner update by the pure-PyTorch (reference) backend, which Inductor
            fuses, instead of the opaque native op; the dispatcher's backend lookup (importlib) is
            not traceable, so this run looks the two modules up from a dict
Median process CPU ms per step -> bench/results/profile_compiled.json.

    python -m bench.profile_compiled [--config sine-5-so]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "profile_compiled.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sine-1-so")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import fastmaml
    import fastmaml.ops as ops
    from bench import bench_peers as B, peers as P
    from fastmaml.execution import compiled as C
    from fastmaml.ops import native, reference

    ops.backend_module = lambda name, family=ops.UPDATE: {"native": native, "reference": reference}[name]
    ops.resolve_backend(torch.device("cpu"))  # the "auto" choice, made outside the trace
    # compiled.py refuses a non-native backend (its lookup is not traceable without the lines above)
    C.ops = types.SimpleNamespace(resolve_backend=lambda device: "native")
    model, cfg, batches = B.problem(args.config)
    batch, loss_fn = batches[0], cfg.loss_fn
    learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps))
    decomposed = fastmaml.compile(fastmaml.MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps))
    compile_s = {}
    t0 = time.perf_counter()
    learner.meta_loss(*batch, loss_fn).backward()
    compile_s["native"] = time.perf_counter() - t0
    with fastmaml.use_backend("reference"):
        t0 = time.perf_counter()
        decomposed.meta_loss(*batch, loss_fn).backward()
        compile_s["decomposed"] = time.perf_counter() - t0
    graph = learner._compiled_steps[(loss_fn, None, True, "inductor")]
    meta = {n: p.detach() for n, p in learner.named_parameters()}
    ones = torch.ones(batch[0].shape[0])
    peer = P.load("torch_compile").make(model, cfg)
    peer(batch)

    def decomposed_step():
        with fastmaml.use_backend("reference"):
            decomposed.meta_loss(*batch, loss_fn).backward()

    fns = {"full": lambda: learner.meta_loss(*batch, loss_fn).backward(),
           "forward": lambda: C.compiled_task_losses(learner, *batch, loss_fn),
           "graph": lambda: graph(meta, {}, ones, *batch), "peer": lambda: peer(batch),
           "decomposed": decomposed_step}
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


if __name__ == "__main__":
    sys.exit(main())
