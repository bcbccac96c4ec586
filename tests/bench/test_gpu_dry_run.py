"""bench/gpu (the prepared device run of issue 17) in its --cpu-dry-run mode: every section runs at
tiny sizes on the CPU and the README's GPU tables render from its JSON, so neither rots between
device sessions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import report
from bench.tables import TABLES

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.slow  # one run of ~1 minute of CPU (four processes importing torch, JAX's compilations)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--cpu-dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"bench.gpu --cpu-dry-run failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    return json.loads((out / "gpu.json").read_text())


def test_every_section_ran(dry_run):
    sections = dry_run["sections"]
    assert list(sections) == ["build", "tests", "update", "metastep"]
    assert sections["build"]["status"] == "skipped"
    assert sections["tests"]["status"] == "ok" and "collected" in sections["tests"]["collected"]
    for name in ("update", "metastep"):
        assert sections[name]["status"] == "ok", sections[name]
        assert not [s for s in sections[name]["skipped"] if "budget" in s["why"]], sections[name]["skipped"]
    assert dry_run["machine"]["device"] == "cpu" and dry_run["versions"]["torch"]


def test_update_section_covers_every_case(dry_run):
    sec = dry_run["sections"]["update"]
    usable = [b for b, ok in sec["backends"].items() if ok]
    assert {"reference", "foreach"} <= set(usable)
    got = {(r["case"], r["form"], r["backend"]) for r in sec["results"]}
    want = {(c, f, b) for c in ("1K", "10K", "conv4x32") for f in ("sgd", "scaled", "forget") for b in usable
            if b != "triton" or c == "1K"}  # the interpreted Triton on the smallest case only
    assert got == want
    for r in sec["results"]:
        assert r["median_ms"] > 0 and r["fraction_of_copy"] > 0 and r["cpu_ops"] >= 1


def test_metastep_gradients_agree(dry_run):
    sec = dry_run["sections"]["metastep"]
    assert [c["config"] for c in sec["configs"]] == ["sine-T6-2", "conv4-T3-1", "sine-T6-1-compiled"]
    compiled = sec["configs"][-1]["results"]
    assert compiled["fastmaml_compiled"]["batching"] == compiled["fastmaml_cuda_graphs"]["batching"] == "compiled"
    # on the CPU Inductor declines CUDA graphs, and the record says so
    assert compiled["fastmaml_cuda_graphs"]["cudagraphs_declined"] and "cudagraphs_declined" not in compiled["fastmaml"]
    for c in sec["configs"]:
        for peer, r in c["results"].items():
            assert "median_ms" in r, f"{c['config']} {peer} was not timed"
            if peer == "torchfunc_vmap" and c["model"] == "conv4":
                continue  # torch's vmap + batch norm double backward (tests/bench/test_peers_agree.py)
            assert r["agrees"], f"{c['config']} {peer}: {r['grad_rel_diff_f64']:.1e}"
            assert r["grad_rel_diff_f32"] < 1e-3


@pytest.mark.parametrize("table", ["gpu_run", "gpu_goals", "gpu_update", "gpu_metastep"])
def test_tables_render(dry_run, table, tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(dry_run))
    text = TABLES[table](path)
    assert "CPU dry run" in text and "|---" in text
    assert TABLES[table](tmp_path / "missing.json") == (report.NO_RUN if table == "gpu_run" else "")
