"""What does Inductor's on-disk cache save a second process? The first step of
fastmaml.compile(MAML(sine MLP)) (sine-1-so of bench_peers: 25 tasks, 1 step, second order) in a
fresh process with an empty TORCHINDUCTOR_CACHE_DIR, then in a second fresh process with the cache
the first one left. Wall seconds of the first step (it compiles) and of a later one.

    python -m bench.bench_compile_cache              # -> bench/results/compile_cache.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "compile_cache.json"


def child(config: str) -> dict:
    import torch

    from bench import bench_peers as B, peers as P

    model, cfg, batches = B.problem(config)
    step = P.load("fastmaml_compiled").make(model, cfg)
    t0 = time.perf_counter()
    step(batches[0])
    first = time.perf_counter() - t0
    step(batches[1])
    t0 = time.perf_counter()
    step(batches[1])
    return {"first_step_s": first, "later_step_s": time.perf_counter() - t0, "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sine-1-so")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.config)))
        return 0
    cache = tempfile.mkdtemp(prefix="bench-compile-cache-")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    runs = []
    for which in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-m", "bench.bench_compile_cache", "--child", "--config", args.config],
                              cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        runs.append({"cache": which, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(f"{which}: first step {runs[-1]['first_step_s']:.1f} s, later {1e3 * runs[-1]['later_step_s']:.2f} ms", flush=True)
    data = {"benchmark": "compile_cache", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "config": args.config, "runs": runs, "load_avg_1min": os.getloadavg()[0],
            "command": "python -m bench.bench_compile_cache " + " ".join(sys.argv[1:])}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
