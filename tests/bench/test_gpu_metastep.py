"""The device run's metastep section (bench/gpu/metastep.py) records a peer that fails, with its
error, and goes on with the others; the README's tables show it as failed."""

import types

import torch

from bench import peers as P
from bench.gpu import metastep, report
from bench.gpu._common import Section


def _broken(error):
    def make(model, cfg):
        raise error

    return types.SimpleNamespace(NAME="broken peer", available=lambda: None, make=make)


def test_a_failing_peer_is_recorded_and_the_others_run(monkeypatch, tmp_path):
    real = P.load
    monkeypatch.setattr(P, "load", lambda name: _broken(RuntimeError("no kernel\nfor | this")) if name == "broken" else real(name))
    sec = Section(tmp_path / "part.json", "metastep", 120)
    config = metastep.Config("sine", 3, 1, peers=("fastmaml", "broken", "torchfunc_vmap"))
    out = metastep.run_config(sec, "sine-T3-1", config, torch.device("cpu"), True, ["fastmaml", "broken", "torchfunc_vmap"])
    assert out["results"]["broken"] == {"name": "broken peer", "error": "RuntimeError: no kernel for | this"}
    for peer in ("fastmaml", "torchfunc_vmap"):
        assert out["results"][peer]["agrees"] and out["results"][peer]["median_ms"] > 0
    data = {"dry_run": True, "date": "2026-12-06", "command": "test", "commit": None,
            "machine": {"device": "cpu"}, "versions": {"torch": torch.__version__},
            "sections": {"metastep": {**sec.data, "configs": [out]}}}
    assert "| broken peer | **failed**: RuntimeError: no kernel for / this |" in report.metastep_table(data)
    assert "| sine-T3-1: broken peer runs | RuntimeError: no kernel for / this | **missed** |" in report.goals_table(data)
