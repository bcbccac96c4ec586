"""Markdown tables for the README, made from the saved benchmark JSON.

    python -m bench.tables inner_update      # prints the table of bench/results/inner_update.json
    python -m bench.tables --readme          # rewrites every <!-- table:NAME --> block of README.md
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


def inner_update_table(path: Path = RESULTS / "inner_update.json") -> str:
    data = json.loads(Path(path).read_text())
    m, v = data["machine"], data["versions"]
    lines = [
        (f"Inner update, float32 on {m['device']} ({m['cpu']}, {m['torch_threads']} threads), torch "
        f"{v['torch']}, {data['date'][:10]}; median µs per update (out of place, allocating its outputs; "
        f"in place); ×: speedup over reference / foreach; GB/s of the in-place update and as a fraction "
        f"of a plain copy_ in the same run; ops: ATen ops dispatched per update. `{data['config']['command']}`"),
        "",
        ("| parameters | form | backend | µs (p25–p75) | × ref | × foreach | in-place µs | GB/s | % copy "
         "| fwd+bwd µs | fwd+bwd × ref | ops |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        f, fb, ip = r["fwd"], r["fwd_bwd"], r["inplace"]
        lines.append(
            f"| {SET_LABELS.get(r['set'], r['set'])} | {r['form']} | {r['backend']} "
            f"| {f['median_us']:.0f} ({f['p25_us']:.0f}–{f['p75_us']:.0f}) "
            f"| {r.get('speedup_vs_reference', float('nan')):.2f} | {r.get('speedup_vs_foreach', float('nan')):.2f} "
            f"| {ip['median_us']:.0f} | {r['gb_s']:.1f} | {100 * r['frac_of_copy']:.0f}% | {fb['median_us']:.0f} "
            f"| {r.get('fwd_bwd_speedup_vs_reference', float('nan')):.2f} | {r['aten_ops']} |"
        )
    return "\n".join(lines)


def peers_table(data=RESULTS / "peers.json") -> str:
    """bench/bench_peers.py's table (rendered there: bench_peers.render_markdown)."""
    from bench.bench_peers import render_markdown

    return render_markdown(data)


def memory_table(data=RESULTS / "memory.json") -> str:
    from bench.bench_memory import render_markdown

    return render_markdown(data)


def compat_table(data=RESULTS / "compat.json") -> str:
    from bench.bench_compat import render_markdown

    return render_markdown(data)


def distributed_table(path: Path = RESULTS / "distributed.json") -> str:
    from bench.bench_distributed import render_table

    return render_table(json.loads(Path(path).read_text()))


TABLES = {"inner_update": inner_update_table, "peers": peers_table, "memory": memory_table,
          "compat": compat_table, "distributed": distributed_table}


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
        readme = Path(__file__).resolve().parent.parent / "README.md"
        print(f"rewrote {', '.join(rewrite_readme(readme)) or 'no'} tables in {readme}")
    else:
        names = sys.argv[1:] or list(TABLES)
        print("\n\n".join(TABLES[n]() for n in names))
