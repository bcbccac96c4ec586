"""bench/gpu/report.py's goals, read from a made-up metastep section: the ratio to JAX against eager
fastmaml for every config, and, where a compiled fastmaml step is faster and agrees, against that
one too (a disagreeing one never counts)."""

from bench.gpu import report


def _data(results):
    config = {"config": "sine-T1000-1-compiled", "model": "sine", "tasks": 1000, "steps": 1, "results": results}
    return {"dry_run": False, "date": "2026-12-06", "command": "test", "commit": None, "machine": {"device": "H100"},
            "versions": {"torch": "2.11"}, "sections": {"metastep": {"configs": [config]}}}


def _peer(name, ms, agrees=True):
    return {"name": name, "median_ms": ms, "agrees": agrees, "grad_rel_diff_f64": 0.0}


def test_jax_against_the_fastest_agreeing_fastmaml_step():
    results = {"fastmaml": _peer("fastmaml", 10.0), "fastmaml_compiled": _peer("fastmaml compiled", 4.0),
               "fastmaml_cuda_graphs": _peer("fastmaml compiled, CUDA graphs", 2.0),
               "jax": {**_peer("JAX", 3.0), "ratio_to_fastmaml": 0.3}}
    table = report.goals_table(_data(results))
    assert "| sine-T1000-1-compiled: JAX / fastmaml (aim ≥ 1×) | 0.30× | **missed** |" in table
    assert "| sine-T1000-1-compiled: JAX / fastmaml compiled, CUDA graphs (aim ≥ 1×) | 1.50× | met |" in table
    results["fastmaml_cuda_graphs"]["agrees"] = False
    table = report.goals_table(_data(results))
    assert "CUDA graphs (aim" not in table
    assert "| sine-T1000-1-compiled: JAX / fastmaml compiled (aim ≥ 1×) | 0.75× | **missed** |" in table


def test_only_compiled_steps_stand_against_jax_beside_eager():
    """fastmaml with torch's own second derivatives (an eager diagnostic) is not a compiled step."""
    results = {"fastmaml": _peer("fastmaml", 10.0),
               "fastmaml_torch_derivatives": _peer("fastmaml, torch's derivatives", 8.0),
               "jax": {**_peer("JAX", 3.0), "ratio_to_fastmaml": 0.3}}
    table = report.goals_table(_data(results))
    assert "JAX / fastmaml (aim ≥ 1×) | 0.30×" in table and "torch's derivatives (aim" not in table
