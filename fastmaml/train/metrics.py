"""Run metrics: a mean with its 95% confidence interval, and the run's logs (JSONL with every
record, CSV per kind of record, TensorBoard when installed and asked for)."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from fastmaml.tasks.omniglot import remove_stale_temporaries

CSV_FIELDS = {
    "train": ("iteration", "loss", "elapsed_s", "iterations_per_s"),
    "eval": ("iteration", "split", "metric", "mean", "ci95", "loss", "tasks", "inner_steps", "elapsed_s"),
}


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval, 1.96 s / sqrt(n)
    (s: sample standard deviation); the half-width is 0 for fewer than two values.

    Args:
        values: the per-task scores.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 of no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if isinstance(record, dict):
                records.append(record)
    return records


def atomic_write_text(path: Path, text: str) -> None:
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class MetricsLogger:
    """Appends records `{"kind": "train"|"eval"|..., "iteration": i, ...}` to run_dir/metrics.jsonl
    and the known fields to run_dir/<kind>.csv. `run_dir=None` keeps them in memory only.

    Args:
        run_dir: the run's folder (None: log nowhere).
        tensorboard: also write TensorBoard events (the tensorboard extra).
    """

    def __init__(self, run_dir: str | os.PathLike | None, tensorboard: bool = False):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.records: list[dict] = []
        self.writer = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            if not tensorboard_available():
                raise RuntimeError("TensorBoard logging needs the tensorboard package: pip install 'fastmaml[tensorboard]' "
                                   "(or pip install tensorboard)")
            if self.run_dir is None:
                raise RuntimeError("TensorBoard logging needs a run directory")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    @property
    def jsonl(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "metrics.jsonl"

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (a resumed run repeats them)."""
        if self.run_dir is None:
            self.records = [r for r in self.records if r.get("iteration", 0) <= iteration]
            return
        jsonl = cast(Path, self.jsonl)  # run_dir is set
        kept = [r for r in read_jsonl(jsonl) if r.get("iteration", 0) <= iteration]
        self.records = kept
        atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        for kind, fields in CSV_FIELDS.items():
            rows = [r for r in kept if r.get("kind") == kind]
            path = self.run_dir / f"{kind}.csv"
            if path.exists() or rows:
                atomic_write_text(path, _csv_text(fields, rows, header=True))

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.run_dir is None:
            return
        with open(cast(Path, self.jsonl), "a") as f:
            f.write(json.dumps(record) + "\n")
        kind = record.get("kind")
        if kind in CSV_FIELDS:
            path = self.run_dir / f"{kind}.csv"
            new = not path.exists() or path.stat().st_size == 0
            with open(path, "a") as f:
                f.write(_csv_text(CSV_FIELDS[kind], [record], header=new))
        if self.writer is not None and "iteration" in record:
            step = record["iteration"]
            if kind == "train":
                self.writer.add_scalar("train/loss", record["loss"], step)
            elif kind == "eval":
                self.writer.add_scalar(f"{record['split']}/{record['metric']}", record["mean"], step)
                self.writer.add_scalar(f"{record['split']}/loss", record["loss"], step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _csv_text(fields: Sequence[str], rows: list[dict], header: bool) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    if header:
        w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    return buf.getvalue()
