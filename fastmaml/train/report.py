"""Markdown tables of recorded results, made from the runs' eval.json and metrics (never typed).

    fastmaml report runs/omniglot-* runs/sine-*      (or python -m fastmaml.train.report ...)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from fastmaml.train.metrics import read_jsonl


def _row(run: Path) -> dict | None:
    path = run / "eval.json"
    if not path.is_file():
        return None
    ev = json.loads(path.read_text())
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    train = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    curve = {c["inner_steps"]: c for c in ev.get("curve", [])}
    stages = [(ev["iteration"], cfg.get("meta_batch"))]
    train_s = train_seconds(train)
    for source, iteration in lineage(cfg):
        source_cfg = json.loads((source / "config.json").read_text())
        stages.insert(0, (iteration, source_cfg.get("meta_batch")))
        train_s += train_seconds([r for r in read_jsonl(source / "metrics.jsonl") if r.get("kind") == "train"])
    return {"run": run.name, "ev": ev, "cfg": cfg, "curve": curve, "train_s": train_s, "stages": stages}


def lineage(cfg: dict) -> Iterator[tuple[Path, int | None]]:
    """The runs a run started from (`fastmaml train --init-from`), newest first: (run folder, the
    iteration of its checkpoint that was loaded)."""
    while cfg.get("init_from"):
        source = Path(cfg["init_from"])
        source = source.parent if source.is_file() else source
        yield source, cfg.get("init_from_iteration")
        cfg = json.loads((source / "config.json").read_text())


def train_seconds(train: list[dict]) -> float:
    """Training wall time over all segments of a run (elapsed_s restarts at 0 on resume)."""
    if not train:
        return float("nan")
    total, last = 0.0, 0.0
    for r in train:
        if r["elapsed_s"] < last:
            total += last
        last = r["elapsed_s"]
    return total + last


def fmt(c: dict | None, pct: bool) -> str:
    if c is None:
        return "–"
    if not math.isfinite(c["mean"]):  # the inner loop overflowed on some task
        return "diverged"
    return f"{100 * c['mean']:.1f} ± {100 * c['ci95']:.1f}" if pct else f"{c['mean']:.3f} ± {c['ci95']:.3f}"


def table(runs: list[Path]) -> str:
    rows = [r for r in (_row(Path(p)) for p in runs) if r is not None]
    out = []
    omni = [r for r in rows if r["ev"]["task"] == "omniglot"]
    if omni:
        out += ["| run | algorithm | N-way K-shot | iterations × meta-batch | inner lr, steps (train / test) | "
                "test accuracy % (95% CI), at test steps | 0 steps | 10 steps | train wall time |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in omni:
            ev, cfg = r["ev"], r["cfg"]
            algo = cfg["algo"] + (" (first order)" if cfg.get("first_order") else "")
            stages = " + ".join(f"{n} × {b}" for n, b in r["stages"])  # one per --init-from stage
            out.append(f"| {r['run']} | {algo} | {ev['n_way']}-way {ev['k_shot']}-shot | {stages} | {cfg['inner_lr']}, {cfg['inner_steps']} / {ev['inner_steps']} | "
                       f"**{fmt(r['curve'].get(ev['inner_steps']), True)}** ({ev['tasks']} tasks) | "
                       f"{fmt(r['curve'].get(0), True)} | {fmt(r['curve'].get(10), True)} | "
                       f"{r['train_s'] / 60:.0f} min |")
        out.append("")
    sine = [r for r in rows if r["ev"]["task"] == "sine"]
    if sine:
        out += ["| algorithm | iterations | inner lr, train steps | query MSE, 0 steps | 1 step | 5 steps | 10 steps | "
                "train wall time |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sine:
            ev, cfg, c = r["ev"], r["cfg"], r["curve"]
            iterations = " + ".join(str(n) for n, _ in r["stages"])
            out.append(f"| {cfg['algo']} | {iterations} | {cfg['inner_lr']}, {cfg['inner_steps']} | "
                       f"{fmt(c.get(0), False)} | {fmt(c.get(1), False)} | {fmt(c.get(5), False)} | "
                       f"{fmt(c.get(10), False)} | {r['train_s'] / 60:.1f} min |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(table([Path(p) for p in sys.argv[1:]]))
