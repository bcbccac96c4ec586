"""The device run's timing sections record what fails and go on: a meta-step peer
(bench/gpu/metastep.py) or an update backend (bench/gpu/update.py) that raises gets its error in the
JSON, the others are measured, and the README's tables and goals show it as failed."""

import json
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


def test_a_failing_update_backend_is_recorded_and_the_others_run(monkeypatch, tmp_path):
    from bench.gpu import update
    from fastmaml import ops

    real = ops.backend_module

    def backend_module(name):
        if name != "foreach":
            return real(name)
        broken = types.SimpleNamespace(is_available=lambda device: True)
        broken.update = lambda *args: (_ for _ in ()).throw(RuntimeError("illegal memory access"))
        return broken

    monkeypatch.setattr(ops, "backend_module", backend_module)
    update.run(tmp_path / "part.json", 60, dry_run=True)
    results = json.loads((tmp_path / "part.json").read_text())["results"]
    failed = [r for r in results if "error" in r]
    assert failed and {r["backend"] for r in failed} == {"foreach"}
    assert {"reference", "native"} <= {r["backend"] for r in results if "error" not in r}
    data = {"dry_run": True, "date": "2026-12-06", "command": "test", "commit": None,
            "machine": {"device": "cpu"}, "versions": {"torch": torch.__version__},
            "sections": {"update": {"results": results, "reps": 3}}}
    assert "| foreach | **failed**: RuntimeError: illegal memory access |" in report.update_table(data)
    assert "foreach update runs" in report.goals_table(data)


def test_every_peer_the_configs_name_loads():
    """The device run's configs name only peers that exist (some run on the device only: their
    failure there would cost a device session)."""
    for config in [*metastep.CONFIGS.values(), *metastep.DRY_CONFIGS.values()]:
        for name in (*config.peers, *config.extra):
            peer = P.load(name)
            assert isinstance(peer.NAME, str) and callable(peer.make) and callable(peer.available), name


def test_a_config_cut_short_keeps_its_measured_peers(monkeypatch, tmp_path):
    """Saved after every peer: a section killed in the middle of a config keeps what it measured,
    and the table renders a peer whose float32 run never came."""
    saved = []
    sec = Section(tmp_path / "part.json", "metastep", 120)
    monkeypatch.setattr(sec, "save", lambda: saved.append(json.loads(json.dumps(sec.data, default=str))))
    config = metastep.Config("sine", 3, 1, peers=("fastmaml", "torchfunc_vmap"))
    metastep.run_config(sec, "sine-T3-1", config, torch.device("cpu"), True, ["fastmaml", "torchfunc_vmap"])
    # after both float64 checks and fastmaml's timing, before torch.func vmap's
    partial = next(s for s in saved if "median_ms" in s["configs"][0]["results"]["fastmaml"])
    assert "median_ms" not in partial["configs"][0]["results"]["torchfunc_vmap"]
    data = {"dry_run": True, "date": "2026-12-06", "command": "test", "commit": None,
            "machine": {"device": "cpu"}, "versions": {"torch": torch.__version__}, "sections": {"metastep": partial}}
    assert "| torch.func vmap | not timed | - | ok (" in report.metastep_table(data)
