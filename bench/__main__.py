"""`python -m bench` (`make bench`): every benchmark of bench/ that has a main(argv), one after the
other, each writing its bench/results/*.json. `python -m bench peers compat` runs only those;
`--quick` is passed to those that take it (smoke test); `--list` names them.

The kernel micro-benchmarks run under pytest-benchmark instead: `make bench-kernels`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The comparison against the peers first: it is the headline.
ORDER = ("peers", "compat", "inner_update", "memory", "distributed")


def suites() -> dict[str, str]:
    found = {p.stem[len("bench_"):]: f"bench.{p.stem}" for p in sorted(Path(__file__).parent.glob("bench_*.py"))}
    return {name: found[name] for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")]
    available = suites()
    if "--list" in argv:
        print("\n".join(available))
        return 0
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"python -m bench: unknown benchmark(s) {unknown}; known: {list(available)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or available:
        module = importlib.import_module(available[name])
        run = getattr(module, "main", None)
        if run is None:
            print(f"== {name}: no main(), skipped", flush=True)
            continue
        args = ["--quick"] if quick and "--quick" in inspect.getsource(module) else []
        print(f"== {name} ({available[name]} {' '.join(args)})", flush=True)
        start = time.perf_counter()
        try:
            code = run(args)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as error:  # noqa: BLE001 - one benchmark failing does not stop the others
            print(f"== {name} failed: {type(error).__name__}: {error}", flush=True)
            code = 1
        print(f"== {name}: exit {code or 0} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"python -m bench: failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
