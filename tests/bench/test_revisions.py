"""bench/bench_revisions.py end to end at a tiny size: two process pairs of this tree against itself."""

import json
from pathlib import Path

from bench import bench_revisions

ROOT = Path(__file__).resolve().parents[2]


def test_revisions_of_a_tree_against_itself(tmp_path):
    out = tmp_path / "revisions.json"
    bench_revisions.main(["--base", str(ROOT), "--candidate", str(ROOT), "--configs", "sine-1-fo",
                          "--rounds", "4", "--pairs", "2", "--sample-s", "0.01", "--out", str(out)])
    res = json.loads(out.read_text())["results"][0]
    assert res["config"] == "sine-1-fo" and res["rounds"] == 4 and len(res["pair_medians"]) == 2
    assert res["grad_rel_diff_f64"] == 0.0  # the same tree: bit-identical meta-gradients
    lo, hi = res["ratio_ci95"]
    assert 0 < lo <= res["ratio_median"] <= hi
    assert min(res["pair_medians"]) == res["pair_ci95"][0] and max(res["pair_medians"]) == res["pair_ci95"][1]
    table = bench_revisions.render_markdown(out)
    assert "| sine-1-fo |" in table and table.count("\n") == 4
