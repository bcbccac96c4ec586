"""bench/bench_inner_optimizer.py times a step of each implementation: they must compute the same
step (values and gradients, float64, against fastmaml's), and the table renders from the JSON."""

import pytest

from bench import bench_inner_optimizer as bench


@pytest.mark.parametrize("optimizer", list(bench.IMPLEMENTATIONS))
def test_peers_compute_fastmamls_step(optimizer):
    bench.check_agree(optimizer)


def test_a_quick_run_writes_its_table(tmp_path):
    out = tmp_path / "inner_optimizer.json"
    bench.main(["--quick", "--sets", "conv4", "--budget-s", "0.5", "--out", str(out)])
    table = bench.render_markdown(out)
    assert table.count("| Conv-4 (18 tensors, 112k) |") == 6 and "torch foreach" in table
