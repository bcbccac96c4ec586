"""The GPU run of issue 17, section by section, each in its own process under a time budget so that a
slow or hung section cannot eat the others' time (what it had measured is kept, what it skipped is
recorded); unused time passes to the next section, all within TOTAL_S. Writes OUT/gpu.json (machine, versions, commit,
every section's record) beside the log that bench/gpu/run.sh tees to OUT/gpu.log.

    python -m bench.gpu [--out DIR] [--total SECONDS]     # on the GPU machine (bench/gpu/README.md)
    python -m bench.gpu --cpu-dry-run [--out DIR]         # here: tiny sizes, no build, tests collected only

Sections: build (the extension against this machine's torch, sm_90, 16 jobs), tests (every test
that needs a CUDA device, Triton on the GPU and float64 gradcheck of the fused ops included: the
`-k cuda` tests of tests/ops and tests/hvp), update (bench/gpu/update.py), metastep
(bench/gpu/metastep.py).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Seconds per section on the device: at most its cap plus what the sections before it left unused,
# never so much that the sections after it get less than their floor, all within TOTAL_S (8 minutes
# less start-up and slack). The build's cap is generous: nothing else can run without it.
BUDGETS = {"build": 240, "tests": 100, "update": 70, "metastep": 130}
FLOORS = {"build": 60, "tests": 60, "update": 40, "metastep": 80}
TOTAL_S = 465
DRY_BUDGETS = {"build": 0, "tests": 120, "update": 240, "metastep": 240}  # ~1 min in all unloaded
GRACE_S = 20  # a timing section stops starting work this long before its budget, when it is killed
TESTS = ["tests/ops", "tests/hvp", "tests/execution/test_batched_conv.py", "tests/execution/test_batched_norm.py",
         "tests/execution/test_compiled_cuda_graphs.py::test_cuda_graphs_replay_on_cuda", "-k", "cuda or vectorizes"]
BUILD_ENV = {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16", "FASTMAML_REQUIRE_CUDA": "1"}
SETUPTOOLS_MIN = (77,)  # pyproject.toml's [build-system] requires
WHEELS = ROOT / ".gpu" / "wheels"  # bench/gpu/prepare.sh


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def _run(cmd, timeout, env=None, log_path=None) -> dict:
    """Run `cmd` from the repository root, its output streamed to our log (and `log_path`); past
    `timeout` seconds its whole process group is killed (a hung kernel or compiler included)."""
    t0 = time.perf_counter()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    log("$ " + " ".join(f"{k}={v}" for k, v in (env or {}).items()) + (" " if env else "") + " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail = []

    def pump():
        with open(log_path or os.devnull, "w") as out:
            for line in proc.stdout:
                print(line, end="", flush=True)
                out.write(line)
                tail.append(line)
                del tail[:-40]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = "timeout"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=5)
    return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "command": " ".join(cmd),
            "output_tail": "".join(tail)[-3000:]}


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def build_setuptools() -> dict:
    """How the build gets a setuptools that reads pyproject.toml (>= 77: its SPDX `license`): the
    machine's own, else the wheels bench/gpu/prepare.sh put in .gpu/wheels, installed into a
    folder put first on the build's path. Returns {"setuptools": the machine's version, "use": what
    the build uses, "env": the build's extra variables} or, where neither will do, {"error": why}."""
    try:
        have = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        have = None
    out = {"setuptools": have}
    if have is not None and _release(have) >= SETUPTOOLS_MIN:
        return {**out, "use": f"the machine's setuptools {have}", "env": {}}
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        return {**out, "error": f"setuptools {have} here is older than {'.'.join(map(str, SETUPTOOLS_MIN))} and "
                                f"{WHEELS.relative_to(ROOT)} holds no wheels: run bench/gpu/prepare.sh before the call"}
    site = tempfile.mkdtemp(prefix="fastmaml-build-site-")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", site, *map(str, wheels)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        return {**out, "error": f"installing {[w.name for w in wheels]} failed: {done.stderr[-1000:]}"}
    return {**out, "use": f"carried {[w.name for w in wheels]}", "env": {"PYTHONPATH": os.pathsep.join([site, str(ROOT)])}}


def build(out_dir: Path, budget: float, dry_run: bool) -> dict:
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    if dry_run:
        return {"status": "skipped", "why": "dry run: the extension is built by make", "command": " ".join(cmd),
                "env": BUILD_ENV}
    tools = build_setuptools()
    if "error" in tools:
        log(f"build: {tools['error']}")
        return {"status": "failed (setuptools)", "seconds": 0.0, "command": " ".join(cmd), **tools}
    log(f"build: {tools['use']}")
    res = _run(cmd, budget, {**BUILD_ENV, **tools.pop("env")}, out_dir / "build.log")
    res.update(env=BUILD_ENV, **tools)
    if res["status"] == "ok":
        check = _run([sys.executable, "-c", "from fastmaml.ops import native; import sys; "
                      "sys.exit(0 if native.cuda_kernels_built() else 1)"], 60)
        res["cuda_kernels_built"] = check["status"] == "ok"
    return res


def tests(out_dir: Path, budget: float, dry_run: bool) -> dict:
    xml = out_dir / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={xml}", *TESTS]
    if dry_run:
        cmd.insert(cmd.index("-rfEs"), "--collect-only")
    res = _run(cmd, budget, {"TRITON_INTERPRET": "0"} if not dry_run else None)
    if xml.exists():
        cases = ET.parse(xml).getroot().iter("testcase")
        outcome = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        failures, skipped = [], []
        for case in cases:
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None:
                outcome["failed"] += 1
                failures.append(name)
            elif case.find("error") is not None:
                outcome["errors"] += 1
                failures.append(name)
            elif case.find("skipped") is not None:
                outcome["skipped"] += 1
                skipped.append(name)
            else:
                outcome["passed"] += 1
        res.update(outcome, failures=failures, skipped_tests=skipped[:50])
    if dry_run:
        collected = [line for line in res["output_tail"].splitlines() if "tests collected" in line or "selected" in line]
        res["collected"] = collected[-1] if collected else None
    return res


def section(module: str, out_dir: Path, budget: float, dry_run: bool) -> dict:
    part = out_dir / f".{module}.part.json"
    cmd = [sys.executable, "-m", f"bench.gpu.{module}", "--out", str(part), "--budget", str(max(budget - GRACE_S, 5))]
    env = {"TRITON_INTERPRET": "1"} if dry_run else None  # Triton runs on the CPU only interpreted
    res = _run(cmd + (["--cpu-dry-run"] if dry_run else []), budget, env)
    data = json.loads(part.read_text()) if part.exists() else {}
    part.unlink(missing_ok=True)
    if res["status"] != "ok":
        data["status"] = res["status"]
        data["output_tail"] = res["output_tail"]
    data["seconds"] = res["seconds"]
    return data


def machine(dry_run: bool) -> dict:
    import torch

    out = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": "cpu"}
    if not dry_run and torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        out.update(device=prop.name, sm_count=prop.multi_processor_count,
                   memory_gib=round(prop.total_memory / 2**30, 1), capability=f"{prop.major}.{prop.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        out["driver"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["driver"] = None
    return out


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "jax", "jaxlib", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout
        out["nvcc"] = nvcc.strip().splitlines()[-1] if nvcc.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        out["nvcc"] = None
    return out


def source_digest() -> str:
    """sha256 of the measured sources (fastmaml, csrc, bench/gpu, bench/peers, tests): the device
    copy has no .git, so the committing session can check the commit it names."""
    h = hashlib.sha256()
    for top in ("fastmaml", "csrc", "bench/gpu", "bench/peers", "tests"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".cpp", ".cu", ".cuh", ".h", ".sh"):
                h.update(str(path.relative_to(ROOT)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def commit() -> str | None:
    """.gpu/commit (written before the device call, bench/gpu/README.md), else git."""
    stamp = ROOT / ".gpu" / "commit"
    if stamp.exists():
        return stamp.read_text().strip()
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT, else build/gpu-run")
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--sections", default="build,tests,update,metastep")
    args = ap.parse_args(argv)
    dry = args.cpu_dry_run
    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "build" / ("gpu-dry-run" if dry else "gpu-run"))
    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = DRY_BUDGETS if dry else BUDGETS
    wanted = args.sections.split(",")
    data = {"benchmark": "gpu", "dry_run": dry, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": "python -m bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": commit(), "source_sha256": source_digest(), "machine": machine(dry), "versions": versions(),
            "budgets_s": budgets, "sections": {}}
    path = out_dir / "gpu.json"
    log(f"bench.gpu: {'CPU dry run' if dry else data['machine'].get('device')}, torch {data['versions']['torch']}, "
        f"writing {path}")
    t0, carry = time.perf_counter(), 0.0
    names = [n for n in budgets if n in wanted]
    for i, name in enumerate(names):
        budget = budgets[name] + carry
        if not dry:
            left = TOTAL_S - (time.perf_counter() - t0) - sum(FLOORS[n] for n in names[i + 1:])
            budget = max(FLOORS[name], min(budget, left))
        log(f"== {name} (budget {budget:.0f} s)")
        if name == "build":
            res = build(out_dir, budget, dry)
        elif name == "tests":
            res = tests(out_dir, budget, dry)
        else:
            res = section(name, out_dir, budget, dry)
        carry = max(0.0, budget - res.get("seconds", 0.0))
        data["sections"][name] = res
        data["total_s"] = round(time.perf_counter() - t0, 1)
        path.write_text(json.dumps(data, indent=1, default=str))
        log(f"== {name}: {res.get('status')} in {res.get('seconds')} s")
    bad = {k: v.get("status") for k, v in data["sections"].items() if v.get("status") not in ("ok", "skipped")}
    if data["sections"].get("tests", {}).get("failed") or data["sections"].get("tests", {}).get("errors"):
        bad["tests"] = "test failures"
    log(f"bench.gpu: done in {data['total_s']} s; {'all sections ok' if not bad else f'NOT ok: {bad}'}; {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
