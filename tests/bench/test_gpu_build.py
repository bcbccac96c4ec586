"""The device run's build section finds a setuptools that reads pyproject.toml (bench/gpu/__main__.py
build_setuptools): the machine's when new enough, else the wheels bench/gpu/prepare.sh carries, and
a clear error naming prepare.sh when there are none. (The install of carried wheels was checked with a
setuptools 70 venv: the issue 17 notes.)"""

import importlib.metadata

from bench.gpu import __main__ as gpu


def _machine_has(monkeypatch, version):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version if name == "setuptools" else real(name))


def test_a_new_setuptools_is_used_as_it_is(monkeypatch):
    _machine_has(monkeypatch, "81.0.0")
    assert gpu.build_setuptools() == {"setuptools": "81.0.0", "use": "the machine's setuptools 81.0.0", "env": {}}


def test_an_old_setuptools_without_wheels_is_a_clear_error(monkeypatch):
    _machine_has(monkeypatch, "70.3.0")
    monkeypatch.setattr(gpu, "WHEELS", gpu.ROOT / "build" / "no-such-folder")
    out = gpu.build_setuptools()
    assert out["setuptools"] == "70.3.0"
    assert "older than 77" in out["error"] and "bench/gpu/prepare.sh" in out["error"]


def test_release_reads_the_leading_numbers():
    assert gpu._release("81.0.0") == (81, 0, 0) and gpu._release("77.0.3.post1") == (77, 0, 3)
    assert gpu._release("70.3.0") < gpu.SETUPTOOLS_MIN <= gpu._release("77")
