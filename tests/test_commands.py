"""`fastmaml info` and `fastmaml demo` run end to end."""

import json
import os

from fastmaml.cli import main


def test_info_reports_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "extension fastmaml._C", "CUDA kernels", "triton", "usable backends"):
        assert key in out
    assert "reference" in out


def test_demo_writes_table_figure_and_json(tmp_path, capsys):
    assert main(["demo", "--iterations", "20", "--meta-batch", "4", "--eval-tasks", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MAML after 1 step / pre-trained after 1 step" in out
    (run_dir,) = list(tmp_path.iterdir())
    assert os.path.getsize(run_dir / "sine_adaptation.png") > 10_000
    record = json.loads((run_dir / "results.json").read_text())
    assert set(record["query_mse"]) == {"MAML", "pre-trained"}
    assert set(record["query_mse"]["MAML"]) == {"0", "1", "10"}


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--iterations", "0"]) == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err
