"""Where does fastmaml.compile's meta-step spend its time? (bench/README.md, issue 19)

One process, sine-1-so of bench_peers (or --config), one torch thread; rounds alternating, the
layers of each backend from the outside in:
  <backend> backward   learner.meta_loss(...).backward(): the losses, then the meta-gradient
                       handed to autograd (HandGradLosses)
  <backend> direct     learner.meta_backward(...): the meta-gradient written into .grad
                       (NOTE: [direct meta-gradient] in fastmaml/execution/compiled.py)
  <backend> step       the compiled step function alone (Inductor: behind Dynamo's guards;
                       aoti: AotiStep, with its key)
  aoti runner          the AOTInductor package's run alone (no key, no Python around it)
  peer / peer-autotune bench/peers/torch_compile.py's whole step (default mode / max-autotune)
for backends "inductor" and "aoti" (fastmaml.compile(learner, backend=...)).
Median process CPU ms per step -> bench/results/profile_compiled.json.

    python -m bench.profile_compiled [--config sine-5-so]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("FASTMAML_AOTI_CACHE", tempfile.mkdtemp(prefix="profile-compiled-aoti-"))
    import fastmaml
    from bench import bench_peers as B, peers as P

    model, cfg, batches = B.problem(args.config)
    batch, loss_fn = batches[0], cfg.loss_fn
    weights = torch.full((batch[0].shape[0],), 1 / batch[0].shape[0])
    fns, first_call_s = {}, {}
    for backend in ("inductor", "aoti"):
        learner = fastmaml.compile(fastmaml.MAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps), backend=backend)
        t0 = time.perf_counter()
        learner.meta_backward(*batch, loss_fn)
        first_call_s[backend] = time.perf_counter() - t0
        step = learner.execution_state.compiled[(loss_fn, None, True, backend)]
        meta = {n: p.detach() for n, p in learner.named_parameters()}
        fns[f"{backend} backward"] = lambda learner=learner: learner.meta_loss(*batch, loss_fn).backward()
        fns[f"{backend} direct"] = lambda learner=learner: learner.meta_backward(*batch, loss_fn)
        fns[f"{backend} step"] = lambda step=step, meta=meta: step(meta, {}, weights, *batch)
        if backend == "aoti":
            (runner,) = step.fn.runners.values()
            flat = [*meta.values(), weights, *batch]
            fns["aoti runner"] = lambda: runner(*flat)
    for name, peer in (("peer", "torch_compile"), ("peer-autotune", "torch_compile_autotune")):
        peer_step = P.load(peer).make(model, cfg)
        fns[name] = lambda peer_step=peer_step: peer_step(batch)
        t0 = time.perf_counter()
        fns[name]()
        first_call_s[name] = time.perf_counter() - t0
    for p in model.parameters():
        p.grad = None
    ms = {k: [] for k in fns}
    for r in range(args.rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            c0 = time.process_time()
            for _ in range(10):
                fns[k]()
            ms[k].append((time.process_time() - c0) / 10 * 1e3)
            for p in model.parameters():
                p.grad = None
    data = {"benchmark": "profile_compiled", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "config": args.config, "torch": torch.__version__, "median_ms": {k: statistics.median(v) for k, v in ms.items()},
            "first_call_s": first_call_s, "command": "python -m bench.profile_compiled " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data["median_ms"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
