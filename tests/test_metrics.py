"""CORA metrics on a hand-made eval.csv equal hand-computed values; the report writes its files."""

import json

import pytest
from scripts_helper import report_main

from agent.metrics import EvalLog, MetricsError, compute_metrics, max_abs_returns

ROWS = """step,visit,trained_game,game,mean_return,std_return,episodes,human_normalized
0,0,A,A,0,0,3,
0,0,A,B,10,0,3,
100,0,A,A,50,0,3,
100,0,A,B,5,0,3,
150,1,B,A,45,0,3,
150,1,B,B,20,0,3,
200,1,B,A,20,0,3,
200,1,B,B,40,0,3,
300,2,A,A,60,0,3,
300,2,A,B,30,0,3,
"""


@pytest.fixture
def run(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "eval.csv").write_text(ROWS)
    return directory


def test_metrics_by_hand(run):
    log = EvalLog.read(run / "eval.csv")
    scale = max_abs_returns([log])
    assert scale == {"A": 60, "B": 40}
    m = compute_metrics(log, scale)
    assert [v["end_step"] for v in m["visits"]] == [100, 200, 300]
    # Forgetting: A after visit 0 (50/60) minus after visit 1 (20/60); B after visit 1 (1) minus after visit 2 (.75).
    assert [f["value"] for f in m["forgetting"]] == pytest.approx([0.5, 0.25])
    # Forward transfer: B at the end of visit 0 minus at its start (5/40 - 10/40); A: 20/60 - 50/60.
    assert [t["value"] for t in m["forward_transfer"]] == pytest.approx([-0.125, -0.5])
    assert m["final_performance"] == pytest.approx({"A": 1.0, "B": 0.75})
    assert m["mean_final_performance"] == pytest.approx(0.875)
    first, second = m["matrix"]["values"]
    assert first == pytest.approx([50 / 60, 20 / 60, 1.0]) and second == pytest.approx([5 / 40, 1.0, 0.75])


def test_report_writes_metrics_and_plots(run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "eval.csv").write_text(ROWS.replace(",60,0,3", ",120,0,3"))
    out = tmp_path / "report"
    assert report_main([str(run), str(other), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["run"] for m in metrics] == ["run", "other"]
    assert metrics[0]["normalisation"]["A"] == 120  # one scale shared by the compared runs
    for name in ("curves.png", "matrix_run.png", "matrix_other.png"):
        assert (out / name).stat().st_size > 10_000


def test_missing_or_malformed_eval_csv(tmp_path):
    with pytest.raises(MetricsError, match="does not exist"):
        EvalLog.read(tmp_path / "eval.csv")
    bad = tmp_path / "eval.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(MetricsError, match="columns"):
        EvalLog.read(bad)
    assert report_main([str(tmp_path)]) == 2
