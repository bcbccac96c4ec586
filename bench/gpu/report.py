"""The README's GPU tables, made from the JSON of `python -m bench.gpu` (bench/results/gpu.json):
registered in bench/tables.py as gpu_run, gpu_update, gpu_metastep and gpu_goals. Until a device run
is committed, gpu_run says so and the others are empty."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gpu.json"
NO_RUN = ("*No device run has been committed yet: `bench/gpu/README.md` has the prepared command; "
          "this table is generated from `bench/results/gpu.json` once it exists.*")

FORM_LABELS = {"sgd": "sgd", "scaled": "Meta-SGD", "forget": "forget"}


def _load(data):
    if isinstance(data, dict):
        return data
    path = Path(data)
    return json.loads(path.read_text()) if path.exists() else None


def _caption(data) -> str:
    m, v = data["machine"], data["versions"]
    what = "CPU dry run (tiny sizes; not a measurement)" if data["dry_run"] else m.get("device", "?")
    return (f"{what}, driver {m.get('driver')}, torch {v['torch']} (CUDA {v.get('cuda')}), triton {v.get('triton')}, "
            f"jax {v.get('jax')}; {data['date'][:10]}, commit {str(data.get('commit'))[:10]}; `{data['command']}`.")


def _skips(section) -> str:
    skipped = section.get("skipped") or []
    return ("Skipped: " + "; ".join(f"{s['what']} ({s['why']})" for s in skipped) + ".") if skipped else ""


def _cell(text: str) -> str:
    """A recorded error shortened to fit a table cell (a '|' would end the cell)."""
    return text[:150].replace("|", "/")


def run_table(data=RESULTS) -> str:
    """Build and tests: status, time, counts."""
    data = _load(data)
    if data is None:
        return NO_RUN
    lines = ["| section | status | seconds | detail |", "|---|---|---|---|"]
    for name, s in data["sections"].items():
        if name == "tests" and data["dry_run"]:
            detail = f"collected only: {s.get('collected')}"
        elif name == "tests":
            detail = (f"{s.get('passed', 0)} passed, {s.get('failed', 0)} failed, {s.get('errors', 0)} errors, "
                      f"{s.get('skipped', 0)} skipped" + (f"; failing: {', '.join(s['failures'][:5])}" if s.get("failures") else ""))
        elif name == "build":
            detail = f"`{' '.join(f'{k}={v}' for k, v in s.get('env', {}).items())} {s.get('command', '')}`"
            if "cuda_kernels_built" in s:
                detail += f", CUDA kernels built: {s['cuda_kernels_built']}"
        else:
            detail = f"budget {s.get('budget_s')} s" + (f"; {_skips(s)}" if s.get("skipped") else "")
        lines.append(f"| {name} | {s.get('status')} | {s.get('seconds')} | {detail} |")
    return "\n".join(lines + ["", _caption(data)])


def update_table(data=RESULTS) -> str:
    """The fused update per case, form and backend: GPU time, bandwidth, share of a copy, launches."""
    data = _load(data)
    if data is None:
        return ""
    sec = data["sections"].get("update")
    if not sec or not sec.get("results"):
        return "*The update section recorded no results.*"
    lines = ["| case | form | backend | ms (p20–p80) | GB/s | % of copy | kernels / update |", "|---|---|---|---|---|---|---|"]
    last = None
    for r in sec["results"]:
        head = (r["case"], r["form"])
        if "error" in r:
            lines.append(f"| {r['case']} | {FORM_LABELS.get(r['form'], r['form'])} | {r['backend']} | "
                         f"**failed**: {_cell(r['error'])} | | | |")
            last = None
            continue
        label = [f"{r['case']} ({r['tensors']} tensor{'s' if r['tensors'] > 1 else ''})", FORM_LABELS.get(r["form"], r["form"])]
        launches = r.get("kernels") if r.get("kernels") is not None else f"{r.get('cpu_ops')} ops (CPU)"
        lines.append(f"| {' | '.join(label if head != last else ['', ''])} | {r['backend']} | "
                     f"{r['median_ms']:.3f} ({r['p20_ms']:.3f}–{r['p80_ms']:.3f}) | {r['gb_s']:.0f} | "
                     f"{100 * r['fraction_of_copy']:.0f}% | {launches} |")
        last = head
    caption = (f"Out-of-place update, float32, a and gamma elementwise where the form has them; GPU time by CUDA "
               f"events with the L2 flushed before each call, median of {sec.get('reps')}; GB/s counts every "
               f"byte read and written; % of copy: against `Tensor.copy_` of the same bytes in the same run; "
               f"kernels counted by torch.profiler (host-to-device copies of launch tables not counted). "
               + _skips(sec) + " " + _caption(data))
    return "\n".join(lines + ["", caption])


def metastep_table(data=RESULTS) -> str:
    """The MAML meta-step per config and implementation."""
    data = _load(data)
    if data is None:
        return ""
    sec = data["sections"].get("metastep")
    if not sec or not sec.get("configs"):
        return "*The metastep section recorded no results.*"
    lines = ["| config | implementation | ms / meta-step (p20–p80) | × fastmaml | grad check (f64; f32) | peak MiB |",
             "|---|---|---|---|---|---|"]
    for c in sec["configs"]:
        label = f"{c['model']} T={c['tasks']}, {c['steps']} step{'s' if c['steps'] > 1 else ''}"
        for r in c["results"].values():
            name = r["name"] + (f" ({r['batching']})" if r.get("batching") else "") \
                + (" — CUDA graphs declined" if r.get("cudagraphs_declined") else "")
            if "error" in r:
                lines.append(f"| {label} | {name} | **failed**: {_cell(r['error'])} | - | - | - |")
                label = ""
                continue
            timed = "median_ms" in r
            f32 = f"{r['grad_rel_diff_f32']:.0e}" if "grad_rel_diff_f32" in r else "-"  # a section cut at its limit
            check = ("ok" if r["agrees"] else "**differs**") + f" ({r['grad_rel_diff_f64']:.0e}; {f32})"
            peak = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| {label} | {name} | "
                         + (f"{r['median_ms']:.2f} ({r['p20_ms']:.2f}–{r['p80_ms']:.2f}) | {r.get('ratio_to_fastmaml', float('nan')):.2f}"
                            if timed else "not timed | -")
                         + f" | {check} | {peak} |")
            label = ""
    caption = (f"Second-order MAML meta-step, float32 without TF32 everywhere; wall ms per meta-step over runs of "
               f"consecutive steps, the device waited for at the end of each run; × fastmaml: peer / fastmaml; "
               f"grad check: relative max difference of the meta-gradient to fastmaml's, float64 on "
               f"{sec.get('check_tasks')} tasks (tolerance {sec.get('check_tolerance_f64', 0):.0e}) and float32 on "
               f"the whole batch; peak MiB: torch's allocator peak during one step, JAX: XLA's memory analysis. "
               + _skips(sec) + " " + _caption(data))
    return "\n".join(lines + ["", caption])


COMPILED_PEERS = ("fastmaml_compiled", "fastmaml_cuda_graphs", "fastmaml_aoti")  # fastmaml.compile's steps


def goals_table(data=RESULTS) -> str:
    """Issue 17's goals against the JSON."""
    data = _load(data)
    if data is None:
        return ""
    rows = []
    results = data["sections"].get("update", {}).get("results", [])
    upd = [r for r in results if "error" not in r]
    for r in results:
        if "error" in r:
            rows.append((f"{r['backend']} update runs ({r['case']} {r['form']})", _cell(r["error"]), False))
    for backend in ("native", "triton"):
        big = [r for r in upd if r["backend"] == backend and r["case"] in ("10M", "100M")]
        if big:
            worst = min(big, key=lambda r: r["fraction_of_copy"])
            rows.append((f"{backend}: ≥ 80% of copy bandwidth at ≥ 10M", f"{100 * worst['fraction_of_copy']:.0f}% "
                         f"(worst: {worst['case']} {worst['form']})", worst["fraction_of_copy"] >= 0.8))
        counted = [r["kernels"] for r in upd if r["backend"] == backend and r.get("kernels") is not None]
        if counted:
            rows.append((f"{backend}: one kernel per update", f"{min(counted)}–{max(counted)}", set(counted) == {1}))
    configs = {c["config"]: c for c in data["sections"].get("metastep", {}).get("configs", [])}
    for c in configs.values():
        vmap = c["results"].get("torchfunc_vmap", {})
        least = 1.5 if c["model"] == "sine" and c["tasks"] >= 1000 else 1.2 if c["model"] == "conv4" and c["tasks"] == 32 else None
        if least and "ratio_to_fastmaml" in vmap:
            note = "" if vmap["agrees"] else " (torch.func vmap's gradient differs)"
            rows.append((f"{c['config']}: ≥ {least}× torch.func vmap", f"{vmap['ratio_to_fastmaml']:.2f}×{note}",
                         vmap["ratio_to_fastmaml"] >= least))
        jax = c["results"].get("jax", {})
        if "agrees" in jax:
            rows.append((f"{c['config']}: meta-gradient agrees with JAX's (float64)", f"{jax['grad_rel_diff_f64']:.0e}",
                         jax["agrees"]))
        if "ratio_to_fastmaml" in jax:
            rows.append((f"{c['config']}: JAX / fastmaml (aim ≥ 1×)", f"{jax['ratio_to_fastmaml']:.2f}×",
                         jax["ratio_to_fastmaml"] >= 1.0))
            # the compiled configs: against fastmaml's fastest compiled step too (Inductor, CUDA graphs, AOTI)
            ours = [r for k, r in c["results"].items() if k in COMPILED_PEERS and r.get("agrees") and "median_ms" in r]
            best = min(ours, key=lambda r: r["median_ms"], default=None)
            eager = c["results"].get("fastmaml", {}).get("median_ms")
            if best is not None and eager and best["median_ms"] < eager:
                ratio = jax["median_ms"] / best["median_ms"]
                rows.append((f"{c['config']}: JAX / {best['name']} (aim ≥ 1×)", f"{ratio:.2f}×", ratio >= 1.0))
        for r in c["results"].values():
            if "error" in r:
                rows.append((f"{c['config']}: {r['name']} runs", _cell(r["error"]), False))
    tests = data["sections"].get("tests", {})
    if "passed" in tests and not data["dry_run"]:
        rows.append(("CUDA tests and GPU gradcheck green", f"{tests['passed']} passed, {tests.get('failed', 0)} failed, "
                     f"{tests.get('skipped', 0)} skipped", not tests.get("failed") and not tests.get("errors")
                     and not tests.get("skipped")))
    lines = ["| goal | measured | |", "|---|---|---|"]
    lines += [f"| {goal} | {got} | {'met' if ok else '**missed**'} |" for goal, got, ok in rows]
    return "\n".join(lines + ["", _caption(data)])
