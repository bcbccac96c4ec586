"""Markdown tables for the README, made from the saved benchmark JSON.

    python -m bench.tables inner_update      # prints the table of bench/results/inner_update.json
    python -m bench.tables --readme          # rewrites every <!-- table:NAME --> block of README.md and bench/README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SET_LABELS = {
    "sine-mlp": "sine MLP (1.7k, 6 tensors)",
    "conv4": "Conv-4 (112k, 18 tensors)",
    "conv4x32": "Conv-4 x 32 tasks (3.6M, 18 tensors)",
    "10M": "10M (4 tensors)",
}


def _inner_update_markdown(path: Path, what: str, columns: list[str], cells) -> str:
    """A table of bench/results/inner_update.json: one row per result, `cells(result)` after the
    parameter set, form and backend."""
    data = json.loads(Path(path).read_text())
    m, v = data["machine"], data["versions"]
    columns = ["parameters", "form", "backend", *columns]
    lines = [
        (f"Inner update, float32 on {m['device']} ({m['cpu']}, {m['torch_threads']} threads), torch "
         f"{v['torch']}, {data['date'][:10]}; {what} `{data['config']['command']}`"),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in data["results"]:
        row = [SET_LABELS.get(r["set"], r["set"]), r["form"], r["backend"], *cells(r)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _x(r, key) -> str:
    return f"{r.get(key, float('nan')):.2f}"


def _us(timing) -> str:
    return f"{timing['median_us']:.0f}"


def inner_update_table(path: Path = RESULTS / "inner_update.json") -> str:
    return _inner_update_markdown(
        path,
        "median µs per update (out of place, allocating its outputs; in place); ×: speedup over "
        "reference / foreach; GB/s of the in-place update and as a fraction of a plain copy_ in the "
        "same run; ops: ATen ops dispatched per update.",
        ["µs (p25–p75)", "× ref", "× foreach", "in-place µs", "GB/s", "% copy", "ops"],
        lambda r: [f"{_us(r['fwd'])} ({r['fwd']['p25_us']:.0f}–{r['fwd']['p75_us']:.0f})",
                   _x(r, "speedup_vs_reference"), _x(r, "speedup_vs_foreach"), _us(r["inplace"]),
                   f"{r['gb_s']:.1f}", f"{100 * r['frac_of_copy']:.0f}%", str(r["aten_ops"])],
    )


def inner_update_fwd_bwd_table(path: Path = RESULTS / "inner_update.json") -> str:
    return _inner_update_markdown(
        path,
        "the differentiable update (params, a and gamma requiring grad), median µs: forward then "
        "`torch.autograd.grad` (grad), the same through the autograd engine's entry point without "
        "autograd.grad's Python (engine), the backward alone; ×: speedup over reference; floor: "
        "`torch.autograd.grad` with as many outputs and inputs and no node between them, so best × "
        "is the most any backend could gain over reference's grad column.",
        ["grad µs", "× ref", "engine µs", "× ref", "backward µs", "× ref", "floor µs", "best ×"],
        lambda r: [_us(r["fwd_bwd"]), _x(r, "fwd_bwd_speedup_vs_reference"),
                   _us(r["fwd_bwd_engine"]), _x(r, "fwd_bwd_engine_speedup_vs_reference"),
                   _us(r["bwd"]), _x(r, "bwd_speedup_vs_reference"),
                   _us(r["grad_floor"]), _x(r, "best_fwd_bwd_speedup_vs_reference")],
    )


def peers_table(data=RESULTS / "peers.json") -> str:
    """bench/bench_peers.py's table (rendered there: bench_peers.render_markdown)."""
    from bench.bench_peers import render_markdown

    return render_markdown(data)


def peers_compiled_table(data=RESULTS / "peers_compiled.json") -> str:
    """bench_peers' table of the compiled peers (issue 19): fastmaml eager and compiled, torch.func,
    torch.compile(torch.func), JAX."""
    return peers_table(data)


def inner_optimizer_table(path: Path = RESULTS / "inner_optimizer.json") -> str:
    """bench/bench_inner_optimizer.py's table: one inner Adam / momentum step, fastmaml against torch."""
    from bench.bench_inner_optimizer import render_markdown

    return render_markdown(path)


def memory_table(data=RESULTS / "memory.json") -> str:
    from bench.bench_memory import render_markdown

    return render_markdown(data)


def compat_table(data=RESULTS / "compat.json") -> str:
    from bench.bench_compat import render_markdown

    return render_markdown(data)


def distributed_table(path: Path = RESULTS / "distributed.json") -> str:
    from bench.bench_distributed import render_table

    return render_table(json.loads(Path(path).read_text()))


def revisions_table(path: Path = RESULTS / "revisions.json") -> str:
    from bench.bench_revisions import render_markdown

    return render_markdown(path)


def revisions_aa_table(path: Path = RESULTS / "revisions_aa.json") -> str:
    """The A/A control of bench_revisions: one commit in two trees built apart."""
    return revisions_table(path)


def revisions_conv4_table(names=("revisions_conv4_ab", "revisions_conv4_aa", "revisions_conv4_dynamo",
                                 "revisions_conv4_aa_quiet")) -> str:
    """Issue 18's Conv-4 reading: base -> candidate, the candidate A/A, base -> base importing torch._dynamo,
    and an A/A at f5884e0 on a quiet machine."""
    return "\n\n".join(revisions_table(RESULTS / f"{name}.json") for name in names)


def _gpu(name):
    """bench/gpu/report.py's tables of bench/results/gpu.json (a note until a device run exists)."""
    def render(data=RESULTS / "gpu.json"):
        from bench.gpu import report

        return getattr(report, f"{name}_table")(data)

    return render


TABLES = {"inner_update": inner_update_table, "inner_update_fwd_bwd": inner_update_fwd_bwd_table, "peers": peers_table,
          "peers_compiled": peers_compiled_table, "inner_optimizer": inner_optimizer_table, "memory": memory_table,
          "compat": compat_table, "distributed": distributed_table, "revisions": revisions_table,
          "revisions_aa": revisions_aa_table, "revisions_conv4": revisions_conv4_table,
          **{f"gpu_{name}": _gpu(name) for name in ("run", "goals", "update", "metastep")}}


def rewrite_readme(path: Path) -> list[str]:
    """Replace the text between `<!-- table:NAME -->` and `<!-- /table:NAME -->` with TABLES[NAME]()."""
    text = Path(path).read_text()
    done = []
    for name, render in TABLES.items():
        start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            text = f"{head}{start}\n{render()}\n{end}{tail}"
            done.append(name)
    Path(path).write_text(text)
    return done


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        root = Path(__file__).resolve().parent.parent
        for readme in (root / "README.md", root / "bench" / "README.md"):
            print(f"rewrote {', '.join(rewrite_readme(readme)) or 'no'} tables in {readme}")
    else:
        names = sys.argv[1:] or list(TABLES)
        print("\n\n".join(TABLES[n]() for n in names))
